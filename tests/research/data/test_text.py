"""Tokenizers, corpora, token files and packed windows with segment ids."""

import numpy as np
import pytest

from research.data import (
    ByteTokenizer,
    GPT2Tokenizer,
    TokenWindows,
    load_token_file,
    pack_documents,
    read_text_files,
    shakespeare_documents,
    split_documents,
    text_sources,
    unigram_entropy,
)


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "Fair is foul, and foul is fair — ünïcödé"
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.max() < 256
    assert tok.decode(ids) == text
    with pytest.raises(ValueError, match="tokens must be in"):
        tok.decode([300])


def test_gpt2_tokenizer_from_local_files():
    tok = GPT2Tokenizer()
    ids = tok.encode("Hello world")
    assert list(ids) == [15496, 995]  # GPT-2's ids
    assert tok.decode(ids) == "Hello world"
    assert tok.vocab_size == 50257 and tok.eot_token == 50256


def test_shakespeare_corpus():
    docs = shakespeare_documents()
    assert len(docs) == 38
    assert sum(map(len, docs)) > 4_000_000
    assert any("Macbeth" in d[:200] for d in docs)
    assert "**" not in docs[0]


def test_windows_pack_documents_with_segment_ids():
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 50, size=n) for n in (5, 3, 9)]
    tokens, doc_ids = pack_documents(docs)
    src = TokenWindows(tokens=tokens, doc_ids=doc_ids, seq_len=4, vocab_size=50)
    assert len(src) == (17 - 1) // 4
    ex = src[1]  # stream positions 4..8: doc0 [4], doc1 [5,6,7], doc2 [8]
    np.testing.assert_array_equal(ex["tokens"], tokens[4:8])
    np.testing.assert_array_equal(ex["targets"], tokens[5:9])
    np.testing.assert_array_equal(ex["segment_ids"], [1, 2, 2, 2])
    # the target of the last token of a document belongs to the next one: masked
    np.testing.assert_array_equal(ex["loss_mask"], [False, True, True, False])
    with pytest.raises(IndexError):
        src[len(src)]


def test_eot_segments_and_memory_mapped_token_files(tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 100, size=200).astype(np.uint16)
    arr[[10, 50]] = 999
    arr.tofile(tmp_path / "toks.bin")
    np.save(tmp_path / "toks.npy", arr.astype(np.int32))
    raw = load_token_file(tmp_path / "toks.bin", "uint16")
    npy = load_token_file(tmp_path / "toks.npy")
    assert isinstance(raw, np.memmap)
    np.testing.assert_array_equal(raw, npy)
    src = TokenWindows(tokens=raw, seq_len=16, eot_token=999, vocab_size=1000)
    ex = src[0]  # eot at position 10 ends document 1
    assert ex["segment_ids"][10] == 1 and ex["segment_ids"][11] == 2
    assert not ex["loss_mask"][10] and ex["loss_mask"][9] and ex["loss_mask"][11]
    with pytest.raises(ValueError, match="does not exist"):
        load_token_file(tmp_path / "missing.bin")


def test_text_sources_from_files(tmp_path):
    for i in range(3):
        (tmp_path / f"d{i}.txt").write_text(("To be or not to be. " * 40) + str(i))
    paths = [str(tmp_path / f"d{i}.txt") for i in range(3)]
    assert len(read_text_files(paths)) == 3
    train, val = text_sources("text", seq_len=32, paths=paths, val_fraction=0.1)
    assert len(train) > len(val) > 0
    ex = train[0]
    assert set(ex) == {"tokens", "targets", "loss_mask", "segment_ids"}
    with pytest.raises(ValueError, match="not a file"):
        read_text_files([str(tmp_path / "nope.txt")])


def test_split_and_unigram_entropy():
    docs = [np.arange(100), np.arange(10)]
    train, val = split_documents(docs, 0.1)
    assert [len(d) for d in train] == [90, 9] and [len(d) for d in val] == [10, 1]
    uniform = np.arange(256).repeat(4)
    assert unigram_entropy(uniform, 256) == pytest.approx(np.log(256))
