"""The stored study results the README's figures are drawn from: `results/pretrained/combined.txt` (the ~20M
pair's cells across GPU windows, drawn into figures/pretrained/combined/) names run directories that are there,
one window per cell, and the --label globs of its command name every model in them; the README's table of those
cells is what `efficiency_table` makes of the figure's efficiency_summary.csv, and so is its ~90M table (whose
summary is recomputed from the stored runs); a run repeated in a later window on the GPU repeats the stored one
exactly (after another pretraining: follows its curve), and so does a random twin's copy test, as the README
says."""

import re
import shlex
from pathlib import Path

import pandas as pd

from analysis.efficiency import efficiency, efficiency_summary, efficiency_table
from analysis.load import Tables, at_step, load_metrics, load_runs, relabel_runs

ROOT = Path(__file__).resolve().parents[2]
COMBINED = ROOT / "results" / "pretrained" / "combined.txt"
SUMMARY = ROOT / "figures" / "pretrained" / "combined" / "efficiency_summary.csv"


def _command_labels() -> dict[str, str]:
    """The --label NAME=GLOB pairs of the plot command in the header (its lines, up to the one without a `\\`)."""
    header = [line.lstrip("# ") for line in COMBINED.read_text().splitlines() if line.startswith("#")]
    start = next(i for i, line in enumerate(header) if line.startswith("probes plot"))
    end = next(i for i in range(start, len(header)) if not header[i].endswith("\\"))
    command = " ".join(line.rstrip("\\") for line in header[start:end + 1])
    words = shlex.split(command.replace("$(grep -v '^#' ", "").replace(")", "", 1))
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


def _readme_table(first_header: str) -> dict[str, dict[str, str]]:
    """The README's markdown table whose header row starts with `first_header`: {row name: {column: cell}}."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first_header))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    header, body = rows[0], rows[2:]
    return {r[0]: dict(zip(header[1:], r[1:], strict=True)) for r in body}


def _assert_readme_table_is(summary: pd.DataFrame, first_header: str) -> None:
    """The README table whose header starts with `first_header` is `efficiency_table(summary)` ("–": no runs)."""
    table = efficiency_table(summary)
    expected = {
        model: {f"N={n} {layout}": cell for (n, layout), cell in row.items() if isinstance(cell, str)}
        for model, row in table.iterrows()
    }
    readme = _readme_table(first_header)
    assert set(readme) == set(expected)
    for model, cells in readme.items():
        assert {c: v for c, v in cells.items() if v != "–"} == expected[model], model


def test_the_readme_table_of_the_combined_cells_is_the_stored_summary():
    _assert_readme_table_is(pd.read_csv(SUMMARY), "| model | N=16 suffix | N=16 prefix |")


def test_the_readme_table_of_the_90m_pair_is_what_its_stored_runs_give():
    """The ~90M table: the seventh window's pretrained runs and the twenty-fifth's random twins, labelled as in the
    results log's `probes plot` command; recomputed from the run directories, it equals the stored
    efficiency_summary.csv that the figure was drawn with, and the README table is that summary."""
    root = ROOT / "results" / "pretrained"
    labels = {"hf:*pythia-85m*": "Pythia-85M pretrained", "config:*pythia-85m*": "Pythia-85M random",
              "hf:*mamba-90m*": "Mamba-90M pretrained", "config:*mamba-90m*": "Mamba-90M random"}
    runs = relabel_runs(load_runs(root / "w7" / "probe", root / "w25" / "p85t", root / "w25" / "m90t"), labels)
    assert set(runs["label"]) == set(labels.values())
    metrics = load_metrics(runs)
    summary = efficiency_summary(efficiency(runs, metrics))
    stored = pd.read_csv(ROOT / "figures" / "pretrained" / "w25" / "efficiency_summary.csv")
    pd.testing.assert_frame_equal(summary.reset_index(drop=True), stored, check_dtype=False)
    _assert_readme_table_is(stored, "| model (~90M) |")
    # the README's comparison at the step the pretrained runs had reached (8,400): the twins' later passes at N = 32
    # and their N = 16 suffix runs are lower bounds there, the pretrained runs' passes stand
    at = at_step(Tables(runs, metrics, pd.DataFrame()), 8400)
    table = efficiency_table(efficiency_summary(efficiency(at.runs, at.metrics)))
    assert table.loc["Pythia-85M pretrained", (32, "suffix")] == "4,600 (2/3)"
    assert table.loc["Pythia-85M random", (32, "suffix")] == "> 8,400 (0/3)"
    assert table.loc["Mamba-90M pretrained", (16, "suffix")] == "5,800 (2/3)"
    assert table.loc["Mamba-90M random", (16, "suffix")] == "> 8,400 (0/3)"


def test_the_90m_random_twins_are_the_same_models_in_both_windows():
    """`config:` twins are built from a config and a seed alone: the ~90M twins' copy tests in the seventh window (an
    H200) and the twenty-fifth (an H100) are equal to the last bit."""
    root = ROOT / "results" / "pretrained"
    for model, workdir in (("pythia-85m", "p85t"), ("mamba-90m", "m90t")):
        first, later = (pd.read_parquet(path / f"{model}-random.parquet").drop(columns="model")
                        for path in (root / "w7" / "copy", root / "w25" / workdir / "copy"))
        pd.testing.assert_frame_equal(later, first, check_exact=True)


def _evaluations_of_both(stopped: Path, repeated: Path, stopped_at: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(accuracy and loss by step of the run its window stopped at `stopped_at`, those of the run that repeated it
    and went further, at the same steps)."""
    first, later = (load_metrics(run)[["step", "accuracy", "loss"]].dropna().set_index("step")
                    for run in (stopped, repeated))
    assert first.index.max() == stopped_at and later.index.max() > first.index.max()
    return first, later.loc[first.index]


def test_the_sixteenth_windows_random_pythia_run_repeats_the_second_windows_bit_for_bit():
    """Same config and seed, another H200 and session: the held-out accuracy and loss of every evaluation the
    second window made before it stopped (step 3,800) are equal, not merely close."""
    first, later = _evaluations_of_both(
        ROOT / "results/pretrained/w2/probe/config-pythia-20m/"
        "config-root_study_pretrain_pythia-20m_model+suffix+n32+lr1e-4+default+s2",
        ROOT / "results/pretrained/w16/twin/probe/config-pythia-20m-n32-suffix", stopped_at=3800)
    pd.testing.assert_frame_equal(later, first, check_exact=True)


def test_the_seventeenth_windows_random_pythia_runs_repeat_the_fourth_windows_on_another_gpu():
    """Same config and seeds, an H100 against the fourth window's H200: every evaluation the fourth window made
    before it stopped (step 8,600) has the same held-out accuracy, and a loss within float32 rounding (the two
    GPUs' kernels may sum in another order)."""
    for seed in (0, 1, 2):
        first, later = _evaluations_of_both(
            ROOT / f"results/pretrained/w4/probe/config-pythia-20m/"
            f"config-root_study_pretrain_pythia-20m_model+prefix+n64+lr1e-4+default+s{seed}",
            next((ROOT / "results/pretrained/w17/ptwin/probe/config-pythia-20m-n64-prefix").glob(f"*+s{seed}")),
            stopped_at=8600)
        pd.testing.assert_series_equal(later.accuracy, first.accuracy, check_exact=True)
        pd.testing.assert_series_equal(later.loss, first.loss, check_exact=False, rtol=0, atol=1e-6)


def test_the_twenty_first_windows_random_pythia_runs_repeat_the_eleventh_windows_at_n100():
    """Same config and seeds, both on an H100 (two machines, many commits apart): every evaluation the eleventh
    window made before it stopped (step 8,800) has the same held-out accuracy, and a loss within float32 rounding."""
    for seed in (0, 1, 2):
        first, later = _evaluations_of_both(
            next((ROOT / "results/pretrained/w11/probe/config-pythia-20m-n100-suffix").glob(f"*+s{seed}")),
            next((ROOT / "results/pretrained/w21/ptwin/probe/config-pythia-20m-n100-suffix").glob(f"*+s{seed}")),
            stopped_at=8800)
        pd.testing.assert_series_equal(later.accuracy, first.accuracy, check_exact=True)
        pd.testing.assert_series_equal(later.loss, first.loss, check_exact=False, rtol=0, atol=1e-6)


def test_the_twenty_second_windows_pretrained_mamba_follows_the_thirteenth_windows_curve_at_n100():
    """Another pretraining of the same Mamba recipe, the same lr and seeds: at every evaluation the thirteenth window
    made before it stopped (step 13,000), the twenty-second window's held-out accuracy is within 0.02 of it; a
    pretraining is not bit for bit, so the curves agree, not the bits."""
    for seed in (0, 1, 2):
        first, later = _evaluations_of_both(
            next((ROOT / "results/pretrained/w13/probe/hf-mamba-20m-n100-suffix").glob(f"*+lr1e-4+*+s{seed}")),
            next((ROOT / "results/pretrained/w22/mamba/probe/hf-mamba-20m-n100-suffix").glob(f"*+s{seed}")),
            stopped_at=13000)
        assert (later.accuracy - first.accuracy).abs().max() <= 0.02, seed


def test_no_stored_mamba_20m_pretraining_learned_to_copy():
    """README Findings (b), "Copying": thirteen Mamba-20M pretrainings were copy-tested, and none copies (second-copy
    accuracy at most 0.013 at every length). Twelve tests are stored as tables, one per window that pretrained it
    under results/pretrained/ (the sixteenth's twice: its prefix runs used the same model); the ninth window's is in
    its log only (0.006 / 0.005 / 0.003)."""
    root = ROOT / "results" / "pretrained"
    tests = sorted(root.glob("**/copy/mamba-20m-pretrained.parquet"))
    windows = {path.relative_to(root).parts[0] for path in tests}  # "copy": the first window's, at the top
    assert len(windows) == 12 and "w9" not in windows
    for path in tests:
        copies = pd.read_parquet(path)
        assert copies.loc[copies["copy"] == "second", "accuracy"].max() <= 0.013, path
