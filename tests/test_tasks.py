"""probes.tasks: the grounding task exactly as SPEC §1 states it, checked on decoded examples."""

import dataclasses
import json

import numpy as np
import pytest

from probes import tasks
from probes.config import DataConfig, TokenConfig
from probes.errors import UserError
from probes.tasks import Split, TokenLayout


def small(**kw) -> DataConfig:
    return DataConfig(**{"n": 6, "train_size": 600, "eval_size": 120, "seed": 3, **kw})


@pytest.fixture(scope="module")
def ds():
    return tasks.generate(small())


def decode(ids: np.ndarray, layout: TokenLayout) -> list[str]:
    """Token ids back to names, the inverse of TokenLayout, written independently of it."""
    names = []
    for t in ids.tolist():
        if t >= layout.base_vocab + layout.n:
            names.append({0: "<out>", 1: "<sep>"}[t - layout.base_vocab - layout.n])
        elif t >= layout.base_vocab:
            names.append(f"<s_{t - layout.base_vocab}>")
        else:
            names.append(f"<a_{int(np.flatnonzero(layout.answer_ids == t)[0])}>")
    return names


# === Examples ===


def test_every_context_is_a_permutation_of_the_n_special_tokens(ds):
    for split in (ds.train, ds.heldout):
        assert (np.sort(split.context, axis=1) == np.arange(6)).all()


def test_query_sits_at_the_target_position(ds):
    for split in (ds.train, ds.heldout):
        rows = np.arange(len(split))
        assert (split.context[rows, split.target_position] == split.query).all()


def test_suffix_example_decodes_token_by_token():
    split = Split(np.array([[3, 0, 1, 2]], np.int16), np.array([1], np.int16), np.array([2], np.int16))
    layout = TokenLayout.build(4, "suffix", base_vocab=100, tokens=TokenConfig(), eos_id=0)
    ids, answer = layout.encode(split)
    assert decode(ids[0], layout) == ["<s_3>", "<s_0>", "<s_1>", "<s_2>", "<out>", "<s_1>", "<a_2>"]
    assert ids[0].tolist() == [103, 100, 101, 102, 104, 101, 4]  # answer(2) = id 2 + 2
    assert answer.tolist() == [4]
    assert ids[0, layout.answer_slot] == 101  # the query token predicts the answer
    assert layout.seq_len == 4 + 3


def test_prefix_example_decodes_token_by_token():
    split = Split(np.array([[3, 0, 1, 2]], np.int16), np.array([1], np.int16), np.array([2], np.int16))
    layout = TokenLayout.build(4, "prefix", base_vocab=100, tokens=TokenConfig(), eos_id=0)
    ids, _ = layout.encode(split)
    assert decode(ids[0], layout) == ["<out>", "<s_1>", "<sep>", "<s_3>", "<s_0>", "<s_1>", "<s_2>", "<a_2>"]
    assert ids[0, layout.answer_slot] == 102  # the last context token predicts the answer
    assert layout.seq_len == 4 + 4


def test_paper_length_for_n200_suffix_is_203():
    layout = TokenLayout.build(200, "suffix", base_vocab=50304, tokens=TokenConfig(), eos_id=0)
    assert layout.seq_len == 203
    assert layout.n_new_tokens == 202


def test_answer_ids_can_be_given_explicitly():
    layout = TokenLayout.build(3, "suffix", 50, TokenConfig(answer_ids=[7, 9, 11]), eos_id=0)
    assert layout.answer_ids.tolist() == [7, 9, 11]
    with pytest.raises(UserError, match="3 distinct ids"):
        TokenLayout.build(3, "suffix", 50, TokenConfig(answer_ids=[7, 7, 11]), eos_id=0)


def test_answer_ids_must_fit_the_vocabulary():
    with pytest.raises(UserError, match="do not fit the model's vocabulary of 20"):
        TokenLayout.build(30, "suffix", 20, TokenConfig(), eos_id=0)


def test_preview_lines_have_the_spec_format(ds):
    line = tasks.render_example(np.array([3, 0, 1, 2]), 1, 2, "suffix")
    assert line == "<s_3> <s_0> <s_1> <s_2> <out> <s_1> => <a_2>"
    line = tasks.render_example(np.array([3, 0, 1, 2]), 1, 2, "prefix")
    assert line == "<out> <s_1> <sep> <s_3> <s_0> <s_1> <s_2> => <a_2>"
    assert len(tasks.preview(ds.train, "suffix", 5)) == 5


# === Balance, disjointness, determinism ===


@pytest.mark.parametrize("size", [600, 601, 605, 6 * 7 - 1])
def test_targets_are_balanced_over_positions(size):
    ds = tasks.generate(small(train_size=size, eval_size=size + 2))
    for split in (ds.train, ds.heldout):
        counts = np.bincount(split.target_position, minlength=6)
        assert counts.max() - counts.min() <= 1
        assert counts.min() == len(split) // 6


def test_heldout_shares_no_context_query_pair_with_training():
    # n=4 has only 4! * 4 = 96 distinct examples: collisions are certain and must be redrawn
    ds = tasks.generate(DataConfig(n=4, train_size=400, eval_size=20, seed=1))
    assert ds.resampled > 0
    assert ds.shared_pairs == 0
    train = {(tuple(c), q) for c, q in zip(ds.train.context.tolist(), ds.train.query.tolist())}
    held = {(tuple(c), q) for c, q in zip(ds.heldout.context.tolist(), ds.heldout.query.tolist())}
    assert not train & held


def test_shared_pair_check_counts_overlap():
    a = tasks.generate_split(5, 50, seed=0)
    b = Split(a.context[:7].copy(), a.query[:7].copy(), a.target_position[:7].copy())
    assert tasks.count_shared_pairs(b, a) == 7
    assert tasks.count_shared_pairs(a, b) >= 7  # duplicates inside `a` count too


def test_redrawing_keeps_balance():
    ds = tasks.generate(DataConfig(n=4, train_size=401, eval_size=20, seed=1))
    counts = np.bincount(ds.train.target_position, minlength=4)
    assert counts.max() - counts.min() <= 1


def test_impossible_disjointness_is_a_user_error():
    with pytest.raises(UserError, match="too small"):
        tasks.generate(DataConfig(n=2, train_size=10, eval_size=10))


def test_same_seed_gives_the_same_data_and_another_seed_does_not():
    a, b, c = tasks.generate(small()), tasks.generate(small()), tasks.generate(small(seed=4))
    assert np.array_equal(a.train.context, b.train.context)
    assert np.array_equal(a.heldout.context, b.heldout.context)
    assert not np.array_equal(a.train.context, c.train.context)


def test_heldout_depends_only_on_its_own_seed_not_on_training():
    a = tasks.generate(small(train_size=600))
    b = tasks.generate(small(train_size=900, seed=5, heldout_seed=a.config.effective_heldout_seed))
    assert np.array_equal(a.heldout.context, b.heldout.context)


# === On disk ===


def test_save_and_load_round_trip(tmp_path, ds):
    tasks.save_dataset(ds, tmp_path / "d")
    back = tasks.load_dataset(tmp_path / "d")
    assert tasks.dataset_identity(back.config) == tasks.dataset_identity(ds.config)
    for name in tasks.SPLITS:
        for field in ("context", "query", "target_position"):
            assert np.array_equal(getattr(getattr(back, name), field), getattr(getattr(ds, name), field))
    with np.load(tmp_path / "d" / "train.npz") as z:
        assert set(z.files) == {"context", "query", "target_position"}
        assert z["context"].shape == (600, 6)


def test_out_dir_with_a_different_dataset_is_refused(tmp_path, ds):
    tasks.save_dataset(ds, tmp_path / "d")
    assert tasks.check_out_dir(tmp_path / "d", ds.config) is True  # same dataset: nothing to do
    with pytest.raises(UserError, match="different dataset"):
        tasks.check_out_dir(tmp_path / "d", small(n=7))
    assert tasks.check_out_dir(tmp_path / "d", small(n=7), overwrite=True) is False


def test_missing_or_damaged_dataset_is_a_user_error(tmp_path, ds):
    with pytest.raises(UserError, match="no dataset"):
        tasks.load_dataset(tmp_path / "nothing")
    tasks.save_dataset(ds, tmp_path / "d")
    (tmp_path / "d" / "heldout.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="damaged"):
        tasks.load_dataset(tmp_path / "d")


# === Validation on load: a corrupted dataset is one line naming the file and the first bad row ===


def _rewrite(out, split_name, **arrays):
    with np.load(out / f"{split_name}.npz") as z:
        data = {k: z[k] for k in ("context", "query", "target_position")}
    data.update({k: v(data) if callable(v) else v for k, v in arrays.items()})
    np.savez(out / f"{split_name}.npz", **data)


def _set_row(key, row, value):
    def change(data):
        arr = data[key].copy()
        arr[row] = value
        return arr
    return change


def _swap_first_two(data):
    ctx = data["context"].copy()
    ctx[5, 0] = ctx[5, 1]  # a token twice in row 5
    return ctx


def _meta(out, **changes):
    import json

    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, **changes}))


CORRUPTIONS = [
    ("negative index", lambda d: _rewrite(d, "train", context=_set_row("context", 3, -1)),
     r"train.npz is invalid: context holds a token index outside 0..5, first at row 3"),
    ("index too large", lambda d: _rewrite(d, "heldout", context=_set_row("context", 2, 99)),
     r"heldout.npz is invalid: context holds a token index outside 0..5, first at row 2"),
    ("duplicate token", lambda d: _rewrite(d, "train", context=_swap_first_two),
     r"train.npz is invalid: context row is not a permutation .*first at row 5"),
    ("floats", lambda d: _rewrite(d, "train", context=lambda x: x["context"].astype(np.float32)),
     r"train.npz is invalid: context has dtype float32 \(allowed: integers\)"),
    ("query shorter than context", lambda d: _rewrite(d, "train", query=lambda x: x["query"][:-1]),
     r"train.npz is invalid: query has shape \(599,\), expected \(600,\)"),
    ("target does not match query", lambda d: _rewrite(
        d, "train", target_position=lambda x: (x["target_position"] + 1) % 6),
     r"train.npz is invalid: query is not the token at target_position, first at row 0"),
    ("unbalanced targets", lambda d: _rewrite(d, "train", **_unbalanced(_train(d))),
     r"train.npz is invalid: targets are not balanced: position 0 is the target of 0 rows \(expected 100\)"),
    ("held-out copied from training", lambda d: [
        _rewrite(d, "heldout", **{k: (lambda x, k=k: _train(d)[k][:60]) for k in ("context", "query",
                                                                                    "target_position")})],
     r"(heldout.npz is invalid: targets are not balanced|rows also occur in heldout.npz)"),
    ("wrong train_size in meta", lambda d: _meta(d, train_size=500), r"train.npz is invalid: 600 rows but meta.json says 500"),
    ("wrong n in meta", lambda d: _meta(d, n=7), r"train.npz is invalid: context has shape \(600, 6\)"),
    ("shared_pairs in meta", lambda d: _meta(d, shared_pairs=3), r"rows also occur in heldout.npz but meta.json says 3"),
    ("meta not an object", lambda d: (d / "meta.json").write_text("[1, 2]"), r"meta.json is damaged"),
    ("meta bad layout", lambda d: _meta(d, layout="sideways"), r"meta.json is damaged \(layout"),
    ("empty split file", lambda d: (d / "heldout.npz").write_bytes(b""), r"heldout.npz is missing or damaged"),
]


def _train(out):
    with np.load(out / "train.npz") as z:
        return {k: z[k] for k in ("context", "query", "target_position")}


def _unbalanced(data):
    """Rows whose target is position 0 become target 1, their query following: consistent, unbalanced."""
    target = data["target_position"].copy()
    target[target == 0] = 1
    query = np.take_along_axis(data["context"], target[:, None].astype(np.intp), axis=1)[:, 0]
    return {"target_position": target, "query": query}


@pytest.mark.parametrize("name, corrupt, expected", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_a_corrupted_dataset_is_refused_on_load(tmp_path, name, corrupt, expected):
    out = tmp_path / "d"
    tasks.save_dataset(tasks.generate(DataConfig(n=6, train_size=600, eval_size=60)), out)
    tasks.load_dataset(out)  # valid before
    corrupt(out)
    with pytest.raises(UserError, match=expected) as info:
        tasks.load_dataset(out)
    assert "\n" not in str(info.value)


def test_a_killed_generate_leaves_a_directory_the_rerun_completes(tmp_path):
    cfg = DataConfig(n=4, train_size=40, eval_size=8)
    out = tmp_path / "d"
    tasks.save_dataset(tasks.generate(cfg), out)
    (out / "meta.json").unlink()  # killed after both splits, before meta.json
    (out / ".heldout.npz.tmp").write_bytes(b"partial")
    assert tasks.check_out_dir(out, cfg) is False  # not refused: written again
    assert tasks.generate_into(cfg, out) is not None
    assert sorted(p.name for p in out.iterdir()) == [".lock", "heldout.npz", "meta.json", "train.npz"]
    assert tasks.generate_into(cfg, out) is None  # now complete: nothing to do


def test_two_generates_into_one_directory_cannot_overlap(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    holder = ("import sys, time; from probes import locks\n"
              "with locks.hold(sys.argv[1], what='dataset'):\n    print('held', flush=True); time.sleep(60)")
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path / "d")], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": root})  # a generate in progress
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"in use by dataset writer PID {proc.pid}"):
            tasks.generate_into(DataConfig(n=4, train_size=40, eval_size=8, seed=7), tmp_path / "d")
    finally:
        proc.kill()
        proc.wait()
    assert not (tmp_path / "d" / "meta.json").exists()


def test_a_damaged_dataset_is_not_reported_as_already_there(tmp_path):
    cfg = DataConfig(n=4, train_size=40, eval_size=8)
    out = tmp_path / "d"
    tasks.generate_into(cfg, out)
    (out / "train.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(UserError, match=r"train.npz is missing or damaged .*--overwrite"):
        tasks.generate_into(cfg, out)
    assert tasks.generate_into(cfg, out, overwrite=True) is not None
    tasks.load_dataset(out)


# === Generator versions: exact balance above 32,768 rows (version 2), version 1 kept ===


def test_version_2_targets_are_exactly_balanced_above_32768_rows():
    for size in (32_769, 40_000, 100_003):
        counts = np.bincount(tasks.balanced_targets(7, size, np.random.default_rng(0), version=2), minlength=7)
        assert counts.max() - counts.min() <= 1 and counts.sum() == size
        assert np.array_equal(counts, tasks.expected_target_counts(7, size, version=2))
    v1 = tasks.expected_target_counts(7, 100_003, version=1)  # the int16 wrap-around, as datasets had it
    assert v1.max() - v1.min() > 1
    assert np.array_equal(v1, np.bincount(np.arange(100_003, dtype=np.int16) % 7, minlength=7))


def test_versions_1_and_2_write_the_same_bytes_up_to_32768_rows():
    cfg = DataConfig(n=6, train_size=32_768, eval_size=600)
    a, b = tasks.generate(cfg, version=1), tasks.generate(cfg, version=2)
    for name in tasks.SPLITS:
        for field in ("context", "query", "target_position"):
            x, y = getattr(getattr(a, name), field), getattr(getattr(b, name), field)
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes()


def test_generate_into_writes_the_current_version_and_old_datasets_still_load(tmp_path):
    cfg = DataConfig(n=7, train_size=33_000, eval_size=700)
    tasks.generate_into(cfg, tmp_path / "new")
    assert json.loads((tmp_path / "new" / "meta.json").read_text())["generator_version"] == tasks.GENERATOR_VERSION == 2
    counts = np.bincount(tasks.load_dataset(tmp_path / "new").train.target_position, minlength=7)
    assert counts.max() - counts.min() <= 1
    old = tmp_path / "old"  # written before versions: version 1 targets, no generator_version in meta.json
    tasks.save_dataset(tasks.generate(cfg, version=1), old)
    _meta_without(old, "generator_version")
    assert tasks.load_dataset(old).generator_version == 1  # validated against version 1's counts
    assert tasks.generate_into(cfg, old) is None  # the same dataset: kept, not silently regenerated
    _meta(old, generator_version=9)
    with pytest.raises(UserError, match="generator_version 9; this version of probes reads 1, 2"):
        tasks.load_dataset(old)


def test_imported_data_has_no_balance_invariant(tmp_path):
    out = tmp_path / "d"
    ds = tasks.generate(DataConfig(n=9, train_size=600, eval_size=60))  # n=9: no rows in common after _unbalanced
    tasks.save_dataset(dataclasses.replace(ds, generator_version=None), out)
    _rewrite(out, "train", **_unbalanced(_train(out)))
    assert tasks.load_dataset(out).generator_version is None  # loads: not generated here


def _meta_without(out, key):
    meta = json.loads((out / "meta.json").read_text())
    del meta[key]
    (out / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("rows", [[537], [12, 537], [0, 599]])
def test_the_first_bad_row_is_reported_across_blocks_of_the_permutation_check(tmp_path, monkeypatch, rows):
    monkeypatch.setattr(tasks, "_CHUNK_VALUES", 60)  # n=6: blocks of 10 rows, so the bad rows sit in later blocks
    out = tmp_path / "d"
    tasks.save_dataset(tasks.generate(DataConfig(n=6, train_size=600, eval_size=60)), out)

    def duplicate(data):
        ctx = data["context"].copy()
        ctx[rows, 0] = ctx[rows, 1]
        return ctx

    _rewrite(out, "train", context=duplicate)
    with pytest.raises(UserError, match=rf"not a permutation .*first at row {rows[0]};"):
        tasks.load_dataset(out)
