"""Data pipelines: grain loaders over any random-access source, text corpora and tokenizers,
packing with segment ids. See `research.data.loader` and `research.data.text`."""

from research.data.loader import batch_tokens, eval_batches, train_dataset
from research.data.sources import build_sources, task_class
from research.data.text import (
    ByteTokenizer,
    GPT2Tokenizer,
    TokenWindows,
    get_tokenizer,
    load_token_file,
    pack_documents,
    read_text_files,
    shakespeare_documents,
    split_documents,
    text_sources,
    unigram_entropy,
)

__all__ = [
    "ByteTokenizer", "GPT2Tokenizer", "TokenWindows", "batch_tokens", "build_sources",
    "eval_batches", "get_tokenizer", "load_token_file", "pack_documents", "read_text_files",
    "shakespeare_documents", "split_documents", "task_class", "text_sources", "train_dataset",
    "unigram_entropy",
]
