"""benchmarks/study_pretrained.sh (README Findings b): its environment settings are checked before
anything is written or started, and its deadline stops the probe sweeps it started."""

import contextlib
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from probes.config import PretrainConfig, validate
from probes.pretrain import pretrain_run

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "study_pretrained.sh"
PATH = "/usr/local/bin:/usr/bin:/bin"  # python3 and bash, not a GPU driver's own directories


def _study(tmp_path, **env):
    return subprocess.run(["bash", str(SCRIPT), str(tmp_path / "study")], capture_output=True, text=True, check=False,
                          env={**os.environ, **env}, timeout=60)


def test_an_unknown_model_is_refused_with_the_pairs_there_are(tmp_path):
    out = _study(tmp_path, MODELS="mamba-20m mamba-7b")
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: MODELS: no configs/pretrain-mamba-7b.yaml for 'mamba-7b' "
                                  "(allowed: mamba-20m, mamba-90m, pythia-20m, pythia-85m)")
    assert not (tmp_path / "study").exists()


def test_mps_without_its_control_program_is_refused(tmp_path):
    if shutil.which("nvidia-cuda-mps-control", path=PATH):  # a GPU host: the script would start MPS
        pytest.skip("nvidia-cuda-mps-control is installed here")
    out = _study(tmp_path, MODELS="mamba-20m", MPS="1", PATH=PATH)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: MPS=1 but nvidia-cuda-mps-control is not installed"
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize("cells", ["16:sufix", "16", "n16:suffix", "16:suffix:prefix"])
def test_a_cell_that_is_not_n_colon_layout_is_refused(tmp_path, cells):
    out = _study(tmp_path, MODELS="mamba-20m", CELLS=f"32:prefix {cells}")
    assert out.returncode == 2
    assert out.stderr.strip() == (f"error: CELLS: '{cells}' is not N:LAYOUT (e.g. 16:suffix; layouts: suffix, "
                                  "prefix)")
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize(("env", "line"), [
    ({"SEEDS": "0,x"}, "SEEDS: '0,x' is not seeds separated by commas (e.g. 0,1,2)"),
    ({"SEEDS": "0 1"}, "SEEDS: '0 1' is not seeds separated by commas (e.g. 0,1,2)"),
    ({"NS": "16 n32"}, "NS: 'n32' is not a whole number (e.g. NS=\"16 32\")"),
    ({"JOBS": "0"}, "JOBS: '0' is not a number of runs above 0"),
    ({"RETRIES": "-1"}, "RETRIES: '-1' is not a whole number of restarts (e.g. 0)"),
    ({"WEIGHTS": "hf random"}, "WEIGHTS: 'random' is not hf or config"),
    ({"SNAPSHOT_EVERY": "1m"}, "SNAPSHOT_EVERY: '1m' is not a number of seconds above 0"),
    ({"SNAPSHOT": "/no/such/dir/s.tgz"}, "SNAPSHOT: '/no/such/dir/s.tgz' is not in an existing directory"),
])
def test_a_bad_setting_is_refused_before_anything_starts(tmp_path, env, line):
    out = _study(tmp_path, MODELS="mamba-20m", **env)
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {line}"
    assert not (tmp_path / "study").exists()


def test_a_deadline_that_is_not_seconds_is_refused(tmp_path):
    out = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "study"), "10m"], capture_output=True, text=True,
                         check=False, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: DEADLINE_SECONDS: '10m' is not a whole number of seconds"
    assert not (tmp_path / "study").exists()


def _processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains `text` (Linux /proc)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
def test_the_deadline_stops_the_probe_sweeps_and_their_runs_stay_resumable(tmp_path):
    """Past DEADLINE_SECONDS the sweeps get SIGTERM: the script returns only after they have gone (no
    sweep left running behind it) and a run that had started keeps a checkpoint and status running.
    SNAPSHOT holds the final state of every small file, without models or checkpoints."""
    study = tmp_path / "study"
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 40)
    pretrain_run(validate(PretrainConfig, {  # what step 1 would make: a finished pretraining of the pair's name
        "arch": {"family": "pythia", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4},
        "corpus": [str(corpus)], "heldout_fraction": 0.3, "tokens": 4 * 16 * 2, "batch_size": 4, "seq_len": 16,
        "warmup": 0, "eval_windows": 2, "copy_lengths": [4], "copy_batch": 2, "device": "cpu", "threads": 1,
        "out": str(study / "pretrain" / "pythia-20m")}), progress=False)
    (study / "copy").mkdir()
    for name in ("pythia-20m-pretrained", "pythia-20m-random"):  # steps 2 and 3 are done too
        (study / "copy" / f"{name}.parquet").touch()
    (study / "best_lr.txt").write_text("hf:pythia-20m 0.001\n")
    sweeps = str(study / "probe")
    try:
        start = time.monotonic()
        out = subprocess.run(["bash", str(SCRIPT), str(study), "8"], capture_output=True, text=True, check=False,
                             timeout=120, env={**os.environ, "MODELS": "pythia-20m", "WEIGHTS": "hf",
                                               "SNAPSHOT": str(tmp_path / "snap.tgz"), "SNAPSHOT_EVERY": "2",
                                               "CELLS": "8:suffix", "SEEDS": "0", "JOBS": "1",
                                               "SET": "max_steps=1000000 eval_every=20 eval_size=64 "
                                                      "eval_batch_size=64 train_size=2000 device=cpu threads=1"})
        assert out.returncode == 0, out.stderr
        assert time.monotonic() - start < 100  # stopped at the deadline, not at the end of its budget
        assert _processes_mentioning(sweeps) == []  # the sweep went with the script, not orphaned
        for summary in (study / "probe").glob("*/*/summary.json"):
            run = json.loads(summary.read_text())
            assert run["status"] == "running" and run["message"].startswith("stopped by SIGTERM"), run
        def left_out(f: Path) -> bool:  # models, checkpoints and a pretraining's tokenised corpus
            return any(part in ("model", "corpus") or part.startswith("checkpoint")
                       for part in f.relative_to(study).parts)

        on_disk = {str(f.relative_to(tmp_path)): f.read_bytes() for f in study.rglob("*")
                   if f.is_file() and not left_out(f)}
        with tarfile.open(tmp_path / "snap.tgz") as snap:
            packed = {m.name: snap.extractfile(m).read() for m in snap.getmembers() if m.isfile()}
        assert packed == on_disk  # the last snapshot came after the sweeps ended
        assert "study/best_lr.txt" in packed and "study/pretrain/pythia-20m/metrics.parquet" in packed
        assert any(f.name == "model" for f in (study / "pretrain").rglob("*"))  # there, and left out
        assert (study / "pretrain" / "pythia-20m" / "corpus").is_dir()  # likewise (hundreds of MB on a GPU run)
        assert not any("/corpus/" in name for name in packed)
        assert not (tmp_path / "snap.tgz.tmp").exists()
    finally:
        for pid in _processes_mentioning(sweeps):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


def test_random_twins_alone_need_no_pretraining(tmp_path):
    """WEIGHTS=config: each model's config.json and tokenizer are saved to WORKDIR/init/MODEL and the twins'
    runs start from config:WORKDIR/init/MODEL; nothing is pretrained. A best_lr.txt line may list several lrs
    (an lr search inside the probe's cells): each cell then runs every one of them."""
    study = tmp_path / "study"
    (study / "copy").mkdir(parents=True)
    (study / "copy" / "pythia-20m-random.parquet").touch()  # step 2 done (a 19M model's copy test on CPU is slow)
    (study / "best_lr.txt").write_text("config:pythia-20m 0.001,0.003\n")
    out = subprocess.run(["bash", str(SCRIPT), str(study)], capture_output=True, text=True, check=False, timeout=300,
                         env={**os.environ, "MODELS": "pythia-20m", "WEIGHTS": "config", "CELLS": "8:suffix",
                              "SEEDS": "0", "JOBS": "1",
                              "SET": "max_steps=2 eval_every=1 batch_size=4 train_size=40 eval_size=16 "
                                     "eval_batch_size=16 device=cpu threads=1"})
    assert out.returncode == 0, out.stderr
    assert "random twins only, no pretraining" in out.stdout
    assert not (study / "pretrain").exists()
    assert (study / "init" / "pythia-20m" / "config.json").exists()
    summaries = sorted((study / "probe" / "config-pythia-20m-n8-suffix").glob("*/summary.json"))
    assert [json.loads(s.read_text())["final_step"] for s in summaries] == [2, 2]
    configs = [yaml.safe_load((s.parent / "config.yaml").read_text()) for s in summaries]
    assert sorted(c["lr"] for c in configs) == [0.001, 0.003]
    assert {c["model"] for c in configs} == {f"config:{study}/init/pythia-20m"}


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
def test_a_run_whose_worker_died_is_run_again_once_the_other_sweeps_are_done(tmp_path):
    """A worker killed in the first pass (as a packed GPU run out of memory dies) and not restarted by its sweep
    (RETRIES=0) leaves its run failed in the sweep's sweep.json; with time left before the deadline the script runs
    that sweep again, which finishes it. The sweep's log keeps both passes."""
    study = tmp_path / "study"
    (study / "copy").mkdir(parents=True)
    (study / "copy" / "pythia-20m-random.parquet").touch()
    (study / "best_lr.txt").write_text("config:pythia-20m 0.001\n")
    script = subprocess.Popen(
        ["bash", str(SCRIPT), str(study), "250"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "MODELS": "pythia-20m", "WEIGHTS": "config", "CELLS": "8:suffix", "SEEDS": "0",
             "JOBS": "1", "RETRIES": "0", "SET": "max_steps=3 eval_every=1 batch_size=4 train_size=40 eval_size=16 "
                                 "eval_batch_size=16 device=cpu threads=1"})
    try:
        killed = False
        deadline = time.monotonic() + 120
        while not killed and script.poll() is None and time.monotonic() < deadline:
            for pid in set(_processes_mentioning("probes.sweeps.worker")) & set(_processes_mentioning(str(study))):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
                    killed = True
            time.sleep(0.02)
        out, err = script.communicate(timeout=280)
    finally:
        if script.poll() is None:
            script.kill()
    assert killed and script.returncode == 0, err
    assert "4b. the probe again, for the runs whose worker died" in out
    sweep = study / "probe" / "config-pythia-20m-n8-suffix"
    (summary,) = sweep.glob("*/summary.json")
    assert json.loads(summary.read_text())["final_step"] == 3
    assert [r["status"] for r in json.loads((sweep / "sweep.json").read_text())] == ["not_reached"]
    passes = (study / "probe-config-pythia-20m-n8-suffix.log").read_text().splitlines()
    assert [line.split(": ", 1)[1].split(";")[0] for line in passes] == [
        "1 runs: 0 reached, 0 not_reached, 1 failed", "1 runs: 0 reached, 1 not_reached, 0 failed"]
