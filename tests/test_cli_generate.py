"""`probes generate`: the command a user types, its files, its preview and its errors."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from cli import app

SMALL = ["--n", "5", "--train-size", "50", "--eval-size", "20"]


def run(cli_runner, *args):
    return cli_runner.invoke(app, list(args))


def test_generate_writes_the_spec_files(cli_runner, tmp_path):
    out = tmp_path / "d"
    r = run(cli_runner, "generate", *SMALL, "--layout", "prefix", "--seed", "4", "--out", str(out))
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta == {
        "format_version": 1, "n": 5, "layout": "prefix", "seed": 4, "heldout_seed": 4 + 1_000_003,
        "train_size": 50, "eval_size": 20, "shared_pairs": 0, "resampled": meta["resampled"],
        "generator_version": 2,
    }
    with np.load(out / "heldout.npz") as z:
        assert z["context"].shape == (20, 5) and z["query"].shape == (20,)


@pytest.mark.parametrize("layout, pattern", [
    ("suffix", r"^(<s_\d> ){5}<out> <s_\d> => <a_\d>$"),
    ("prefix", r"^<out> <s_\d> <sep>( <s_\d>){5} => <a_\d>$"),
])
def test_preview_prints_k_examples_in_the_spec_format(cli_runner, tmp_path, layout, pattern):
    r = run(cli_runner, "generate", *SMALL, "--layout", layout, "--out", str(tmp_path / "d"), "--preview", "3")
    lines = [line for line in r.stdout.splitlines() if "=>" in line]
    assert len(lines) == 3
    for line in lines:
        assert re.match(pattern, line), line


def test_preview_matches_the_saved_data(cli_runner, tmp_path):
    r = run(cli_runner, "generate", *SMALL, "--out", str(tmp_path / "d"), "--preview", "1")
    first = next(line for line in r.stdout.splitlines() if "=>" in line)
    with np.load(tmp_path / "d" / "train.npz") as z:
        ctx, q, p = z["context"][0], z["query"][0], z["target_position"][0]
    assert first == " ".join(f"<s_{i}>" for i in ctx) + f" <out> <s_{q}> => <a_{p}>"


def test_config_file_and_flags_combine_with_flags_winning(cli_runner, tmp_path):
    (tmp_path / "c.yaml").write_text("n: 7\nlayout: prefix\ntrain_size: 70\neval_size: 14\n")
    r = run(cli_runner, "generate", "--config", str(tmp_path / "c.yaml"), "--n", "6", "--out", str(tmp_path / "d"))
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert (meta["n"], meta["layout"], meta["train_size"]) == (6, "prefix", 70)


def test_rerunning_the_same_command_keeps_the_dataset(cli_runner, tmp_path):
    out = str(tmp_path / "d")
    run(cli_runner, "generate", *SMALL, "--out", out)
    before = (tmp_path / "d" / "train.npz").stat().st_mtime_ns
    r = run(cli_runner, "generate", *SMALL, "--out", out)
    assert r.exit_code == 0 and "nothing to do" in r.output
    assert (tmp_path / "d" / "train.npz").stat().st_mtime_ns == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n", "1"], "n: Input should be greater than or equal to 2 (got 1)"),
        (["--n", "40000"], "(got 40000)"),
        (["--layout", "middle"], "layout: Input should be 'suffix' or 'prefix' (got 'middle')"),
        (["--n", "10", "--train-size", "5"], "train_size=5 is smaller than n=10"),
        (["--eval-size", "-3"], "eval_size: Input should be greater than 0 (got -3)"),
        (["--n", "2", "--train-size", "10", "--eval-size", "10"], "too small for a held-out set"),
    ],
)
def test_bad_input_is_one_line_and_a_nonzero_exit(cli_runner, tmp_path, args, message):
    r = run(cli_runner, "generate", *args, "--out", str(tmp_path / "d"))
    assert r.exit_code == 2
    assert message in r.output
    assert r.output.strip().count("\n") == 0, r.output
    assert "Traceback" not in r.output


def test_a_different_dataset_in_out_is_never_overwritten_silently(cli_runner, tmp_path):
    out = str(tmp_path / "d")
    run(cli_runner, "generate", *SMALL, "--out", out)
    before = (tmp_path / "d" / "train.npz").read_bytes()
    r = run(cli_runner, "generate", *SMALL, "--seed", "9", "--out", out)
    assert r.exit_code == 2 and "different dataset (seed=0 there, 9 asked" in r.output
    assert (tmp_path / "d" / "train.npz").read_bytes() == before
    r = run(cli_runner, "generate", *SMALL, "--seed", "9", "--out", out, "--overwrite")
    assert r.exit_code == 0 and (tmp_path / "d" / "train.npz").read_bytes() != before


def test_a_non_dataset_directory_is_refused(cli_runner, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    r = run(cli_runner, "generate", *SMALL, "--out", str(tmp_path / "d"))
    assert r.exit_code == 2 and "holds no dataset" in r.output


@pytest.mark.parametrize("text, message", [
    ("foo: 1\n", "unknown config key 'foo'"),
    ("n: [1,\n", "not valid YAML"),
])
def test_bad_config_files_are_one_line_errors(cli_runner, tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text)
    r = run(cli_runner, "generate", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "d"))
    assert r.exit_code == 2 and message in r.output


def test_the_installed_console_script_runs(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cli", "generate", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--train-size" in r.stdout
