"""probes.paper_data / `probes generate --from-paper`: the paper's released files in our format.

The files are written here in the format the paper's loader reads (synthetic_vg_loader.py of
gpantaz/vl_mamba at 45a39f8): {split}_synthetic_vg_seqlen{N}.json holding target_sequences (rows
of N distinct symbols) and target_tokens (the target position of each row).
"""

import json
from pathlib import Path

import numpy as np
import pytest

from cli import app
from probes import tasks
from probes.config import TrainConfig
from probes.errors import UserError
from probes.paper_data import import_paper, paper_files, read_paper_split
from probes.train import train_run

N = 5


def paper_rows(size: int, seed: int, n: int = N) -> dict:
    rng = np.random.default_rng(seed)
    seqs = [rng.permutation(n).tolist() for _ in range(size)]
    return {"target_sequences": seqs, "target_tokens": [int(i % n) for i in range(size)]}


def write_paper(folder: Path, n: int = N, sizes=(("train", 40, 1), ("validation", 20, 2), ("test", 15, 3))) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, size, seed in sizes:
        (folder / f"{split}_synthetic_vg_seqlen{n}.json").write_text(json.dumps(paper_rows(size, seed, n)))
    return folder


def test_a_paper_file_becomes_context_query_and_target_position(tmp_path):
    folder = write_paper(tmp_path / "paper")
    rows = json.loads((folder / "train_synthetic_vg_seqlen5.json").read_text())
    split = read_paper_split(folder / "train_synthetic_vg_seqlen5.json", N)
    assert split.context.dtype == np.int16 and split.context.shape == (40, N)
    assert split.context.tolist() == rows["target_sequences"]
    assert split.target_position.tolist() == rows["target_tokens"]
    # the paper's query is seq[label]: the symbol at the target position
    assert split.query.tolist() == [s[t] for s, t in zip(rows["target_sequences"], rows["target_tokens"])]


def test_a_directory_or_one_file_finds_train_and_the_held_out_split(tmp_path):
    folder = write_paper(tmp_path / "paper")
    assert paper_files(folder) == (N, folder / "train_synthetic_vg_seqlen5.json",
                                   folder / "validation_synthetic_vg_seqlen5.json")
    assert paper_files(folder / "validation_synthetic_vg_seqlen5.json", heldout="test")[2] == \
        folder / "test_synthetic_vg_seqlen5.json"
    write_paper(folder, n=7)
    with pytest.raises(UserError, match="holds the paper's files for N = 5, 7; pick one with --n"):
        paper_files(folder)
    assert paper_files(folder, n=7)[0] == 7


def test_the_import_reports_balance_and_shared_pairs_without_changing_the_data(tmp_path):
    folder = write_paper(tmp_path / "paper")
    rows = json.loads((folder / "train_synthetic_vg_seqlen5.json").read_text())
    held = json.loads((folder / "validation_synthetic_vg_seqlen5.json").read_text())
    held["target_sequences"][0], held["target_tokens"][0] = rows["target_sequences"][3], rows["target_tokens"][3]
    (folder / "validation_synthetic_vg_seqlen5.json").write_text(json.dumps(held))
    ds, origin = import_paper(folder, layout="prefix")
    assert (ds.config.n, ds.config.layout, len(ds.train), len(ds.heldout)) == (N, "prefix", 40, 20)
    assert ds.shared_pairs == tasks.count_shared_pairs(ds.train, ds.heldout) >= 1
    assert origin["train_file"].endswith("train_synthetic_vg_seqlen5.json")


def test_probes_generate_from_paper_writes_a_dataset_that_trains(tmp_path, cli_runner):
    folder = write_paper(tmp_path / "paper")
    out = tmp_path / "data"
    r = cli_runner.invoke(app, ["generate", "--from-paper", str(folder), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "40 train + 20 held-out (validation), n=5" in r.output
    assert "examples per target position: train 8–8, held-out 4–4" in r.output and "shares 0" in r.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"] == "paper" and meta["n"] == N and meta["train_size"] == 40
    ds = tasks.load_dataset(out)
    assert ds.train.context.tolist() == json.loads((folder / "train_synthetic_vg_seqlen5.json").read_text())[
        "target_sequences"]
    again = cli_runner.invoke(app, ["generate", "--from-paper", str(folder), "--out", str(out)])
    assert again.exit_code == 0 and "nothing to do" in again.output
    cfg = TrainConfig(model="pythia-tiny", n=N, lr=1e-3, max_steps=2, eval_every=2, batch_size=8, data_dir=out,
                      out=tmp_path / "run", device="cpu")
    assert train_run(cfg, progress=False)["eval_size"] == 20


def _damage(folder: Path, field: str, value) -> None:
    path = folder / "train_synthetic_vg_seqlen5.json"
    data = json.loads(path.read_text())
    if value is None:
        del data[field]
    else:
        data[field][2] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("field, value, message", [
    ("target_tokens", None, "has no field 'target_tokens'"),
    ("target_sequences", None, "has no field 'target_sequences'"),
    ("target_sequences", [0, 1, 1, 3, 4], "row 2 of target_sequences is not a permutation of 0 … 4"),
    ("target_sequences", [0, 1, 2, 3, 9], "row 2 of target_sequences is not a permutation of 0 … 4"),
    ("target_sequences", [0, 1, 2, 3], "row 2 of target_sequences has 4 tokens, not N=5"),
    ("target_tokens", 5, "target_tokens[2] = 5 is not a position 0 … 4"),
    ("target_tokens", "x", "must hold integers"),
])
def test_bad_paper_files_are_one_line_and_exit_2(tmp_path, cli_runner, field, value, message):
    folder = write_paper(tmp_path / "paper")
    _damage(folder, field, value)
    r = cli_runner.invoke(app, ["generate", "--from-paper", str(folder), "--out", str(tmp_path / "data")])
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("args, message", [
    (["--from-paper", "{tmp}/nowhere"], "no such file or directory"),
    (["--from-paper", "{tmp}/paper/notes.json"], "is not one of the paper's files"),
    (["--from-paper", "{tmp}/paper", "--paper-heldout", "dev"], "allowed: validation, test"),
    (["--from-paper", "{tmp}/paper", "--seed", "3"], "--from-paper takes sizes and data from the paper's files"),
    (["--from-paper", "{tmp}/paper", "--n", "6"], "train_synthetic_vg_seqlen6.json is missing"),
])
def test_bad_paper_arguments_are_one_line_and_exit_2(tmp_path, cli_runner, args, message):
    write_paper(tmp_path / "paper")
    (tmp_path / "paper" / "notes.json").write_text("{}")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = cli_runner.invoke(app, ["generate", *args, "--out", str(tmp_path / "data")])
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1
