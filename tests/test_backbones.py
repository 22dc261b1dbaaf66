"""probes.backbones: the registry of SPEC §6, vocabulary extension of SPEC §1, logits at slots only."""

import re

import pytest
import torch

from probes.backbones import (
    BACKBONES,
    build_backbone,
    check_model_name,
    describe,
    extend_vocabulary,
    slot_logits,
)
from probes.errors import UserError

# Published parameter counts (Pythia: Biderman et al. 2023, table 1; Mamba: the state-spaces configs).
PUBLISHED = {"pythia-14m": 14e6, "pythia-70m": 70e6, "pythia-160m": 162e6, "pythia-410m": 405e6,
             "pythia-1b": 1.01e9, "pythia-1.4b": 1.41e9, "pythia-2.8b": 2.78e9, "mamba-130m": 129e6,
             "mamba-370m": 372e6, "mamba-790m": 793e6, "mamba-1.4b": 1.37e9, "mamba-2.8b": 2.77e9}
NAMES = [f"<s_{i}>" for i in range(6)] + ["<out>", "<sep>"]


def test_the_registry_has_every_spec_name_once():
    spec_names = {f"pythia-{s}" for s in ("14m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "tiny")}
    spec_names |= {f"mamba-{s}" for s in ("130m", "370m", "790m", "1.4b", "2.8b", "tiny")}
    assert set(BACKBONES) == spec_names
    assert all(spec.name == name for name, spec in BACKBONES.items())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_named_models_have_the_published_sizes(name):
    params = float(re.search(r"(\d+)M params", describe(name)).group(1)) * 1e6  # built on the meta device
    assert params == pytest.approx(PUBLISHED[name], rel=0.02)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_named_models_carry_their_hub_id_for_hf_users(name):
    assert BACKBONES[name].hub_id.split("/")[0] in ("EleutherAI", "state-spaces")


@pytest.mark.parametrize("name", ["pythia-tiny", "mamba-tiny"])
def test_tiny_presets_build_with_seeded_random_weights(name):
    a, b, c = (build_backbone(name, seed=s).model for s in (0, 0, 1))
    wa, wb, wc = (m.get_input_embeddings().weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert sum(p.numel() for p in a.parameters()) < 2e6  # CPU-sized


def test_pythia_tiny_rotates_every_head_dimension():
    cfg = BACKBONES["pythia-tiny"].build_config()
    rope = getattr(cfg, "rope_parameters", None) or {}  # transformers 5 moved rotary_pct there
    assert rope.get("partial_rotary_factor", getattr(cfg, "rotary_pct", None)) == 1.0
    assert cfg.hidden_size // cfg.num_attention_heads == 16


@pytest.fixture(scope="module")
def pythia():
    return build_backbone("pythia-tiny", seed=0)


@pytest.mark.parametrize("name", ["pythia-tiny", "mamba-tiny"])
@pytest.mark.parametrize("init", ["default", "mean", "normal"])
def test_extension_appends_rows_and_keeps_the_old_ones(name, init):
    bb = build_backbone(name, seed=0)
    old_in = bb.model.get_input_embeddings().weight.detach().clone()
    old_out = bb.model.get_output_embeddings().weight.detach().clone()
    ids = extend_vocabulary(bb, NAMES, init=init, seed=0)
    v = old_in.shape[0]
    assert ids == list(range(v, v + len(NAMES))) and bb.base_vocab == v
    w_in = bb.model.get_input_embeddings().weight
    w_out = bb.model.get_output_embeddings().weight
    assert w_in.shape[0] == v + len(NAMES) == w_out.shape[0] == bb.model.config.vocab_size
    assert torch.equal(w_in[:v], old_in) and torch.equal(w_out[:v], old_out)
    assert torch.isfinite(w_in[v:]).all() and not torch.equal(w_in[v], torch.zeros_like(w_in[v]))


def test_mean_init_is_the_mean_of_the_existing_rows(pythia):
    bb = build_backbone("pythia-tiny", seed=0)
    mean = bb.model.get_input_embeddings().weight.detach().mean(0)
    extend_vocabulary(bb, NAMES, init="mean", seed=0)
    new = bb.model.get_input_embeddings().weight[-len(NAMES):]
    assert torch.allclose(new, mean.expand_as(new), atol=1e-6)


def test_normal_init_draws_around_the_existing_mean_and_is_seeded():
    rows = {}
    for seed in (0, 0, 1):
        bb = build_backbone("pythia-tiny", seed=0)
        old = bb.model.get_input_embeddings().weight.detach().clone()
        extend_vocabulary(bb, [f"<s_{i}>" for i in range(400)], init="normal", seed=seed)
        rows.setdefault(seed, []).append(bb.model.get_input_embeddings().weight[-400:].detach())
    assert torch.equal(rows[0][0], rows[0][1]) and not torch.equal(rows[0][0], rows[1][0])
    new = rows[0][0]
    assert torch.allclose(new.mean(0), old.mean(0), atol=4 * old.std(0).max().item() / 20)
    assert new.std(0).mean().item() == pytest.approx(old.std(0).mean().item(), rel=0.15)


def test_default_init_uses_the_models_initializer_range():
    bb = build_backbone("pythia-tiny", seed=0)
    extend_vocabulary(bb, [f"<s_{i}>" for i in range(400)], init="default", seed=0)
    new = bb.model.get_input_embeddings().weight[-400:]
    assert new.std().item() == pytest.approx(bb.model.config.initializer_range, rel=0.1)


def test_unknown_init_is_a_user_error(pythia):
    with pytest.raises(UserError, match=r"unknown init 'zeros' \(allowed: default, mean, normal\)"):
        extend_vocabulary(pythia, NAMES, init="zeros")


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UserError) as err:
        check_model_name("gpt-2")
    msg = str(err.value)
    assert "unknown model 'gpt-2'" in msg and "pythia-160m" in msg and "mamba-tiny" in msg and "hf:" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("name", ["pythia-tiny", "mamba-tiny"])
def test_slot_logits_equal_the_full_logits_at_those_slots(name):
    model = build_backbone(name, seed=0).model.eval()
    x = torch.randint(0, 1000, (3, 9))
    with torch.no_grad():
        full = model(x).logits
        part = slot_logits(model, x, [6, 7])
    assert part.shape == (3, 2, full.shape[-1])
    torch.testing.assert_close(part, full[:, [6, 7]], rtol=1e-4, atol=1e-4)


# === hf:ID_OR_PATH ===


def _tiny_tokenizer(size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<|padding|>": 1, **{f"t{i}": i for i in range(2, size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|padding|>")


@pytest.mark.parametrize("name", ["pythia-tiny", "mamba-tiny"])
def test_hf_paths_load_a_locally_saved_model_and_tokenizer(tmp_path, name):
    saved = build_backbone(name, seed=3)
    saved.model.save_pretrained(tmp_path / "m")
    _tiny_tokenizer(100).save_pretrained(tmp_path / "m")
    bb = build_backbone(f"hf:{tmp_path / 'm'}")
    assert bb.family == name.split("-")[0] and bb.tokenizer is not None
    for a, b in zip(saved.model.state_dict().values(), bb.model.state_dict().values()):
        assert torch.equal(a, b)
    ids = extend_vocabulary(bb, NAMES, init="mean", seed=0)
    assert bb.tokenizer.convert_tokens_to_ids(NAMES) == ids  # new tokens sit at their embedding rows
    assert bb.tokenizer.decode(ids[:2]).split() == NAMES[:2]


def test_an_hf_path_that_does_not_exist_is_a_one_line_user_error(tmp_path):
    with pytest.raises(UserError) as err:
        build_backbone(f"hf:{tmp_path / 'nowhere'}")
    assert "no model there" in str(err.value) and "\n" not in str(err.value)


# === Damaged model directories and the hub without network (issue 20) ===


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("saved") / "m"
    build_backbone("pythia-tiny", seed=1).model.save_pretrained(out)
    return out


def _copy_model(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


DAMAGES = {
    "truncated header": ("model.safetensors", lambda p: p.write_bytes(p.read_bytes()[:200])),
    "truncated weights": ("model.safetensors", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])),
    "empty weights": ("model.safetensors", lambda p: p.write_bytes(b"")),
    "garbage weights": ("model.safetensors", lambda p: p.write_bytes(b"garbage" * 50)),
    "garbage config": ("config.json", lambda p: p.write_text("garbage{")),
    "config without model_type": ("config.json", lambda p: p.write_text('{"hidden_size": 3}')),
}


@pytest.mark.parametrize("case", sorted(DAMAGES))
def test_a_damaged_hf_directory_is_one_line_naming_the_file(tmp_path, saved_tiny, case):
    filename, damage = DAMAGES[case]
    model_dir = _copy_model(saved_tiny, tmp_path / "m")
    damage(model_dir / filename)
    with pytest.raises(UserError) as err:
        build_backbone(f"hf:{model_dir}")
    text = str(err.value)
    assert str(model_dir / filename) in text and "\n" not in text, text


def test_hub_unreachable_names_the_reason_without_retrying(monkeypatch, no_network):
    import huggingface_hub

    from probes.backbones import hub_unreachable

    assert "unreachable" in hub_unreachable() and len(no_network) == 1  # one attempt, no retries
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: True)
    assert hub_unreachable() == "HF_HUB_OFFLINE is set" and len(no_network) == 1  # not even one attempt


def test_an_uncached_hub_id_offline_fails_at_once_and_says_how_to_pass_a_path(monkeypatch, no_network,
                                                                               empty_hub_cache):
    from probes import backbones

    monkeypatch.setattr(backbones, "hub_unreachable", lambda: "offline for the test")
    with pytest.raises(UserError) as err:
        build_backbone("hf:EleutherAI/pythia-14m")
    text = str(err.value)
    assert "not in the local Hugging Face cache" in text and "offline for the test" in text
    assert "pass hf:DIR" in text and "\n" not in text
    assert no_network == []  # from_pretrained never went to the network


def test_a_cached_hub_id_loads_offline_from_the_cache(monkeypatch, no_network, empty_hub_cache, saved_tiny):
    from probes import backbones

    commit = "0" * 40
    repo = empty_hub_cache / "models--probes-test--tiny"
    _copy_model(saved_tiny, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(backbones, "hub_unreachable", lambda: "offline for the test")
    bb = build_backbone("hf:probes-test/tiny")
    want = build_backbone("pythia-tiny", seed=1).model.state_dict()
    assert all(torch.equal(want[k], v) for k, v in bb.model.state_dict().items())
    assert no_network == []
