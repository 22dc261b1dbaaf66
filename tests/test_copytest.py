"""probes.copytest: the in-context copy test separates a model that copies from one that cannot."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch import nn

from cli import app
from probes.backbones import build_backbone
from probes.copytest import copy_sequences, copy_test, format_table


class Copier(nn.Module):
    """Predicts the token `lag` positions back (an ideal induction head for sequences of length lag)."""

    def __init__(self, lag: int, vocab: int = 300):
        super().__init__()
        self.lag = lag
        self.bias = nn.Parameter(torch.zeros(vocab))
        self.config = SimpleNamespace(vocab_size=vocab, eos_token_id=0)

    def forward(self, input_ids):
        b, t = input_ids.shape
        logits = self.bias.expand(b, t, -1).clone()
        # input i predicts x[i + 1]: copy x[i + 1 - lag] where it exists
        src = torch.arange(t) + 1 - self.lag
        ok = src >= 0
        logits[:, ok] += 20 * nn.functional.one_hot(input_ids[:, src[ok]], logits.shape[-1]).float()
        return SimpleNamespace(logits=logits)


def by_copy(rows, length):
    return {r["copy"]: r for r in rows if r["length"] == length}


def test_sequences_repeat_a_seeded_random_sequence_after_a_start_token():
    x = copy_sequences(10, 4, vocab_size=1000, seed=1)
    assert x.shape == (4, 21) and (x[:, 0] == 0).all()
    assert torch.equal(x[:, 1:11], x[:, 11:]) and x[:, 1:].min() >= 2 and x[:, 1:].max() < 258
    assert torch.equal(x, copy_sequences(10, 4, vocab_size=1000, seed=1))
    assert not torch.equal(x, copy_sequences(10, 4, vocab_size=1000, seed=2))
    assert copy_sequences(50, 2, vocab_size=40).max() < 40  # capped by the vocabulary


def test_a_copying_model_is_right_on_the_second_copy_only():
    rows = copy_test(Copier(lag=12), [12], batch=16, seed=0)
    r = by_copy(rows, 12)
    assert r["second"]["accuracy"] == 1.0 and r["second"]["loss"] < 0.01
    assert r["first"]["accuracy"] < 0.1 and r["first"]["loss"] > 3


def test_the_copy_test_separates_a_copier_from_an_untrained_model():
    untrained = build_backbone("pythia-tiny", seed=0).model
    plain = by_copy(copy_test(untrained, [16], batch=8, seed=0), 16)
    copier = by_copy(copy_test(Copier(lag=16), [16], batch=8, seed=0), 16)
    gap = lambda r: r["first"]["loss"] - r["second"]["loss"]
    assert abs(gap(plain)) < 0.5 < gap(copier)
    assert plain["second"]["accuracy"] < 0.1 < copier["second"]["accuracy"]


def test_the_table_has_one_line_per_length():
    lines = format_table(copy_test(Copier(lag=4), [4, 8], batch=2))
    assert len(lines) == 3 and lines[1].split()[0] == "4" and lines[2].split()[0] == "8"


def test_probes_copytest_prints_a_table_and_writes_parquet(tmp_path, cli_runner):
    out = tmp_path / "copy.parquet"
    result = cli_runner.invoke(app, ["copytest", "--model", "mamba-tiny", "--lengths", "4,8", "--batch", "2",
                                     "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "loss 2nd" in result.stdout and len(result.stdout.strip().splitlines()) == 3
    frame = pd.read_parquet(out)
    assert list(frame.columns) == ["model", "length", "copy", "loss", "accuracy"] and len(frame) == 4


@pytest.mark.parametrize("args, message", [
    (["--model", "gpt-9"], "unknown model 'gpt-9'"),
    (["--model", "pythia-tiny", "--lengths", "4,x"], "comma-separated integers"),
    (["--model", "pythia-tiny", "--lengths", "1"], "--lengths must be integers >= 2"),
    (["--model", "config:/no/such/dir"], "no model there"),
])
def test_bad_copytest_input_is_one_line(cli_runner, args, message):
    result = cli_runner.invoke(app, ["copytest", "--device", "cpu", *args])
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
