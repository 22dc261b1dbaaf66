"""Issue 19: the VLM path as the papers (and the paper's code) have it: markers that can be told
apart, the paper's own marker tokens, channel-concatenated encoders, the encoder feature choice,
per-stage batch sizes with gradient accumulation, and old run directories still resuming."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from probes.backbones import Backbone
from probes.errors import UserError
from probes.rundir import latest_checkpoint
from probes.train import BatchOrder
from probes.vlm.config import PAPER_MARKER_IDS, VLMTrainConfig
from probes.vlm.encoders import build_encoder
from probes.vlm.model import MARKERS, ByteCodec, build_vlm, check_same_grid, paper_markers
from probes.vlm.train import ExampleStream, accumulate, legacy_values, load_splits, train_vlm

TINY_DATA = {"train_size": 32, "eval_size": 4, "image_size": 32, "max_objects": 2}


def tiny(out=None, **kw) -> VLMTrainConfig:
    base = {"model": "pythia-tiny", "encoder": "siglip-tiny", "instruction": "", "max_steps": 4,
            "stage1_steps": 2, "eval_every": 2, "batch_size": 4, "eval_batch_size": 4, "lr": 1e-3,
            "out": str(out) if out else None, "data": TINY_DATA, "device": "cpu"}
    return VLMTrainConfig(**{**base, **kw})


def marker_rows(lm, ids) -> list[torch.Tensor]:
    tables = [lm.get_input_embeddings().weight]
    if lm.get_output_embeddings().weight is not tables[0]:
        tables.append(lm.get_output_embeddings().weight)
    return [torch.cat([t[i].detach().float() for t in tables]) for i in ids]


def assert_markers_distinct(lm, ids) -> None:
    rows = marker_rows(lm, ids)
    for a in range(len(rows)):
        for b in range(a + 1, len(rows)):
            assert not torch.allclose(rows[a], rows[b], rtol=0, atol=1e-4), f"markers {a} and {b} are equal"


# === 1. Markers that differ from the start ===


@pytest.mark.parametrize("init", ["default", "mean", "normal"])
def test_new_markers_differ_from_the_start_under_every_init(init):
    m = build_vlm(tiny(marker_init=init))
    ids = [m.builder.markers.image_start, m.builder.markers.image_end, m.builder.markers.row_sep]
    assert_markers_distinct(m.lm, ids)


def test_markers_stay_distinct_through_stage_1_and_the_old_default_did_not(tmp_path):
    """Stage 1 freezes the LM, so the markers leave it as they began: distinct by default; the old
    behaviour (mean, no noise) is the case the check exists for, and it fails there."""
    for name, noise in (("new", None), ("old", 0.0)):
        extra = {} if noise is None else {"marker_noise": noise}
        train_vlm(tiny(tmp_path / name, max_steps=2, stage1_steps=2, marker_init="mean", **extra))
        lm = build_vlm(tiny(), lm_checkpoint=latest_checkpoint(tmp_path / name)[0]).lm
        ids = [lm.get_input_embeddings().num_embeddings - 3 + k for k in range(3)]
        if noise is None:
            assert_markers_distinct(lm, ids)
        else:
            with pytest.raises(AssertionError, match="are equal"):
                assert_markers_distinct(lm, ids)


def test_the_marker_noise_is_seeded_and_small():
    a, b, c = (build_vlm(tiny(seed=s)) for s in (0, 0, 1))
    ids = list(range(1024, 1027))
    assert all(torch.equal(x, y) for x, y in zip(marker_rows(a.lm, ids), marker_rows(b.lm, ids)))
    assert not torch.equal(marker_rows(a.lm, ids)[0], marker_rows(c.lm, ids)[0])
    emb = a.lm.get_input_embeddings().weight.detach()
    mean, std = emb[:1024].mean(0), emb[:1024].std(0)
    offsets = (emb[1024:1027] - mean) / std  # the noise in units of the vocabulary's std: about 0.1
    assert 0.05 < float(offsets.std()) < 0.2


# === 2. markers: new | paper ===


def test_paper_markers_are_existing_tokens_around_and_between_rows():
    m = build_vlm(tiny(markers="paper", row_sep="between"))
    assert m.lm.get_input_embeddings().num_embeddings == 1024  # nothing added
    mk = m.builder.markers
    assert (mk.image_start, mk.image_end, mk.row_sep) == (1022, 1022, 1023)  # tiny: the vocabulary's last two
    assert m.builder.render(m.builder.prompt("the red square", 2, 2)) == "### p p && p p ### the red square\\n"
    new = build_vlm(tiny())
    assert new.builder.render(new.builder.prompt("x", 2, 2)) == "<img> p p <row> p p <row> </img> x\\n"


def _backbone(vocab: int, tokenizer=None) -> Backbone:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(vocab_size=vocab, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=16)
    return Backbone("neox", "pythia", GPTNeoXForCausalLM(config), tokenizer)


def test_paper_marker_ids_follow_the_documented_rule():
    full = _backbone(50304)  # a config-built GPT-NeoX vocabulary: the paper code's own ids
    m = paper_markers(full, ByteCodec(), None)
    assert (m.image_start, m.image_end, m.row_sep) == PAPER_MARKER_IDS == (4118, 4118, 10494)
    custom = paper_markers(full, ByteCodec(), (300, 301, 302))
    assert (custom.image_start, custom.image_end, custom.row_sep) == (300, 301, 302)
    with pytest.raises(UserError, match=r"marker_ids \[5, 5, 50304\]: 50304 is not a usable id"):
        paper_markers(full, ByteCodec(), (5, 5, 50304))
    eos = full.eos_id
    with pytest.raises(UserError, match=f"except end-of-text {eos}"):
        paper_markers(full, ByteCodec(), (eos, 5, 6))


def test_paper_markers_with_a_tokenizer_are_its_ids_of_the_strings():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from probes.vlm.model import TokenizerCodec

    def tokenizer(vocab):
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return PreTrainedTokenizerFast(tokenizer_object=tok)

    good = tokenizer({"<|endoftext|>": 0, "<unk>": 1, "###": 7, "&&": 9})
    m = paper_markers(_backbone(64, good), TokenizerCodec(good), None)
    assert (m.image_start, m.image_end, m.row_sep) == (7, 7, 9)
    bad = tokenizer({"<|endoftext|>": 0, "<unk>": 1, "###": 7})
    split = TokenizerCodec(bad)
    split.encode = lambda text: [1, 1] if text == "&&" else [7]  # '&&' is two tokens in this one
    with pytest.raises(UserError, match="'&&' is 2 tokens .* set marker_ids"):
        paper_markers(_backbone(64, bad), split, None)


def test_marker_ids_need_paper_markers():
    with pytest.raises(ValueError, match="marker_ids are for markers=paper"):
        tiny(marker_ids=(1, 2, 3))


def test_a_paper_marker_run_trains_and_resumes_from_its_checkpoint(tmp_path):
    cfg = tiny(tmp_path / "p", model="mamba-tiny", markers="paper", row_sep="between", max_steps=2,
               stage1_steps=1, eval_every=1)
    train_vlm(cfg)
    m = build_vlm(cfg, lm_checkpoint=latest_checkpoint(tmp_path / "p")[0])
    assert m.lm.get_input_embeddings().num_embeddings == 1024 and m.backbone.base_vocab == 1024
    assert m.builder.render(m.builder.prompt("x", 1, 2)) == "### p p ### x\\n"


# === 3. concat: channels | sequence ===


def test_channel_concatenation_joins_the_maps_per_patch():
    seq = build_vlm(tiny(encoder2="dinov2-tiny"))
    ch = build_vlm(tiny(encoder2="dinov2-tiny", concat="channels"))
    assert seq.grid == (8, 4) and ch.grid == (4, 4)
    assert ch.connector.w1[0].in_features == 64 and len(ch.connector.w1) == 1
    pixels = torch.rand(2, 3, 32, 32)
    out = ch.visual(pixels)
    assert out.shape == (2, 4, 4, 128)
    feats = torch.cat([e(pixels) for e in ch.encoders], dim=-1)  # Concat[f1; f2] per patch, then the MLP
    expected = ch.connector.w2(torch.nn.functional.gelu(ch.connector.w1[0](feats)))
    torch.testing.assert_close(out, expected)
    with torch.no_grad():
        ch.encoders[1].model.embeddings.patch_embeddings.projection.weight.mul_(2)  # the second map matters
    assert not torch.allclose(ch.visual(pixels), out)


def test_channel_concatenation_needs_one_grid_and_a_one_map_connector():
    encs = [SimpleNamespace(name="a-tiny", grid=(4, 4)), SimpleNamespace(name="b-big", grid=(6, 6))]
    with pytest.raises(UserError, match="concat=channels needs one patch grid, got a-tiny 4×4, b-big 6×6"):
        check_same_grid(encs)
    check_same_grid(encs[:1])
    with pytest.raises(ValueError, match="mamba-projector .* needs concat=sequence"):
        tiny(encoder2="dinov2-tiny", connector="mamba-projector", concat="channels")
    m = build_vlm(tiny(encoder2="dinov2-tiny", connector="vss-l2", concat="channels"))  # one map: any connector
    assert m.visual(torch.rand(1, 3, 32, 32)).shape == (1, 4, 4, 128)


# === 4. Encoder features: layer and final norm ===


@pytest.mark.parametrize("name, prefix", [("siglip-tiny", 0), ("dinov2-tiny", 1)])
def test_feature_norm_with_the_last_layer_is_the_towers_own_output(name, prefix):
    enc = build_encoder(name, feature_layer=-1, feature_norm=True)
    pixels = torch.rand(2, 3, 32, 32)
    ours = enc(pixels)
    with torch.no_grad():
        theirs = enc.model(pixel_values=(pixels - enc.mean) / enc.std).last_hidden_state[:, prefix:]
    torch.testing.assert_close(ours, theirs.reshape(ours.shape))
    raw = build_encoder(name, feature_layer=-1)(pixels)
    assert not torch.allclose(raw, ours)  # off by default: the hidden state as it is


# === 5. Per-stage batch sizes, micro-batches, resume ===


def test_examples_seen_counts_each_stage_at_its_batch_size():
    cfg = tiny(max_steps=10, stage1_steps=4, batch_size=8, stage1_batch_size=6, stage2_batch_size=3)
    assert [cfg.examples_seen(s) for s in (0, 1, 4, 5, 10)] == [0, 6, 24, 27, 42]
    assert tiny(max_steps=10, batch_size=8).examples_seen(10) == 80


def test_the_example_stream_is_the_batch_order_and_continues_across_stages():
    one = tiny(max_steps=20, stage1_steps=5, batch_size=6)
    assert all(np.array_equal(ExampleStream(one, 32).rows(s), BatchOrder(32, 6, one.seed).rows(s))
               for s in range(20))
    two = tiny(max_steps=20, stage1_steps=5, stage1_batch_size=6, stage2_batch_size=4)
    stream = np.concatenate([ExampleStream(two, 32).rows(s) for s in range(20)])
    flat = np.concatenate([BatchOrder(32, 1, two.seed).rows(i) for i in range(len(stream))])
    assert len(stream) == 5 * 6 + 15 * 4 and np.array_equal(stream, flat)


def test_micro_batches_accumulate_the_whole_batch_gradient():
    cfg = tiny()
    train, _ = load_splits(cfg)
    rows = np.arange(6)
    grads = []
    for micro in (None, 2, 4):
        m = build_vlm(cfg)
        loss = float(accumulate(m, train, rows, micro, torch.device("cpu"), None))
        grads.append((loss, torch.cat([p.grad.flatten() for p in m.connector.parameters()])))
    for loss, g in grads[1:]:
        assert loss == pytest.approx(grads[0][0], rel=1e-5)
        torch.testing.assert_close(g, grads[0][1], rtol=1e-4, atol=1e-7)


def test_per_stage_batch_sizes_train_record_and_resume_exactly(tmp_path):
    def cfg(out, **kw):
        return tiny(out, stage1_batch_size=4, stage2_batch_size=2, micro_batch_size=1, **kw)

    full = train_vlm(cfg(tmp_path / "a"))
    metrics = pd.read_parquet(tmp_path / "a" / "metrics.parquet")
    assert metrics["examples_seen"].tolist() == [0, 8, 12] and full["final_step"] == 4

    class Killed(Exception):
        pass

    def kill_at_step_4(msg):
        if msg.startswith("step      4 stage"):
            raise Killed

    with pytest.raises(Killed):
        train_vlm(cfg(tmp_path / "b"), log=kill_at_step_4)
    resumed = train_vlm(cfg(tmp_path / "b").model_copy(update={"micro_batch_size": 2}))  # resumable change
    assert resumed["resumed_at"] == [2]
    a, b = (pd.read_parquet(tmp_path / r / "metrics.parquet") for r in ("a", "b"))
    assert b["loss"].tolist() == pytest.approx(a["loss"].tolist(), rel=1e-5)
    assert b["examples_seen"].tolist() == [0, 8, 12]


# === Old run directories ===


def test_a_run_from_before_the_new_keys_resumes_as_it_began(tmp_path):
    """An old config.yaml has none of the new keys; the same command resumes it, and a run killed
    before its first checkpoint starts over with the old (identical) markers."""
    old = tiny(tmp_path / "old", marker_noise=0.0)
    reference = train_vlm(tiny(tmp_path / "ref", marker_noise=0.0))

    class Killed(Exception):
        pass

    def kill_at_step_0(msg):
        if msg.startswith("step      0 stage"):
            raise Killed  # before any checkpoint

    with pytest.raises(Killed):
        train_vlm(old, log=kill_at_step_0)
    saved = yaml.safe_load((tmp_path / "old" / "config.yaml").read_text())
    for key in ("marker_noise", "markers", "marker_ids", "concat", "feature_norm", "stage1_batch_size",
                "stage2_batch_size", "micro_batch_size"):
        del saved[key]
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump(saved))
    assert legacy_values(tmp_path / "old") == {"marker_noise": 0.0}
    assert legacy_values(tmp_path / "ref") == {}

    summary = train_vlm(tiny(tmp_path / "old"))  # today's defaults, the same command
    assert summary["final_step"] == reference["final_step"]
    a, b = (pd.read_parquet(tmp_path / r / "metrics.parquet")["loss"].tolist() for r in ("ref", "old"))
    assert b == pytest.approx(a, rel=1e-5)
    train_vlm(tiny(tmp_path / "today"))  # what today's default would have done instead: another run
    today = pd.read_parquet(tmp_path / "today" / "metrics.parquet")["loss"].tolist()
    assert today != pytest.approx(a, rel=1e-5)
    assert json.loads((tmp_path / "old" / "summary.json").read_text())["status"] == "not_reached"
    assert len(MARKERS) == 3


# === The preview command ===


def test_vlm_preview_shows_both_marker_kinds_and_bad_ids_are_one_line(cli_runner):
    from cli import app

    def run(*args):
        return cli_runner.invoke(app, ["vlm", "preview", "--instruction", "", "-n", "1", *args])

    r = run("--markers", "paper", "--row-sep", "between")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("### p p p p && p p p p && p p p p && p p p p ### the ") and "<eos>" in r.stdout
    r = run("--layout", "query-first")
    assert r.exit_code == 0 and "\\n <img> p p p p <row>" in r.stdout and "<row> </img> [" in r.stdout
    r = run("--markers", "paper", "--marker-ids", "1,2")
    assert r.exit_code == 2 and "marker_ids [1, 2] is not three token ids" in r.output
    assert "Traceback" not in r.output


def test_the_committed_pass_6_runs_still_load_with_their_old_markers():
    from pathlib import Path

    from probes.rundir import read_config

    run = Path(__file__).resolve().parents[2] / "results" / "repro" / "vlm" / "mamba-tiny+query-first+s0"
    if not (run / "config.yaml").exists():
        pytest.skip("results/repro/vlm is not in this checkout")
    cfg = read_config(run, VLMTrainConfig)
    assert "marker_noise" not in yaml.safe_load((run / "config.yaml").read_text())
    assert legacy_values(run) == {"marker_noise": 0.0}
    assert (cfg.markers, cfg.concat, cfg.feature_norm, cfg.stage_batch_size(1), cfg.stage_batch_size(2)) == \
        ("new", "sequence", False, 32, 32)
