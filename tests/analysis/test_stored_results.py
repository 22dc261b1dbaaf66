"""The stored study results the README's figures are drawn from: `results/pretrained/combined.txt` (the ~20M
pair's cells across GPU windows, drawn into figures/pretrained/combined/) names run directories that are there,
one window per cell, and the --label globs of its command name every model in them."""

import re
import shlex
from pathlib import Path

from analysis.load import load_runs, relabel_runs

ROOT = Path(__file__).resolve().parents[2]
COMBINED = ROOT / "results" / "pretrained" / "combined.txt"


def _command_labels() -> dict[str, str]:
    header = " ".join(line.lstrip("# ").rstrip("\\") for line in COMBINED.read_text().splitlines()
                      if line.startswith("#"))
    words = shlex.split(header[header.index("probes plot"):].replace("$(grep -v '^#' ", "").replace(")", "", 1))
    return dict(w.rsplit("=", 1) for w in (words[i + 1] for i, w in enumerate(words) if w == "--label"))


def test_the_combined_list_names_stored_runs_one_window_per_cell():
    globs = [line for line in COMBINED.read_text().splitlines() if line and not line.startswith("#")]
    dirs = {glob: sorted(p for p in ROOT.glob(glob) if p.is_dir()) for glob in globs}
    assert all(dirs.values()), [g for g, d in dirs.items() if not d]  # every line matches run directories
    labels = _command_labels()
    assert len(labels) == 4 and all(re.fullmatch(r"(Pythia|Mamba)-20M (pretrained|random)", n) for n in labels.values())
    runs = relabel_runs(load_runs(*[d for ds in dirs.values() for d in ds]), labels)
    assert set(runs["label"]) == set(labels.values())  # every run is one of the four models
    cells = runs.groupby(["label", "n", "layout", "seed"]).size()
    assert cells.max() == 1, cells[cells > 1]  # no cell drawn from two windows
    assert set(runs["n"]) == {16, 32, 50, 64, 100}
