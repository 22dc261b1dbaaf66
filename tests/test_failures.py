"""Faults a user meets (issue 20): each gives exit code 2 (1 for a failed run) and ONE line on
stderr naming the bad value, with no traceback and no markup eaten from the text."""

import errno
import json
from pathlib import Path

import numpy as np
import pytest

from cli import app
from probes import tasks
from probes.config import DataConfig

SMALL_DATA = ["--n", "4", "--train-size", "40", "--eval-size", "8"]
TINY_TRAIN = ["--model", "pythia-tiny", "--n", "4", "--train-size", "40", "--eval-size", "8", "--max-steps", "4",
              "--eval-every", "2", "--batch-size", "8", "--device", "cpu", "--no-progress"]


def one_line_error(result, code: int = 2) -> str:
    """The single error line of a CLI result (asserting exit code, one line, no traceback)."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture
def afile(tmp_path) -> Path:
    path = tmp_path / "afile"
    path.write_text("not a directory\n")
    return path


@pytest.fixture
def dataset(tmp_path) -> Path:
    out = tmp_path / "data"
    tasks.save_dataset(tasks.generate(DataConfig(n=4, train_size=40, eval_size=8)), out)
    return out


# (name, argv with {afile}/{tmp} placeholders, text the line must hold)
BAD_INPUTS = [
    ("generate out is a file", ["generate", *SMALL_DATA, "--out", "{afile}"], "is a file, not a directory"),
    ("generate huge train size", ["generate", "--train-size", "100000000000", "--out", "{tmp}/g"],
     "train_size=100,000,000,000"),
    ("generate negative preview", ["generate", *SMALL_DATA, "--preview", "-3", "--out", "{tmp}/g"], "--preview -3"),
    ("demo train size below n", ["demo", "--train-size", "3", "--quick", "--out", "{tmp}/demo"],
     "train_size=3 is smaller than n"),
    ("demo out is a file", ["demo", "--quick", "--out", "{afile}"], "is a file"),
    ("bench zero steps", ["bench", "--steps", "0", "--device", "cpu", "--model", "pythia-tiny"], "--steps 0"),
    ("bench unknown device", ["bench", "--device", "tpu", "--model", "pythia-tiny"], "--device tpu"),
    ("bench zero batch", ["bench", "--batch-size", "0", "--device", "cpu", "--model", "pythia-tiny"],
     "--batch-size 0"),
    ("bench zero n", ["bench", "--n", "0", "--device", "cpu", "--model", "pythia-tiny"], "--n 0"),
    ("bench bad spec option", ["bench", "--device", "cpu", "--model", "pythia-tiny:zz"], "bad option 'zz'"),
    ("sweep negative threads", ["sweep", "--threads", "-1", "--model", "pythia-tiny", "--out", "{tmp}/s"],
     "--threads -1"),
    ("sweep unknown backend in a dry run", ["sweep", "--dry-run", "--backend", "slurm", "--out", "{tmp}/s"],
     "unknown sweep backend 'slurm'"),
    ("sweep out is a file", ["sweep", "--dry-run", "--model", "pythia-tiny", "--out", "{afile}"], "is a file"),
    ("plot prefix with a path", ["plot", "{tmp}", "--prefix", "../../x-", "--out", "{tmp}/fig"], "--prefix"),
    ("plot out is a file", ["plot", "{tmp}", "--out", "{afile}"], "is a file"),
    ("train out is a file", ["train", *TINY_TRAIN, "--out", "{afile}"], "is a file"),
    ("train model with brackets", ["train", "--model", "[/x]"], "'[/x]'"),
    ("train layout with markup", ["train", "--layout", "[bold]x"], "'[bold]x'"),
    ("vlm eval out is a directory", ["vlm", "eval", "{tmp}", "--out", "{tmp}"], "is a directory"),
]


@pytest.mark.parametrize("name, argv, expected", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(cli_runner, tmp_path, afile, name, argv, expected):
    argv = [a.replace("{afile}", str(afile)).replace("{tmp}", str(tmp_path)) for a in argv]
    line = one_line_error(cli_runner.invoke(app, argv))
    assert expected in line, line
    assert not (tmp_path.parent / "x-curves.png").exists()


def test_error_text_is_never_read_as_markup(capsys):
    from probes.console import print_error

    print_error("the ray backend needs Ray: pip install 'probes[ray]' (path /a/[x]/b, [bold]y)")
    assert "pip install 'probes[ray]' (path /a/[x]/b, [bold]y)" in capsys.readouterr().err


# === Disk faults (simulated: a full disk, a read-only file system) ===


def test_a_full_disk_during_generate_is_one_line_and_leaves_no_partial_file(cli_runner, tmp_path, monkeypatch):
    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tasks.np, "savez", full)
    out = tmp_path / "d"
    line = one_line_error(cli_runner.invoke(app, ["generate", *SMALL_DATA, "--out", str(out)]))
    assert "No space left on device" in line and "free some space" in line
    assert not out.exists() or sorted(p.name for p in out.iterdir()) in ([], [".lock"])
    monkeypatch.undo()  # space again: the rerun is not blocked by anything the failed one left
    assert cli_runner.invoke(app, ["generate", *SMALL_DATA, "--out", str(out)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.glob("*.*")}
    monkeypatch.setattr(tasks.np, "savez", full)  # a full disk while replacing it: the old one stays
    one_line_error(cli_runner.invoke(app, ["generate", *SMALL_DATA, "--seed", "5", "--out", str(out), "--overwrite"]))
    assert {p.name: p.read_bytes() for p in out.glob("*.*")} == before
    tasks.load_dataset(out)


def test_a_read_only_out_is_one_line(cli_runner, tmp_path, monkeypatch):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    line = one_line_error(cli_runner.invoke(app, ["generate", *SMALL_DATA, "--out", str(tmp_path / "ro")]))
    assert "Read-only file system" in line and str(tmp_path / "ro") in line


def test_a_full_disk_during_training_is_one_line_and_the_run_resumes(cli_runner, tmp_path, monkeypatch):
    import pandas as pd

    real = pd.DataFrame.to_parquet
    out = tmp_path / "run"

    def full(self, path, *args, **kwargs):
        if Path(path).name.startswith(".positions"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full)
    line = one_line_error(cli_runner.invoke(app, ["train", *TINY_TRAIN, "--out", str(out)]))
    assert "No space left on device" in line
    monkeypatch.undo()
    r = cli_runner.invoke(app, ["train", *TINY_TRAIN, "--out", str(out)])
    assert r.exit_code == 0, r.output


# === Damaged inputs: datasets, checkpoints, runs of another kind ===


@pytest.mark.parametrize("damage, expected", [
    (lambda d: (d / "heldout.npz").write_bytes(b""), "heldout.npz is missing or damaged"),
    (lambda d: (d / "train.npz").write_bytes((d / "train.npz").read_bytes()[:100]), "train.npz is missing or damaged"),
    (lambda d: (d / "meta.json").write_text("{not json"), "meta.json is unreadable"),
    (lambda d: (d / "meta.json").write_text('{"format_version": 1}'), "meta.json is damaged"),
])
def test_a_damaged_dataset_is_one_line_for_train(cli_runner, tmp_path, dataset, damage, expected):
    damage(dataset)
    line = one_line_error(cli_runner.invoke(app, ["train", *TINY_TRAIN, "--data-dir", str(dataset),
                                                  "--out", str(tmp_path / "run")]))
    assert expected in line


@pytest.fixture
def finished_run(tmp_path_factory) -> Path:
    from probes.config import TrainConfig
    from probes.train import train_run

    out = tmp_path_factory.mktemp("finished") / "run"
    train_run(TrainConfig(model="pythia-tiny", n=4, train_size=40, eval_size=8, max_steps=4, eval_every=2,
                          batch_size=8, device="cpu", out=str(out), threshold=1.0), progress=False)
    return out


def _as_unfinished(run: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "running"}))


@pytest.mark.parametrize("damage, expected", [
    (lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:200]),
     "only damaged checkpoints"),
    (lambda c: (c / "config.json").write_text("garbage{"), "only damaged checkpoints"),
])
def test_a_damaged_checkpoint_on_resume_is_one_line(cli_runner, finished_run, damage, expected):
    _as_unfinished(finished_run)
    damage(finished_run / "checkpoint")
    line = one_line_error(cli_runner.invoke(app, ["train", *TINY_TRAIN, "--threshold", "1.0",
                                                  "--out", str(finished_run)]))
    assert expected in line and "--overwrite" in line


def test_a_text_run_given_to_vlm_train_is_refused_and_kept(cli_runner, finished_run):
    before = sorted(p.name for p in finished_run.iterdir())
    for extra in ([], ["--overwrite"]):
        line = one_line_error(cli_runner.invoke(app, ["vlm", "train", "--out", str(finished_run), *extra]))
        assert "holds another kind of run" in line and "--overwrite" not in line.split(";")[-1]
    assert sorted(p.name for p in finished_run.iterdir()) == before


def test_a_sweep_reports_a_damaged_run_and_runs_the_others(cli_runner, tmp_path):
    out = tmp_path / "sweep"
    grid = ["sweep", "--out", str(out), "--model", "pythia-tiny", "--n", "4", "--lr", "1e-3", "--init", "default",
            "--seed", "0", "--seed", "1", "--set", "max_steps=2", "--set", "eval_every=1", "--set", "train_size=16",
            "--set", "eval_size=4", "--set", "batch_size=4", "--set", "device=cpu", "--no-progress"]
    damaged = out / "pythia-tiny+suffix+n4+lr1e-3+default+s0"
    damaged.mkdir(parents=True)
    (damaged / "config.yaml").write_text("model: [oops\n")
    r = cli_runner.invoke(app, grid)
    assert r.exit_code == 1, r.output
    results = {x["run"]: x for x in json.loads((out / "sweep.json").read_text())}
    assert results[damaged.name]["status"] == "failed" and "is damaged" in results[damaged.name]["message"]
    assert "--overwrite" not in r.output and "move or remove that directory" in results[damaged.name]["message"]
    assert results["pythia-tiny+suffix+n4+lr1e-3+default+s1"]["status"] in ("reached", "not_reached")


def test_plot_skips_a_damaged_run_with_one_warning(cli_runner, finished_run, tmp_path):
    other = finished_run.parent / "broken"
    other.mkdir()
    (other / "config.yaml").write_text("model: [oops\n")
    (other / "summary.json").write_text('{"status": "running"}')
    r = cli_runner.invoke(app, ["plot", str(finished_run.parent), "--kind", "curves", "--format", "png",
                                "--out", str(tmp_path / "fig")])
    assert r.exit_code == 0, r.output
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "skipped" in warnings[0] and "broken" in warnings[0]


def test_a_dataset_read_back_is_the_one_written(dataset):
    ds = tasks.load_dataset(dataset)
    with np.load(dataset / "train.npz") as z:
        assert np.array_equal(ds.train.context, z["context"])


@pytest.mark.parametrize("damage", ["weights", "config"])
def test_an_hf_directory_with_a_damaged_file_is_one_line_naming_it(cli_runner, tmp_path, damage):
    from probes.backbones import build_backbone

    model_dir = tmp_path / "m"
    build_backbone("pythia-tiny").model.save_pretrained(model_dir)
    bad = model_dir / ("model.safetensors" if damage == "weights" else "config.json")
    bad.write_bytes(bad.read_bytes()[:100])
    argv = ["train", *TINY_TRAIN, "--out", str(tmp_path / "run")]
    argv[argv.index("pythia-tiny")] = f"hf:{model_dir}"
    line = one_line_error(cli_runner.invoke(app, argv))
    assert str(bad) in line, line
