"""Tokenised corpora cached on disk as memory-mapped integer arrays (nanoGPT's .bin files):

    <cache>/<key>/tokenizer.json   the tokenizer the arrays were made with
    <cache>/<key>/{train,val,test}.bin   uint16 (vocab <= 65536) or uint32 token ids
    <cache>/<key>/meta.json        dtype, token and UTF-8 byte counts per split, and the
                                   size and sha256 of each .bin and of tokenizer.json

The key hashes the corpus content (and its split) with the tokenizer choice, so a second run
on the same data starts at once and a changed file is never served stale; a link keyed by
the tokenizer's own fingerprint lets eval find the entry from a checkpoint's tokenizer.

An entry is written into a temporary folder and renamed into place whole: two processes that
fill the same entry at once both succeed, the second finds the first's entry and uses it. An
entry is verified each time it is opened (sizes, then one sha256 pass over its files: about a
second per GB, nothing next to tokenising); a truncated, corrupted or incomplete entry is
never read as data but rebuilt. A write that fails (a full disk) leaves no entry behind.
"""

import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .corpus import SPLITS, Corpus
from .tokenizer import TOKENIZER_NAME, Tokenizer, build_tokenizer

CACHE_VERSION = 2  # 2: meta.json holds the size and sha256 of every file


def default_cache_dir() -> Path:
    if os.environ.get("WAVEFIELD_CACHE"):
        return Path(os.environ["WAVEFIELD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "wavefield"


class TokenData:
    """The token arrays of one corpus + tokenizer: .tokens[split] is a read-only memmap.
    Open only a folder that verify_entry() passed."""

    def __init__(self, folder: Path, meta: dict):
        self.folder = folder
        self.meta = meta
        self.tokenizer = Tokenizer.load(folder)
        self.tokens = {s: np.memmap(folder / f"{s}.bin", dtype=self.meta["dtype"], mode="r") for s in SPLITS}

    def bytes_per_token(self, split: str) -> float:
        return self.meta["bytes"][split] / max(self.meta["tokens"][split], 1)


def tokenize_corpus(corpus: Corpus, tokenizer: Tokenizer, folder: Path) -> dict:
    """Write each split as one stream, documents joined by the separator token; returns meta.json's content."""
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    meta = {
        "cache_version": CACHE_VERSION,
        "corpus": corpus.name,
        "corpus_digest": corpus.digest(),
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "vocab_size": tokenizer.vocab_size,
        "dtype": np.dtype(dtype).name,
        "tokens": {},
        "bytes": {},
    }
    for split in SPLITS:
        docs = tokenizer.encode_batch(corpus.splits[split])
        ids = np.fromiter((t for d in docs for t in (*d, tokenizer.eos_id)), dtype=dtype)  # (T,)
        with open(folder / f"{split}.bin", "wb") as f:  # not ndarray.tofile: its OSError loses the errno (ENOSPC, EFBIG)
            f.write(memoryview(ids))
        meta["tokens"][split] = int(ids.size)
        meta["bytes"][split] = sum(len(t.encode()) for t in corpus.splits[split])
    tokenizer.save(folder)
    meta["files"] = {name: file_digest(folder / name) for name in ENTRY_FILES}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


ENTRY_FILES = (*(f"{s}.bin" for s in SPLITS), TOKENIZER_NAME)


def file_digest(path: Path) -> dict:
    """{"size", "sha256"} of a file, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}


def verify_entry(folder: Path) -> dict | None:
    """The entry's meta.json if the entry is whole (every file there, of the recorded size and
    sha256, and the token counts fit the sizes), else None."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        files = meta["files"]
        if meta["cache_version"] != CACHE_VERSION or meta["dtype"] not in ("uint16", "uint32"):
            return None
        itemsize = np.dtype(meta["dtype"]).itemsize
        if not all(files[f"{s}.bin"]["size"] == meta["tokens"][s] * itemsize and meta["bytes"][s] >= 0 for s in SPLITS):
            return None
        if any((folder / name).stat().st_size != files[name]["size"] for name in ENTRY_FILES):
            return None  # cheap check first: a truncated file
        return meta if all(file_digest(folder / name) == files[name] for name in ENTRY_FILES) else None
    except (OSError, ValueError, KeyError, TypeError):  # missing or unreadable files, meta.json not JSON or of another shape
        return None


def install_entry(tmp: Path, folder: Path, meta: dict) -> dict:
    """Rename the finished entry `tmp` (of meta.json `meta`) to `folder`; returns the meta of
    the entry now there. When `folder` is already there: keep it if it verifies (another
    process filled it first), else move it aside and replace it."""
    for _ in range(3):
        try:
            os.rename(tmp, folder)
            return meta
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):  # ENOTDIR: `folder` is a (dangling) alias link
                raise
        theirs = verify_entry(folder)
        if theirs is not None:
            return theirs
        aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.broken-", dir=folder.parent))
        try:
            os.rename(folder, aside / "entry")
        except FileNotFoundError:  # another process moved it first: try again
            pass
        shutil.rmtree(aside, ignore_errors=True)
    raise OSError(errno.EEXIST, f"cache entry {folder} keeps changing under us (other processes writing it?)")


def prepare_data(corpus: Corpus, kind: str = "bpe", vocab_size: int = 8192, cache_dir=None, tokenizer: Tokenizer | None = None) -> TokenData:
    """Tokenise `corpus` with `tokenizer` (or a new one of `kind`), reusing the cache when it can."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    recipe = tokenizer.fingerprint() if tokenizer is not None else f"{kind}-{vocab_size if kind == 'bpe' else ''}"
    folder = cache_dir / cache_key(corpus, recipe)
    meta = verify_entry(folder)
    if meta is not None:
        return TokenData(folder, meta)
    if tokenizer is None:
        tokenizer = build_tokenizer(kind, corpus.splits["train"], vocab_size)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=cache_dir))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private
    try:
        meta = install_entry(tmp, folder, tokenize_corpus(corpus, tokenizer, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    alias = cache_dir / cache_key(corpus, tokenizer.fingerprint())  # found again from a checkpoint's tokenizer
    if alias != folder and not alias.exists():
        try:
            alias.symlink_to(folder.name)
        except OSError:  # a race or a file system without links: the alias is only a shortcut
            pass
    return TokenData(folder, meta)


def cache_key(corpus: Corpus, recipe: str) -> str:
    return hashlib.sha256(f"v{CACHE_VERSION}\0{corpus.digest()}\0{recipe}".encode()).hexdigest()[:24]
