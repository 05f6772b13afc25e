"""Data: corpora and their split, tokenizers, the tokenised on-disk cache."""

from .cache import TokenData, default_cache_dir, prepare_data
from .corpus import SPLITS, Corpus, load_corpus
from .tokenizer import KINDS as TOKENIZERS
from .tokenizer import Tokenizer, build_tokenizer

__all__ = ["Corpus", "SPLITS", "TOKENIZERS", "TokenData", "Tokenizer", "build_tokenizer", "default_cache_dir", "load_corpus", "prepare_data"]
