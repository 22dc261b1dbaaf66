"""`probes bench`: one table with Pythia and Mamba side by side, and one-line errors."""

import os

import pandas as pd
import pytest
import torch

from cli import app
from probes.errors import UserError


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


def test_bench_times_probes_train_step_and_evaluation(monkeypatch, tmp_path):
    """The row is timed on probes.train's own functions: a spy counts every call."""
    from probes import bench, train

    calls = {"make_optimizer": 0, "make_scheduler": 0, "train_step": 0, "evaluate": 0}
    seen = {}

    def spy(name):
        real = getattr(train, name)

        def wrapped(*args, **kwargs):
            calls[name] += 1
            if name == "train_step":
                seen["grad_clip"], seen["x_shape"] = kwargs["grad_clip"], tuple(args[2].shape)
            if name == "make_optimizer":
                seen["cfg"] = args[1]
            return real(*args, **kwargs)
        return wrapped

    for name in calls:
        monkeypatch.setattr(train, name, spy(name))
    df = bench.run_bench(["mamba-tiny:b3"], n=6, steps=2, warmup=1, eval_steps=2, device="cpu",
                         out_dir=tmp_path, verbose=False)
    assert df["status"].tolist() == ["ok"]
    assert calls == {"make_optimizer": 1, "make_scheduler": 1, "train_step": 3, "evaluate": 3}
    cfg = seen["cfg"]
    assert (cfg.model, cfg.batch_size, cfg.n, cfg.eval_batch_size) == ("mamba-tiny", 3, 6, 12)
    assert seen["grad_clip"] == cfg.grad_clip and seen["x_shape"] == (3, 9)
    assert df["eval_examples_per_s"].iloc[0] > 0 and df["precision"].iloc[0] == "fp32"


def load_scan_benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "scan.py"
    spec = importlib.util.spec_from_file_location("scan_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_scan_benchmark_floor_and_arguments(capsys):
    mod = load_scan_benchmark()
    assert mod.parse_shape("64,1536,203,16") == (64, 1536, 203, 16)
    with pytest.raises(Exception, match="bad shape '64,0,203'"):
        mod.parse_shape("64,0,203")
    md = mod.to_markdown([{"levers": "on", "B": 64, "D": 1536, "L": 203, "N": 16, "fwd_ms": 0.5, "fwd_bwd_ms": 1.39,
                           "floor_ms": 0.1, "x_floor": 13.9, "pct_of_floor": 7.2, "conv_fwd_bwd_ms": 0.6}], 4.3e12,
                         {"gpu": "H200", "torch": "2", "triton": "3"})
    assert "| on | 64 | 1536 | 203 | 16 | 0.500 | 1.390 | 0.100 | 13.9 | 7% | 0.600 |" in md
    assert mod.scan_rows("on, bc2,dh1 bc2") == ("on", "bc2", "dh1 bc2")
    with pytest.raises(Exception, match="unknown scan mode 'bc3'"):
        mod.scan_rows("on,bc3")
    if not torch.cuda.is_available():
        assert mod.main(["--out", "unused"]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err


def test_scan_modes_apply_inside_the_block_and_leave_nothing_behind(monkeypatch):
    from probes.kernels.selective_scan import CONFIG

    mod = load_scan_benchmark()
    monkeypatch.setenv("PROBES_SCAN_SAVE_MB", "64")
    monkeypatch.delenv("PROBES_SCAN_LEVERS", raising=False)
    before = dict(CONFIG.__dict__)
    with mod.scan_mode("dh1 bc2"):
        assert (CONFIG.bc_mode, CONFIG.dh_bwd) == (2, 1)
    with mod.scan_mode("tuned"):
        assert CONFIG.autotune and os.environ["PROBES_SCAN_SAVE_MB"] == "0"
    with mod.scan_mode("off"):
        assert os.environ["PROBES_SCAN_LEVERS"] == "0"
    assert dict(CONFIG.__dict__) == before and os.environ["PROBES_SCAN_SAVE_MB"] == "64"
    assert "PROBES_SCAN_LEVERS" not in os.environ


SASS = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   FFMA R2, R3, R4, R2 ;
        /*0020*/                   SHFL.BFLY PT, R5, R2, 0x1, 0x1f ;
        /*0030*/                   MUFU.EX2 R6, R5 ;
        /*0040*/              @!P0 BRA `(.L_x_1) ;
        /*0050*/                   FADD R2, R2, R6 ;
.L_x_1:
        /*0060*/                   ISETP.GE.AND P1, PT, R7, 0x10, PT ;
        /*0070*/              @!P1 BRA `(.L_x_0) ;
        /*0080*/                   EXIT ;
"""


def test_scan_benchmark_counts_the_main_loops_instructions():
    """--sass (no GPU): the loop is the code from a label up to a branch back to it; forward branches don't count."""
    mod = load_scan_benchmark()
    ops = mod.main_loop(SASS)
    assert ops == {"FFMA": 1, "SHFL": 1, "MUFU": 1, "BRA": 2, "FADD": 1, "ISETP": 1}
    costs = mod.loop_costs(ops)
    assert (costs["instructions"], costs["fp32"], costs["shfl"], costs["mufu"]) == (7, 2, 1, 1)
    assert costs["clk_issue"] == 7 / 4 and costs["clk_shfl"] == 1.0 and costs["clk_mufu"] == 2.0
    # 1,000 clocks per iteration x 132 programs x 10 iterations on 132 SMs at 1 GHz: 10 us
    assert mod.issue_bound_ms(1000, 132, 10, 132, 1.0) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="no loop"):
        mod.main_loop("        /*0000*/                   EXIT ;")
    for bad in ("--sms=0", "--ghz=abc"):  # one argparse line, exit 2
        with pytest.raises(SystemExit) as exit_:
            mod.main(["--sass", bad])
        assert exit_.value.code == 2


def test_parse_spec_options():
    from probes.bench import parse_spec

    assert parse_spec("mamba-130m@triton:b16:gc:fr") == {
        "spec": "mamba-130m@triton:b16:gc:fr", "name": "mamba-130m", "backend": "triton", "batch": 16,
        "gc": True, "fr": True, "cg": False}
    assert parse_spec("pythia-160m")["fr"] is False
    assert parse_spec("mamba-130m:cg:b8") == {"spec": "mamba-130m:cg:b8", "name": "mamba-130m", "backend": None,
                                              "batch": 8, "gc": False, "fr": False, "cg": True}
    with pytest.raises(UserError, match=r"bad option 'cuda' in --model 'pythia-160m:cuda' .*\[:cg\]"):
        parse_spec("pythia-160m:cuda")


def test_cuda_graph_rows_reach_the_config_and_compare_with_their_eager_twin():
    from probes.bench import add_ratios, parse_spec, row_config, spec_without_cg

    cfg = row_config(parse_spec("pythia-tiny:cg"), 4, 6, 2, 1, None, 2, 1e-3, 0, "cpu")
    assert cfg.cuda_graphs is True
    assert row_config(parse_spec("pythia-tiny"), 4, 6, 2, 1, None, 2, 1e-3, 0, "cpu").cuda_graphs is False
    assert spec_without_cg("mamba-130m@triton:cg:b16") == "mamba-130m@triton:b16"
    rows = [{"model": m, "name": m.split(":")[0], "family": f, "backend": "-", "status": "ok", "cuda_graphs": cg,
             "train_tokens_per_s": t, "peak_mem_GB": 1.0}
            for m, f, cg, t in [("pythia-160m", "pythia", False, 100.0), ("pythia-160m:cg", "pythia", True, 300.0),
                                ("mamba-130m", "mamba", False, 50.0), ("mamba-130m:cg", "mamba", True, 240.0)]]
    df = add_ratios(pd.DataFrame(rows)).set_index("model")
    assert df.loc["pythia-160m:cg", "vs_eager"] == 3.0 and df.loc["mamba-130m:cg", "vs_eager"] == 4.8
    assert df.loc["mamba-130m", "vs_pythia_tokens"] == 0.5 and df.loc["mamba-130m:cg", "vs_pythia_tokens"] == 0.8
    assert df.loc["pythia-160m", "vs_eager"] is None
    assert "vs_eager" not in add_ratios(pd.DataFrame(rows[:1] + rows[2:3])).columns


def test_a_cuda_graph_row_on_cpu_runs_the_eager_step_and_says_so(tmp_path):
    from probes import bench

    df = bench.run_bench(["pythia-tiny:cg:b2"], n=4, steps=1, warmup=1, eval_steps=1, device="cpu",
                         out_dir=tmp_path, verbose=False)
    assert df["status"].tolist() == ["ok"] and df["cuda_graphs"].tolist() == [False]
