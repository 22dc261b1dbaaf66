"""probes pretrain: a tiny causal LM on a corpus the test writes, its run directory, resume, bad input,
and the hand-over to the probe (hf:RUN/model and its random twin config:RUN/model)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cli import app
from probes import schema
from probes.backbones import build_backbone
from probes.config import PretrainConfig, TrainConfig, validate
from probes.errors import UserError
from probes.pretrain import build_model, pretrain_run, run_name, save_config
from probes.train import run_name as probe_run_name

ROOT = Path(__file__).resolve().parents[1]
TINY_ARCH = ["--set", "arch.family=pythia", "--set", "arch.hidden_size=32", "--set", "arch.num_hidden_layers=2",
             "--set", "arch.num_attention_heads=4"]


def write_corpus(root: Path, count: int = 30, seed: int = 0) -> Path:
    """Small, learnable documents: short Python-like lines from a few templates."""
    rng = np.random.default_rng(seed)
    names = ["alpha", "beta", "gamma", "delta", "model", "value"]
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        lines = [f"def {rng.choice(names)}_{j}(x):\n    return x + {rng.integers(10)}\n" for j in range(12)]
        (root / f"mod{i:02d}.py").write_text("".join(lines))
    return root


def tiny_cfg(tmp_path: Path, **kw) -> PretrainConfig:
    base = {"arch": {"family": "pythia", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4},
                "corpus": [str(write_corpus(tmp_path / "corpus"))], "heldout_fraction": 0.1, "tokens": 8 * 32 * 60,
                "batch_size": 8, "seq_len": 32, "lr": 3e-3, "warmup": 5, "eval_every": 15, "eval_windows": 16,
                "copy_lengths": [4, 8], "copy_batch": 4, "device": "cpu", "threads": 1, "out": str(tmp_path / "run")}
    return validate(PretrainConfig, {**base, **kw})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pretrain")
    cfg = tiny_cfg(tmp)
    summary = pretrain_run(cfg, progress=False)
    return cfg, Path(cfg.out), summary


def test_pretraining_reduces_the_held_out_loss(finished):
    _, run, summary = finished
    metrics = pd.read_parquet(run / "metrics.parquet")
    assert metrics.step.tolist() == [0, 15, 30, 45, 60]
    assert metrics.heldout_loss.iloc[0] > 5.0  # about ln(258) at random init
    assert metrics.heldout_loss.iloc[-1] < metrics.heldout_loss.iloc[0] - 2.0
    assert summary["final_heldout_loss"] == pytest.approx(metrics.heldout_loss.iloc[-1])


def test_a_run_writes_its_files_and_a_pretrain_summary(finished):
    cfg, run, summary = finished
    assert (run / "config.yaml").exists() and not (run / "positions.parquet").exists()
    metrics = pd.read_parquet(run / "metrics.parquet")
    assert list(metrics.columns) == ["step", "tokens", "train_loss", "heldout_loss", "lr", "tokens_per_s",
                                     "wall_seconds"] == schema.PRETRAIN_METRIC_COLUMNS  # the typed schema
    assert metrics.tokens.tolist() == [s * 8 * 32 for s in metrics.step]
    assert metrics.lr.iloc[-1] < metrics.lr.max()  # cosine decay
    copy = pd.read_parquet(run / "copy.parquet")
    assert list(copy.columns) == ["step", "length", "copy", "loss", "accuracy"] and len(copy) == 5 * 2 * 2
    assert summary["kind"] == "pretrain" and summary["status"] == "reached" and summary["final_step"] == 60
    assert summary["tokens_seen"] == cfg.tokens and summary["vocab_size"] == 258
    assert json.loads((run / "summary.json").read_text())["status"] == "reached"
    assert (run / "corpus" / ".gitignore").exists() and (run / "checkpoint" / "state.pt").exists()


def test_the_final_model_loads_with_its_byte_tokenizer(finished):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, run, _ = finished
    model = AutoModelForCausalLM.from_pretrained(str(run / "model"))
    tok = AutoTokenizer.from_pretrained(str(run / "model"))
    assert model.config.vocab_size == len(tok) == 258 and model.config.eos_token_id == 0
    assert tok.encode("ab") == [ord("a") + 2, ord("b") + 2]
    assert all(p.stat().st_size < 16 * 2**20 for p in (run / "model").iterdir())


def test_the_probe_trains_the_pretrained_model_and_its_random_twin(finished, tmp_path, cli_runner):
    _, run, _ = finished
    for model in (f"hf:{run}/model", f"config:{run}/model"):
        out = tmp_path / model.split(":")[0]
        result = cli_runner.invoke(app, ["train", "--model", model, "--n", "6", "--max-steps", "4", "--eval-every",
                                         "2", "--batch-size", "8", "--train-size", "60", "--eval-size", "12",
                                         "--device", "cpu", "--threads", "1", "--no-progress", "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert pd.read_parquet(out / "metrics.parquet").step.tolist() == [0, 2, 4]


def test_the_random_twin_is_the_pretraining_start_with_the_same_seed(finished):
    cfg, run, _ = finished
    from transformers import AutoTokenizer

    start = build_model(cfg, AutoTokenizer.from_pretrained(str(run / "model")), torch.device("cpu"), None).model
    twin = build_backbone(f"config:{run}/model", seed=cfg.seed).model
    other = build_backbone(f"config:{run}/model", seed=cfg.seed + 1).model
    trained = build_backbone(f"hf:{run}/model").model
    key = "gpt_neox.embed_in.weight"
    assert torch.equal(twin.state_dict()[key], start.state_dict()[key])
    assert all(torch.equal(v, start.state_dict()[k]) for k, v in twin.state_dict().items())
    assert not torch.equal(other.state_dict()[key], twin.state_dict()[key])
    assert not torch.equal(trained.state_dict()[key], twin.state_dict()[key])
    assert probe_run_name(TrainConfig(model=f"config:{run}/model", n=8)).startswith("config-")
    assert "/" not in probe_run_name(TrainConfig(model=f"config:{run}/model", n=8))


def test_save_config_gives_the_twins_of_the_finished_run_without_pretraining(finished, tmp_path, cli_runner):
    cfg, run, _ = finished
    unread = cfg.model_copy(update={"corpus": [str(tmp_path / "no-such-corpus")]})  # the corpus is not read
    target = tmp_path / "init"
    result = cli_runner.invoke(app, ["pretrain", "--config", _write_yaml(unread, tmp_path / "cfg.yaml"),
                                     "--save-config", str(target)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "tokenizer.json", "tokenizer_config.json"]
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert json.loads((target / name).read_text()) == json.loads((run / "model" / name).read_text()), name
    twin = build_backbone(f"config:{target}", seed=3).model.state_dict()
    assert all(torch.equal(v, twin[k]) for k, v in build_backbone(f"config:{run}/model", seed=3).model.state_dict().items())

    again = cli_runner.invoke(app, ["pretrain", "--config", str(tmp_path / "cfg.yaml"), "--save-config", str(target)])
    assert again.exit_code == 2 and again.output.strip() == f"error: {target} already exists; pass --overwrite to replace it"
    replaced = cli_runner.invoke(app, ["pretrain", "--config", str(tmp_path / "cfg.yaml"), "--save-config", str(target),
                                       "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    bpe = cli_runner.invoke(app, ["pretrain", "--config", str(tmp_path / "cfg.yaml"), "--save-config",
                                  str(tmp_path / "bpe"), "--set", "tokenizer=bpe"])
    assert bpe.exit_code == 2 and len(bpe.output.strip().splitlines()) == 1
    assert "--save-config needs tokenizer byte, not 'bpe'" in bpe.output and not (tmp_path / "bpe").exists()


def test_a_finished_run_is_not_run_again_silently(finished, cli_runner):
    cfg, run, _ = finished
    with pytest.raises(UserError, match="finished run"):
        pretrain_run(cfg, progress=False)
    result = cli_runner.invoke(app, ["pretrain", "--config", _write_yaml(cfg, run.parent / "cfg.yaml")])
    assert result.exit_code == 2 and "pass --overwrite" in result.output


def _write_yaml(cfg: PretrainConfig, path: Path) -> str:
    from probes.config import save_config

    save_config(cfg, path)
    return str(path)


def test_mamba_pretrains_through_the_scan_backend(tmp_path):
    cfg = tiny_cfg(tmp_path, arch={"family": "mamba", "hidden_size": 16, "num_hidden_layers": 1}, tokens=8 * 32 * 4,
                   eval_every=2)
    summary = pretrain_run(cfg, progress=False)
    assert summary["status"] == "reached" and summary["family"] == "mamba" and summary["scan_backend"] == "torch"
    save_config(cfg, tmp_path / "init")  # a Mamba twin's files, as for GPT-NeoX
    assert json.loads((tmp_path / "init" / "config.json").read_text()) == json.loads(
        (Path(cfg.out) / "model" / "config.json").read_text())


def test_a_bpe_run_saves_its_trained_tokenizer_with_the_model(tmp_path):
    from transformers import AutoTokenizer

    cfg = tiny_cfg(tmp_path, tokenizer="bpe", vocab_size=300, tokens=8 * 32 * 2, eval_every=2)
    summary = pretrain_run(cfg, progress=False)
    tok = AutoTokenizer.from_pretrained(str(Path(cfg.out) / "model"))
    assert summary["status"] == "reached" and 258 < summary["vocab_size"] == len(tok) <= 300
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|padding|>"]) == [0, 1]


def test_run_names_come_from_the_backbone_budget_and_seed(tmp_path):
    assert run_name(tiny_cfg(tmp_path)) == "pythia-d32-l2+byte+t15.36K+lr3e-3+s0"
    assert run_name(tiny_cfg(tmp_path, arch=None, model="mamba-tiny", tokens=10**8)) == "mamba-tiny+byte+t100M+lr3e-3+s0"


# === Resume after SIGKILL ===


def _cmd(tmp_path: Path, out: Path) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), "pretrain", *TINY_ARCH, "--corpus", str(tmp_path / "corpus"),
            "--set", "heldout_fraction=0.1", "--tokens", str(8 * 32 * 80), "--batch-size", "8", "--seq-len", "32",
            "--lr", "3e-3", "--warmup", "5", "--eval-every", "10", "--set", "eval_windows=8",
            "--set", "copy_lengths=[4]", "--set", "copy_batch=2", "--device", "cpu", "--threads", "1",
            "--no-progress", "--out", str(out)]


def _without_timing(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["tokens_per_s", "wall_seconds"])


def test_a_run_killed_with_sigkill_resumes_to_the_same_metrics(tmp_path, kill_after_checkpoint):
    write_corpus(tmp_path / "corpus")
    whole = subprocess.run(_cmd(tmp_path, tmp_path / "whole"), check=False, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    run = tmp_path / "killed"
    kill_after_checkpoint(_cmd(tmp_path, run), run)
    assert json.loads((run / "summary.json").read_text())["status"] == "running"
    assert pd.read_parquet(run / "metrics.parquet").step.max() < 80

    again = subprocess.run(_cmd(tmp_path, run), check=False, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "reached" and summary["resumed_at"][0] >= 30
    pd.testing.assert_frame_equal(_without_timing(pd.read_parquet(tmp_path / "whole" / "metrics.parquet")),
                                  _without_timing(pd.read_parquet(run / "metrics.parquet")))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "whole" / "copy.parquet"),
                                  pd.read_parquet(run / "copy.parquet"))


# === Bad input ===


@pytest.mark.parametrize("args, message", [
    (["--corpus", "{tmp}/missing"], "corpus path '{tmp}/missing' does not exist"),
    (["--corpus", "{tmp}/empty"], "the corpus is empty"),
    (["--corpus", "{tmp}/corpus", "--tokens", "50"], "tokens=50 is smaller than one batch"),
    (["--corpus", "{tmp}/corpus", "--tokenizer", "words"], "tokenizer"),
    (["--corpus", "{tmp}/corpus", "--model", "gpt-9"], "unknown model 'gpt-9'"),
    (["--corpus", "{tmp}/corpus", "--set", "arch.family=rwkv"], "arch.family"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, cli_runner, args, message):
    write_corpus(tmp_path / "corpus", count=4)
    (tmp_path / "empty").mkdir()
    args = [a.format(tmp=tmp_path) for a in args]
    arch = [] if "--model" in args else TINY_ARCH
    result = cli_runner.invoke(app, ["pretrain", *arch, "--batch-size", "4", "--seq-len", "16", "--device", "cpu",
                                     "--no-progress", "--out", str(tmp_path / "run"), *args])
    assert result.exit_code == 2, result.output
    assert message.format(tmp=tmp_path) in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()  # nothing written


def test_an_unknown_tokenizer_names_the_allowed_ones():
    with pytest.raises(UserError, match="tokenizer.*'byte'.*'bpe'|tokenizer.*byte.*bpe"):
        validate(PretrainConfig, {"model": "pythia-tiny", "tokenizer": "words"})


def test_probes_pretrain_describe_prints_the_parameter_count(cli_runner):
    result = cli_runner.invoke(app, ["pretrain", "--config", str(ROOT / "configs" / "pretrain-pythia-20m.yaml"),
                                     "--describe"])
    assert result.exit_code == 0 and "19.2M params" in result.stdout
