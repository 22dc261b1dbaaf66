"""probes.vlm.model: every token and shape of the assembled sequence, the text codec, the image
slots, the per-sequence loss and greedy decoding (cached = full recompute)."""

import pytest
import torch

from probes.vlm.config import VLMTrainConfig
from probes.vlm.data import SyntheticScenes, to_pixels
from probes.vlm.grounding import format_box
from probes.vlm.model import (
    IGNORE,
    MARKERS,
    PATCH,
    ByteCodec,
    Markers,
    SequenceBuilder,
    build_vlm,
    greedy,
    greedy_reference,
    make_batch,
    max_answer_tokens,
)

M = Markers(image_start=1001, image_end=1002, row_sep=1003)
EOS = 0
BOX = (0.125, 0.5, 0.25, 0.75)  # "[0.12, 0.50, 0.25, 0.75]"


def builder(layout="task-agnostic", row_sep="after", instruction="Find"):
    return SequenceBuilder(ByteCodec(), M, EOS, layout, row_sep, instruction)


def test_byte_codec_uses_the_gpt_neox_single_byte_ids():
    codec = ByteCodec()
    assert codec.encode("!") == [2] and codec.encode("~") == [2 + 93]  # printable ASCII from id 2
    assert codec.encode(" ") == [2 + 188 + 32] and codec.encode("\n") == [2 + 188 + 10]  # GPT-2: Ġ=220, Ċ=198
    text = "the small red circle\n[0.12, 0.50, 0.25, 0.75] é"
    assert codec.decode(codec.encode(text)) == text
    assert codec.decode([1001]) == "\ufffd"  # a marker or any non-byte id never decodes as text


@pytest.mark.parametrize("layout, expected", [
    ("task-agnostic", "<img> p p p <row> p p p <row> </img> Find\\nthe red circle\\n"),
    ("task-aware", "Find\\n <img> p p p <row> p p p <row> </img> the red circle\\n"),
    ("query-first", "Find\\nthe red circle\\n <img> p p p <row> p p p <row> </img>"),
])
def test_layouts_place_instruction_expression_and_image(layout, expected):
    b = builder(layout)
    assert b.render(b.prompt("the red circle", 2, 3)) == expected


@pytest.mark.parametrize("row_sep, expected", [
    ("after", "<img> p p <row> p p <row> p p <row> </img>"),
    ("between", "<img> p p <row> p p <row> p p </img>"),
    ("none", "<img> p p p p p p </img>"),
])
def test_row_separators(row_sep, expected):
    assert builder(row_sep=row_sep).render(builder(row_sep=row_sep).image(3, 2)) == expected


def test_image_tokens_are_exact_ids():
    assert builder().image(2, 2) == [1001, PATCH, PATCH, 1003, PATCH, PATCH, 1003, 1002]


def test_answer_is_the_box_text_then_end_of_text():
    b = builder()
    assert b.render(b.answer(BOX)) == "[0.12, 0.50, 0.25, 0.75] <eos>"
    assert len(b.answer(BOX)) == 25 and max_answer_tokens(b) == 27
    assert builder(instruction="").render(builder(instruction="").prompt("x", 1, 1)) == "<img> p <row> </img> x\\n"


def test_batch_inputs_and_targets_line_up_on_the_answer_only():
    b = builder()
    exprs = ["the red circle", "a"]
    batch = make_batch(b, torch.zeros(2, 3, 8, 8), exprs, [BOX, (0, 0, 1, 1)], 2, 3)
    prompts = [b.prompt(e, 2, 3) for e in exprs]
    full = [p + b.answer(x) for p, x in zip(prompts, [BOX, (0, 0, 1, 1)])]
    length = max(len(f) for f in full) - 1
    assert batch.ids.shape == batch.targets.shape == (2, length)
    for i, (p, f) in enumerate(zip(prompts, full)):
        ids, tgt = batch.ids[i].tolist(), batch.targets[i].tolist()
        assert ids[:len(f) - 1] == f[:-1] and all(t == EOS for t in ids[len(f) - 1:])  # right padding
        scored = [t for t in tgt if t != IGNORE]
        assert scored == b.answer([BOX, (0, 0, 1, 1)][i])  # the box text and <eos>, nothing else
        first = tgt.index(scored[0])
        assert first == len(p) - 1  # the last prompt token predicts the first answer token
        assert all(tgt[t] == f[t + 1] for t in range(first, len(f) - 1))
        assert (batch.ids[i] == PATCH).sum() == 6


@pytest.fixture(scope="module")
def vlm():
    cfg = VLMTrainConfig(model="pythia-tiny", encoder="clip-tiny", instruction="Find", seed=0)
    return build_vlm(cfg)


@pytest.fixture(scope="module")
def scenes():
    split = SyntheticScenes(0, 3, 32)
    exs = [split[i] for i in range(3)]
    return to_pixels([e.image for e in exs], 32), [e.expression for e in exs], [e.box for e in exs]


def test_markers_are_new_rows_after_the_vocabulary(vlm):
    base = vlm.backbone.base_vocab
    m = vlm.builder.markers
    assert (m.image_start, m.image_end, m.row_sep) == (base, base + 1, base + 2)
    assert vlm.backbone.added_tokens == list(MARKERS) and vlm.lm.get_input_embeddings().num_embeddings == base + 3


def test_image_embeddings_fill_the_patch_slots_in_row_major_order(vlm, scenes):
    pixels, exprs, boxes = scenes
    batch = make_batch(vlm.builder, pixels, exprs, boxes, *vlm.grid)
    visual = vlm.visual(pixels)
    assert visual.shape == (3, 4, 4, 128) and vlm.grid == (4, 4)
    emb = vlm.embed(batch.ids, visual)
    assert emb.shape == (*batch.ids.shape, 128)
    table = vlm.lm.get_input_embeddings().weight
    for i in range(3):
        slots = (batch.ids[i] == PATCH).nonzero().flatten()
        assert torch.equal(emb[i, slots], visual[i].reshape(16, 128))
        text = (batch.ids[i] != PATCH).nonzero().flatten()
        assert torch.equal(emb[i, text], table[batch.ids[i, text]])


def test_loss_is_each_sequences_mean_then_the_batch_mean(vlm, scenes):
    pixels, exprs, boxes = scenes
    batch = make_batch(vlm.builder, pixels, exprs, boxes, *vlm.grid)
    loss, per_seq = vlm.loss(batch)
    logits = vlm.lm(inputs_embeds=vlm.embed(batch.ids, vlm.visual(pixels))).logits
    expected = []
    for i in range(3):
        keep = batch.targets[i] != IGNORE
        expected.append(torch.nn.functional.cross_entropy(logits[i][keep], batch.targets[i][keep]))
    assert torch.allclose(per_seq, torch.stack(expected), atol=1e-5)
    assert torch.allclose(loss, torch.stack(expected).mean(), atol=1e-5)


def test_two_encoders_make_a_long_sequence_of_both_maps():
    cfg = VLMTrainConfig(model="pythia-tiny", encoder="dinov2-tiny", encoder2="siglip-tiny",
                         connector="mamba-projector")
    model = build_vlm(cfg)
    assert model.grid == (8, 4)
    assert model.visual(torch.rand(2, 3, 32, 32)).shape == (2, 8, 4, 128)
    assert model.builder.render(model.builder.image(*model.grid)).count("<row>") == 8


@pytest.mark.parametrize("name", ["pythia-tiny", "mamba-tiny"])
def test_cached_greedy_decoding_equals_full_recompute(name, scenes):
    cfg = VLMTrainConfig(model=name, encoder="siglip-tiny", instruction="", seed=1)
    model = build_vlm(cfg).eval()
    pixels, exprs, _ = scenes
    fast = model.generate(pixels, exprs, 6)
    slow = model.generate(pixels, exprs, 6, use_cache=False)
    assert fast == slow and len(fast) == 3
    rows, cols = model.grid
    ids = torch.tensor([model.builder.prompt(exprs[0], rows, cols)])
    emb = model.embed(ids, model.visual(pixels[:1]))
    assert greedy(model.lm, emb, 6, 10**6) == greedy_reference(model.lm, emb, 6, 10**6)  # no early stop
    assert len(greedy_reference(model.lm, emb, 6, 10**6)[0]) == 6


def test_answer_text_round_trips_through_the_codec(vlm):
    answer = vlm.builder.answer(BOX)
    assert vlm.builder.codec.decode(answer[:-1]) == format_box(BOX) and answer[-1] == vlm.backbone.eos_id


def test_a_users_hf_backbone_works_in_the_vlm(tmp_path):
    from probes.backbones import build_backbone

    build_backbone("mamba-tiny", seed=5).model.save_pretrained(tmp_path / "lm")
    model = build_vlm(VLMTrainConfig(model=f"hf:{tmp_path / 'lm'}", connector="vss-mlp", instruction=""))
    assert model.backbone.family == "mamba" and model.builder.markers.image_start == 1024
    pixels = torch.rand(1, 3, 32, 32)
    batch = make_batch(model.builder, pixels, ["the red circle"], [BOX], *model.grid)
    assert torch.isfinite(model.loss(batch)[0])
