"""`probes bench`: one table with Pythia and Mamba side by side, and one-line errors."""

import pandas as pd

from cli import app


def test_bench_writes_one_table_for_all_models(cli_runner, tmp_path):
    r = cli_runner.invoke(app, ["bench", "--model", "pythia-tiny", "--model", "mamba-tiny", "--device", "cpu",
                                "--n", "8", "--batch-size", "4", "--steps", "2", "--warmup", "1",
                                "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    table = pd.read_csv(tmp_path / "bench.csv")
    assert table["model"].tolist() == ["pythia-tiny", "mamba-tiny"]
    assert (table["train_tokens_per_s"] > 0).all() and (table["eval_examples_per_s"] > 0).all()
    assert "| pythia-tiny |" in (tmp_path / "bench.md").read_text()


def test_bench_rejects_unknown_models_and_options_in_one_line(cli_runner, tmp_path):
    for spec, message in [("nonsense", "unknown model 'nonsense' (known: pythia-tiny"),
                          ("pythia-tiny:zz", "bad option 'zz'")]:
        r = cli_runner.invoke(app, ["bench", "--model", spec, "--device", "cpu", "--out", str(tmp_path)])
        assert r.exit_code == 2 and message in r.output
