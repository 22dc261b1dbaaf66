"""probes.corpus: documents, held-out split, byte / BPE tokenizers, packed windows."""

from __future__ import annotations

import numpy as np
import pytest

from probes.corpus import (
    BYTE_OFFSET,
    EOS_ID,
    PAD_ID,
    Corpus,
    PackedWindows,
    bpe_tokenizer,
    build_corpus,
    byte_tokenizer,
    default_roots,
    find_documents,
    heldout_windows,
    is_heldout,
    join_documents,
    split_documents,
)
from probes.errors import UserError

EXT = [".py", ".md", ".rst", ".txt"]


def write_docs(root, count=12, size=300, seed=0):
    rng = np.random.default_rng(seed)
    words = ["def", "return", "the", "model", "import", "class", "value", "# note", "x = 1"]
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        text = " ".join(rng.choice(words, size // 5))
        (root / f"doc{i:02d}.txt").write_text(text[:size])
    return root


def test_the_byte_tokenizer_maps_byte_b_to_id_b_plus_2_with_specials_first(tmp_path):
    tok = byte_tokenizer()
    assert len(tok) == 258 and tok.eos_token_id == EOS_ID == 0 and tok.pad_token_id == PAD_ID == 1
    text = "héllo\n\tworld ∑ {}"
    ids = tok.encode(text)
    assert ids == [b + 2 for b in text.encode()]
    assert tok.decode(ids) == text
    assert tok.encode("a<|endoftext|>b") == [ord("a") + 2, 0, ord("b") + 2]
    tok.save_pretrained(tmp_path / "tok")
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert again.encode(text) == ids and len(again) == 258


def test_the_fast_byte_path_equals_the_tokenizer():
    from probes.corpus import encode_bytes

    texts = ["plain ascii", "ünïcödé 😀", "\x00\x01 control"]
    fast = encode_bytes(None, [t.encode() for t in texts])
    tok = byte_tokenizer()
    for t, arr in zip(texts, fast):
        assert arr.dtype == np.uint16 and arr.tolist() == tok.encode(t)


def test_bpe_keeps_the_specials_first_and_learns_merges(tmp_path):
    texts = [b"def forward(self, x):\n    return self.linear(x)\n" * 20, b"import torch\nimport numpy\n" * 20]
    tok = bpe_tokenizer(texts, 300)
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|padding|>"]) == [0, 1]
    assert 258 < len(tok) <= 300
    ids = tok.encode("def forward(self, x):")
    assert len(ids) < len("def forward(self, x):")  # merges shorten it
    assert tok.decode(ids) == "def forward(self, x):"


def test_directories_are_walked_in_sorted_order_with_their_extensions_and_a_byte_cap(tmp_path):
    root = write_docs(tmp_path / "c", count=5, size=100)
    (root / "skip.bin").write_bytes(b"\x00" * 50)
    (root / "sub").mkdir()
    (root / "sub" / "a.py").write_text("print(1)\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "x.py").write_text("cached")
    docs = find_documents([str(root)], EXT, 10**9)
    assert [d.name for d in docs] == [f"doc{i:02d}.txt" for i in range(5)] + ["sub/a.py"]
    capped = find_documents([str(root)], EXT, 250)
    assert [d.size for d in capped] == [100, 100, 50]  # the last one is cut to fit
    globbed = find_documents([str(root / "sub" / "*.py"), str(root / "doc00.txt")], EXT, 10**9)
    assert [d.path.name for d in globbed] == ["a.py", "doc00.txt"]


@pytest.mark.parametrize("source, message", [("{tmp}/nope", "does not exist"),
                                             ("{tmp}/*.nothing", "matches no file")])
def test_a_missing_source_is_a_user_error(tmp_path, source, message):
    with pytest.raises(UserError, match=message):
        find_documents([source.format(tmp=tmp_path)], EXT, 100)


def test_the_default_corpus_is_the_installed_packages():
    roots = default_roots()
    assert roots and any("site-packages" in str(r) or "dist-packages" in str(r) for r in roots)
    docs = find_documents([], EXT, 200_000)
    assert docs and sum(d.size for d in docs) == 200_000
    assert all(d.path.suffix in EXT for d in docs)


def test_the_held_out_split_is_a_stable_function_of_the_names(tmp_path):
    names = [f"pkg/module_{i}.py" for i in range(4000)]
    held = [n for n in names if is_heldout(n, 0.05)]
    assert 120 < len(held) < 280  # about 5%
    assert held == [n for n in reversed(names) if is_heldout(n, 0.05)][::-1]
    docs = find_documents([str(write_docs(tmp_path / "c", count=6))], EXT, 10**9)
    train, heldout = split_documents(docs, 0.01)
    assert len(heldout) >= 1 and len(train) >= 1 and len(train) + len(heldout) == 6
    assert split_documents(list(reversed(docs)), 0.01)[1] == heldout


def test_build_corpus_joins_documents_with_end_of_text(tmp_path):
    root = write_docs(tmp_path / "c", count=8, size=200)
    c = build_corpus([str(root)], EXT, 10**9, 0.2, "byte", 0, 65)
    assert c.train.dtype == np.uint16 and c.heldout.dtype == np.uint16
    assert c.meta["documents"] == 8 and c.meta["train_tokens"] + c.meta["heldout_tokens"] == 8 * 201
    assert (c.train == EOS_ID).sum() == c.meta["train_documents"] and c.train[-1] == EOS_ID
    assert c.train.min() >= EOS_ID and c.train[c.train != EOS_ID].min() >= BYTE_OFFSET
    c.save(tmp_path / "saved")
    again = Corpus.load(tmp_path / "saved")
    assert np.array_equal(again.train, c.train) and again.meta == c.meta and len(again.tokenizer) == 258
    assert (tmp_path / "saved" / ".gitignore").read_text() == "*\n"
    assert Corpus.load(tmp_path / "nothing") is None


def test_bad_corpora_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    (empty / "b.bin").write_text("not read")
    with pytest.raises(UserError, match="the corpus is empty"):
        build_corpus([str(empty)], EXT, 10**9, 0.1, "byte", 0, 65)
    root = write_docs(tmp_path / "c", count=4, size=50)
    with pytest.raises(UserError, match="too small"):
        build_corpus([str(root)], EXT, 10**9, 0.1, "byte", 0, 513)
    with pytest.raises(UserError, match="unknown tokenizer 'words' \\(allowed: byte, bpe\\)"):
        build_corpus([str(root)], EXT, 10**9, 0.1, "words", 0, 65)
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.txt").write_text("only one document")
    with pytest.raises(UserError, match="at least 2"):
        build_corpus([str(tmp_path / "one")], EXT, 10**9, 0.1, "byte", 0, 4)


def test_packed_windows_are_a_function_of_seed_and_step():
    tokens = np.arange(1000, dtype=np.uint16)
    w = PackedWindows(tokens, 15, 8, seed=3)
    a, b = w.batch(5), PackedWindows(tokens, 15, 8, seed=3).batch(5)
    assert a.shape == (8, 16) and a.dtype == np.int64 and np.array_equal(a, b)
    assert np.all(np.diff(a, axis=1) == 1)  # contiguous slices of the corpus
    assert not np.array_equal(a, w.batch(6)) and not np.array_equal(a, PackedWindows(tokens, 15, 8, 4).batch(5))
    held = heldout_windows(tokens, 15, 10)
    assert held.shape == (10, 16) and held[0, 0] == 0 and held[-1, -1] == 999
    assert heldout_windows(tokens[:40], 15, 10).shape == (2, 16)


def test_join_documents_of_nothing_is_empty():
    assert len(join_documents([])) == 0
