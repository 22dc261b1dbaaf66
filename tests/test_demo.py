"""`probes demo`: data → Pythia-tiny and Mamba-tiny on both layouts → every figure, in one folder.

CI runs the reduced `--quick` scale (40 steps a run); the full default is timed in the README.
"""

import pytest

from cli import app
from probes.demo import QUICK, DemoConfig


def test_quick_demo_makes_data_four_runs_and_every_figure_then_reuses_them(tmp_path, cli_runner, plot_files):
    out = tmp_path / "demo"
    res = cli_runner.invoke(app, ["demo", "--quick", "--out", str(out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (out / "data").iterdir()) == ["prefix-n6", "suffix-n6"]
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == sorted(
        f"{m}-tiny+{layout}+n6+lr1e-3+default+s0"
        for m in ("pythia", "mamba")
        for layout in ("suffix", "prefix")
    )
    assert all((out / "runs" / r / "summary.json").is_file() for r in runs)
    assert sorted(p.name for p in (out / "figures").iterdir()) == plot_files()

    again = cli_runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert again.output.count("finished earlier") == 4  # nothing is trained twice


def test_quick_replaces_only_the_settings_not_given():
    cfg = DemoConfig.model_validate({"quick": True, "max_steps": 100}).effective()
    assert cfg.max_steps == 100 and cfg.batch_size == QUICK["batch_size"]
    assert DemoConfig().effective() == DemoConfig()  # the full default is untouched


def test_demo_rejects_an_unknown_layout_in_one_line(tmp_path, cli_runner):
    res = cli_runner.invoke(app, ["demo", "--quick", "--layout", "middle", "--out", str(tmp_path)])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and "layouts" in res.output


def test_a_finished_run_of_other_settings_is_not_silently_reused(tmp_path, cli_runner):
    out = str(tmp_path / "demo")
    args = ["demo", "--quick", "--out", out, "--model", "pythia-tiny", "--layout", "suffix"]
    assert cli_runner.invoke(app, args).exit_code == 0
    res = cli_runner.invoke(app, [*args, "--max-steps", "20"])
    assert res.exit_code == 2 and "max_steps: 40 there, 20 asked" in res.output
    assert cli_runner.invoke(app, [*args, "--max-steps", "20", "--overwrite"]).exit_code == 0


@pytest.mark.parametrize("args, message", [
    (["--n", "1"], "n: Input should be greater than or equal to 2 (got 1)"),
    (["--model", "gpt9"], "unknown model 'gpt9'"),
])
def test_bad_demo_settings_are_one_line_errors(cli_runner, tmp_path, args, message):
    r = cli_runner.invoke(app, ["demo", *args, "--out", str(tmp_path / "demo")])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
