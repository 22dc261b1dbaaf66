"""probes.vlm.encoders: every tiny preset gives a (B, rows, cols, D) grid, is frozen, and loads
back from a local save_pretrained directory; EVA-02 runs where timm is installed."""

import pytest
import torch

from probes.errors import UserError
from probes.vlm.encoders import ENCODERS, build_encoder

HF_TINY = [name for name, spec in ENCODERS.items() if name.endswith("-tiny") and spec.family != "eva02"]


def test_transformers_vision_towers_need_no_torchvision_or_timm():
    import subprocess
    import sys

    # None in sys.modules makes both packages unimportable (and unfound), installed or not
    code = ("import sys; sys.modules['torchvision'] = None; sys.modules['timm'] = None; import torch; "
            "from probes.vlm.encoders import build_encoder; "
            "[build_encoder(n)(torch.rand(1, 3, 32, 32)) for n in ('siglip-tiny', 'clip-tiny', 'dinov2-tiny')]")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", HF_TINY)
def test_tiny_presets_give_a_frozen_patch_grid(name):
    enc = build_encoder(name, seed=0)
    pixels = torch.rand(2, 3, 48, 48)  # any size: resized to the encoder's 32 px
    feats = enc(pixels)
    assert feats.shape == (2, 4, 4, 32) and enc.grid == (4, 4) and enc.dim == 32
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.model.training  # frozen towers never leave eval mode
    assert torch.equal(build_encoder(name, seed=0)(pixels), feats)  # seeded
    assert not torch.equal(build_encoder(name, seed=1)(pixels), feats)


def test_feature_layer_picks_a_hidden_state_and_is_checked():
    pixels = torch.rand(1, 3, 32, 32)
    last, penultimate = build_encoder("clip-tiny", feature_layer=-1), build_encoder("clip-tiny", feature_layer=-2)
    assert not torch.equal(last(pixels), penultimate(pixels))
    with pytest.raises(UserError, match="feature_layer 5 is outside encoder clip-tiny's 2 layers"):
        build_encoder("clip-tiny", feature_layer=5)


def test_a_saved_tower_loads_back_by_path(tmp_path):
    enc = build_encoder("siglip-tiny", seed=3)
    enc.model.save_pretrained(tmp_path / "tower")
    loaded = build_encoder(f"hf:{tmp_path / 'tower'}")
    pixels = torch.rand(1, 3, 32, 32)
    assert loaded.family == "siglip" and torch.allclose(loaded(pixels), enc(pixels))


@pytest.mark.parametrize("name, message", [
    ("vit-huge", "unknown encoder 'vit-huge' (known: siglip-tiny, clip-tiny"),
    ("hf:", "unknown encoder 'hf:'"),
])
def test_unknown_encoders_list_the_known(name, message):
    with pytest.raises(UserError) as err:
        build_encoder(name)
    assert message in str(err.value)


def test_hf_path_without_a_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot load its config"):
        build_encoder(f"hf:{tmp_path}")


def test_eva02_without_timm_says_how_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("no timm")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(UserError, match=r"EVA-02 needs timm: pip install probes\[vlm\]"):
        build_encoder("eva02-tiny")


def test_eva02_tiny_gives_a_frozen_patch_grid():
    pytest.importorskip("timm")
    enc = build_encoder("eva02-tiny", seed=0)
    feats = enc(torch.rand(2, 3, 32, 32))
    assert feats.shape == (2, 4, 4, 32) and not any(p.requires_grad for p in enc.parameters())
    assert not torch.equal(build_encoder("eva02-tiny", feature_layer=-1)(torch.ones(1, 3, 32, 32)),
                           enc(torch.ones(1, 3, 32, 32)))


def test_published_towers_have_the_papers_grids():
    grids = {name: (s.image_size // s.config.get("patch_size", 14)) for name, s in ENCODERS.items()
             if not name.endswith("-tiny")}
    assert grids == {"siglip-so400m": 27, "clip-l14-336": 24, "dinov2-l14": 16, "eva02-l14-336": 24}


@pytest.mark.parametrize("name", HF_TINY)
def test_another_input_resolution_gives_a_larger_grid(name):
    enc = build_encoder(name, image_size=48)
    assert enc(torch.rand(1, 3, 48, 48)).shape == (1, 6, 6, 32) and enc.grid == (6, 6)
    assert build_encoder(name, image_size=50).grid == (6, 6)  # patches floor, as the strided convolution
    with pytest.raises(UserError, match="smaller than"):
        build_encoder(name, image_size=4)


def test_an_uncached_hub_encoder_offline_fails_at_once_with_one_line(monkeypatch, no_network, empty_hub_cache):
    from probes.vlm import encoders

    monkeypatch.setattr(encoders, "hub_unreachable", lambda: "offline for the test")
    with pytest.raises(UserError) as err:
        build_encoder("hf:google/siglip-base-patch16-224")
    text = str(err.value)
    assert "offline for the test" in text and "pass hf:DIR" in text and "\n" not in text
    assert no_network == []  # from_pretrained never went to the network
