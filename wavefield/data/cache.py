"""Tokenised corpora cached on disk as memory-mapped integer arrays (nanoGPT's .bin files):

    <cache>/<key>/tokenizer.json   the tokenizer the arrays were made with
    <cache>/<key>/{train,val,test}.bin   uint16 (vocab <= 65536) or uint32 token ids
    <cache>/<key>/meta.json        dtype, token and UTF-8 byte counts per split

The key hashes the corpus content (and its split) with the tokenizer choice, so a second run
on the same data starts at once and a changed file is never served stale; a link keyed by
the tokenizer's own fingerprint lets eval find the entry from a checkpoint's tokenizer. An entry is written
into a temporary folder and renamed into place whole.
"""

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .corpus import SPLITS, Corpus
from .tokenizer import Tokenizer, build_tokenizer

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    if os.environ.get("WAVEFIELD_CACHE"):
        return Path(os.environ["WAVEFIELD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "wavefield"


class TokenData:
    """The token arrays of one corpus + tokenizer: .tokens[split] is a read-only memmap."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.meta = json.loads((folder / "meta.json").read_text())
        self.tokenizer = Tokenizer.load(folder)
        self.tokens = {s: np.memmap(folder / f"{s}.bin", dtype=self.meta["dtype"], mode="r") for s in SPLITS}

    def bytes_per_token(self, split: str) -> float:
        return self.meta["bytes"][split] / max(self.meta["tokens"][split], 1)


def tokenize_corpus(corpus: Corpus, tokenizer: Tokenizer, folder: Path):
    """Write each split as one stream: documents joined by the separator token."""
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    meta = {"cache_version": CACHE_VERSION, "corpus": corpus.name, "corpus_digest": corpus.digest(),
            "tokenizer_fingerprint": tokenizer.fingerprint(), "vocab_size": tokenizer.vocab_size,
            "dtype": np.dtype(dtype).name, "tokens": {}, "bytes": {}}
    for split in SPLITS:
        docs = tokenizer.encode_batch(corpus.splits[split])
        ids = np.fromiter((t for d in docs for t in (*d, tokenizer.eos_id)), dtype=dtype)  # (T,)
        ids.tofile(folder / f"{split}.bin")
        meta["tokens"][split] = int(ids.size)
        meta["bytes"][split] = sum(len(t.encode()) for t in corpus.splits[split])
    tokenizer.save(folder)
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))


def prepare_data(corpus: Corpus, kind: str = "bpe", vocab_size: int = 8192, cache_dir=None, tokenizer: Tokenizer | None = None) -> TokenData:
    """Tokenise `corpus` with `tokenizer` (or a new one of `kind`), reusing the cache when it can."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    recipe = tokenizer.fingerprint() if tokenizer is not None else f"{kind}-{vocab_size if kind == 'bpe' else ''}"
    folder = cache_dir / cache_key(corpus, recipe)
    if (folder / "meta.json").is_file():
        return TokenData(folder)
    if tokenizer is None:
        tokenizer = build_tokenizer(kind, corpus.splits["train"], vocab_size)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=cache_dir))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private
    try:
        tokenize_corpus(corpus, tokenizer, tmp)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process filled this entry first: theirs is as good
            if not (folder / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    alias = cache_dir / cache_key(corpus, tokenizer.fingerprint())  # found again from a checkpoint's tokenizer
    if alias != folder and not alias.exists():
        try:
            alias.symlink_to(folder.name)
        except OSError:  # a race or a file system without links: the alias is only a shortcut
            pass
    return TokenData(folder)


def cache_key(corpus: Corpus, recipe: str) -> str:
    return hashlib.sha256(f"v{CACHE_VERSION}\0{corpus.digest()}\0{recipe}".encode()).hexdigest()[:24]
