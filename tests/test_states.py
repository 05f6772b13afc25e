"""Document states: saved, reloaded and continued from, they give exactly the tokens of reading
document + prompt in one pass; a foreign, corrupt or tampered state file is refused in one line."""

import dataclasses
import hashlib
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_cli_errors import fails
from test_model import model_for
from test_padding import HYBRID

from wavefield.checkpoint import load_checkpoint
from wavefield.cli import main
from wavefield.errors import UserError
from wavefield.states import _sha256, expand_state, load_state, save_state, state_bytes, state_tokens

MODELS = {
    "wave": dataclasses.replace(HYBRID, layer_types=["wave"] * 3),
    "outer": dataclasses.replace(HYBRID, layer_types=["wave"] * 3, wave_deposit="outer", wave_norm=True, feature_map="elu1"),
    "hybrid": HYBRID,
    "transformer": dataclasses.replace(HYBRID, layer_types=["attention"] * 3),
    "peers": dataclasses.replace(HYBRID, layer_types=["conv-attention", "mamba2", "wave"], ssm_state=8),
}


def ids_for(cfg, n, seed=0, batch=1):
    return torch.randint(0, cfg.vocab_size, (batch, n), generator=torch.Generator(torch.get_default_device()).manual_seed(seed))


@pytest.mark.parametrize("kind", list(MODELS))
def test_a_reloaded_state_answers_as_document_plus_prompt_in_one_pass(kind, tmp_path):
    cfg = MODELS[kind]
    model = model_for(cfg, 0)
    document, prompt = ids_for(cfg, 70, 1), ids_for(cfg, 6, 2)
    whole = model.generate(torch.cat([document, prompt], 1), 15, temperature=0, prefill_chunk=None)[:, 76:]
    _, state = model.prefill(document, chunk_size=32)
    save_state(state, tmp_path / "doc.state", model, tokens=70)
    loaded = load_state(tmp_path / "doc.state", model)
    assert torch.equal(model.generate(prompt, 15, temperature=0, state=loaded)[:, 6:], whole)
    assert state_tokens(tmp_path / "doc.state") == 70
    # wave layers keep a constant state; attention layers keep 70 keys and values each
    kv = 2 * 70 * cfg.d_model * 4 * sum(t in ("attention", "conv-attention") for t in cfg.layer_types)
    constant = state_bytes([{k: v for k, v in s.items() if k not in ("k", "v", "mask", "next")} for s in state])  # fields, conv tails, SSM states
    assert state_bytes(state) == constant + kv
    assert (tmp_path / "doc.state").stat().st_size < state_bytes(state) + 4096  # the file is the state, plus a header


@pytest.mark.parametrize("kind", ["wave", "hybrid", "peers"])
def test_an_expanded_state_answers_several_prompts_at_once(kind):
    cfg = MODELS[kind]
    model = model_for(cfg, 1)
    _, state = model.prefill(ids_for(cfg, 40, 3))
    prompts = ids_for(cfg, 5, 4, batch=3)
    batched = model.generate(prompts, 8, temperature=0, state=expand_state(state, 3))
    for b in range(3):
        assert torch.equal(batched[b : b + 1], model.generate(prompts[b : b + 1], 8, temperature=0, state=state))
    with pytest.raises(UserError, match="batch 1"):
        expand_state(expand_state(state, 2), 3)


def test_a_state_of_another_model_is_refused(tmp_path):
    model = model_for(MODELS["wave"], 0)
    _, state = model.prefill(ids_for(MODELS["wave"], 20))
    save_state(state, tmp_path / "s", model)
    other_weights = model_for(MODELS["wave"], 1)
    with pytest.raises(UserError, match="another model"):
        load_state(tmp_path / "s", other_weights)
    with pytest.raises(UserError, match="another model"):
        load_state(tmp_path / "s", model_for(MODELS["hybrid"], 0))


def rewrite(path, tensors=None, metadata=None):
    """The state file at `path` written again with some tensors or metadata replaced."""
    with safe_open(str(path), framework="pt") as f:
        old_tensors, old_meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    save_file({**old_tensors, **(tensors or {})}, str(path), metadata={**old_meta, **(metadata or {})})


def test_corrupt_and_tampered_state_files_are_refused(tmp_path):
    model = model_for(MODELS["hybrid"], 0)
    _, state = model.prefill(ids_for(MODELS["hybrid"], 20))
    good = tmp_path / "good"
    save_state(state, good, model)
    raw = good.read_bytes()

    cases = {
        "flipped": raw[:-10] + bytes([raw[-10] ^ 1]) + raw[-9:],  # a bit of a tensor
        "truncated": raw[: len(raw) // 2],
        "empty": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError, match="corrupt|not a wavefield state"):
            load_state(tmp_path / name, model)
    (tmp_path / "reshaped").write_bytes(raw)  # a consistent checksum over a tensor of the wrong shape
    rewrite(tmp_path / "reshaped", tensors={"layers.1.k": torch.zeros(1, 2, 20, 3)})
    with safe_open(str(tmp_path / "reshaped"), framework="pt") as f:
        rewrite(tmp_path / "reshaped", metadata={"sha256": _sha256({k: f.get_tensor(k) for k in f.keys()})})
    with pytest.raises(UserError, match="does not fit this model"):
        load_state(tmp_path / "reshaped", model)
    (tmp_path / "layout").write_bytes(raw)
    rewrite(tmp_path / "layout", metadata={"layout": json.dumps([{}] * 2)})
    with pytest.raises(UserError, match="layout"):
        load_state(tmp_path / "layout", model)
    (tmp_path / "version").write_bytes(raw)
    rewrite(tmp_path / "version", metadata={"version": "99"})
    with pytest.raises(UserError, match="version"):
        load_state(tmp_path / "version", model)
    with pytest.raises(FileNotFoundError):
        load_state(tmp_path / "missing", model)


def craft(good, path, tensors=None, drop=(), layout=None, **metadata):
    """The state file `good` rewritten at `path` with tensors replaced, dropped or added, and a
    layout or metadata of our choosing, its checksum made consistent again: what a hostile
    writer can make, since the checksum only catches accidents."""
    with safe_open(str(good), framework="pt") as f:
        old, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    new = {k: v for k, v in {**old, **(tensors or {})}.items() if k not in drop}
    meta = {**meta, **metadata, **({"layout": json.dumps(layout)} if layout is not None else {}), "sha256": _sha256(new)}
    save_file(new, str(path), metadata=meta)
    return path


def test_crafted_state_files_are_refused_before_they_are_used(tmp_path):
    cfg = dataclasses.replace(HYBRID, layer_types=["wave", "attention", "mamba2"], ssm_state=4)
    model = model_for(cfg, 0)
    _, state = model.prefill(ids_for(cfg, 12))
    good = tmp_path / "good"
    save_state(state, good, model, tokens=12)
    layout = json.loads(safe_open(str(good), framework="pt").metadata()["layout"])
    k = state[1]["k"]
    cases = {
        "no k or v": (dict(drop=("layers.1.k", "layers.1.v"), layout=[layout[0], {"k": False, "v": False}, layout[2]]), "does not fit"),
        "a buffer entry": (dict(tensors={"layers.1.buffer": torch.zeros(1)}, layout=[layout[0], {**layout[1], "buffer": True}, layout[2]]), "layout"),
        "a layout of strings": (dict(layout=[layout[0], {"k": "yes", "v": True}, layout[2]]), "layout"),
        "v shorter than k": (dict(tensors={"layers.1.v": state[1]["v"][:, :, :3].contiguous()}), "'v' must be a float tensor"),
        "an int field": (dict(tensors={"layers.0.field": torch.zeros(state[0]["field"].shape, dtype=torch.int64)}), "'field' must be a complex tensor"),
        "float keys as ints": (dict(tensors={"layers.1.k": k.long()}), "'k' must be a float tensor"),
        "layers of different batches": (dict(tensors={"layers.1.k": k.expand(3, -1, -1, -1).contiguous()}), "does not fit"),
        "a NaN key": (dict(tensors={"layers.1.k": k.clone().index_fill_(2, torch.tensor([0]), float("nan"))}), "not finite"),
        "an infinite field": (dict(tensors={"layers.0.field": torch.full_like(state[0]["field"], complex(float("inf"), 0))}), "not finite"),
    }
    for name, (change, phrase) in cases.items():
        with pytest.raises(UserError, match=phrase):
            load_state(craft(good, tmp_path / name.replace(" ", "-"), **change), model)
    wide = tmp_path / "wide"
    save_state(expand_state(state, 4), wide, model)  # a real file, of 4 rows
    assert len(load_state(wide, model)[1]["k"]) == 4
    with pytest.raises(UserError, match="holds the state of 4 rows, 1 needed"):
        load_state(wide, model, batch_size=1)
    assert state_tokens(craft(good, tmp_path / "tokens", tokens="{oops")) is None
    with pytest.raises(UserError, match="the state to save does not fit"):
        save_state([state[0], {**state[1], "v": state[1]["v"][:, :1]}, state[2]], tmp_path / "bad", model)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_reads_a_document_once_and_answers_from_its_state(trained_run, tmp_path, capsys, corpus_dir):
    document = tmp_path / "doc.txt"
    document.write_text(sorted(corpus_dir.glob("*.txt"))[0].read_text()[:3000])
    state = tmp_path / "doc.state"
    flags = ["--temperature", "0", "--max-new-tokens", "20"]
    assert main(["generate", str(trained_run), "--context", str(document), "--save-state", str(state), "--prefill-chunk", "100"]) == 0
    err = capsys.readouterr().err
    assert "state after 3,000 tokens" in err and state.is_file()  # a bytes tokenizer: one token per byte
    assert main(["generate", str(trained_run), "--state", str(state), "--prompt", "KING.", *flags]) == 0
    answer = capsys.readouterr().out
    assert main(["generate", str(trained_run), "--context", str(document), "--prompt", "KING.", *flags]) == 0
    assert capsys.readouterr().out == answer  # the same text as reading the document again
    model, tokenizer, _ = load_checkpoint(trained_run)
    ids = torch.tensor([tokenizer.encode(document.read_text()) + tokenizer.encode("KING.")])
    assert answer == "KING." + tokenizer.decode(model.generate(ids, 20, temperature=0, prefill_chunk=None)[0, ids.shape[1] :].tolist()) + "\n"


def test_cli_refuses_bad_state_requests_in_one_line(trained_run, tmp_path, capsys):
    document = tmp_path / "doc.txt"
    document.write_text("To be, or not to be.")
    precious = tmp_path / "notes.txt"
    precious.write_text("a file of the user's")
    before = digest(precious)
    run = str(trained_run)
    fails(["generate", run, "--context", str(document), "--save-state", str(precious)], capsys, "not a wavefield state file")
    assert digest(precious) == before  # never overwritten
    fails(["generate", run, "--state", str(precious), "--prompt", "x"], capsys, "not a wavefield state file")
    other = model_for(MODELS["wave"], 0)
    save_state(other.prefill(ids_for(MODELS["wave"], 9))[1], tmp_path / "foreign.state", other)
    fails(["generate", run, "--state", str(tmp_path / "foreign.state"), "--prompt", "x"], capsys, "another model")
    model, _, _ = load_checkpoint(trained_run)
    _, rows = model.prefill(torch.zeros(2, 5, dtype=torch.long))
    save_state(rows, tmp_path / "rows.state", model)
    fails(["generate", run, "--state", str(tmp_path / "rows.state"), "--prompt", "x"], capsys, "holds the state of 2 rows, 1 needed")
    fails(["generate", run, "--state", str(tmp_path / "none"), "--prompt", "x"], capsys, "no such state file")
    fails(["generate", run, "--state", str(tmp_path / "none")], capsys, "--state needs --prompt")
    fails(["generate", run, "--save-state", str(tmp_path / "s")], capsys, "--save-state needs --context")
    fails(["generate", run, "--context", str(document), "--state", str(tmp_path / "s")], capsys, "exclude each other")
    fails(["generate", run, "--context", str(tmp_path / "none.txt")], capsys, "no such file")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    fails(["generate", run, "--context", str(tmp_path / "latin1.txt")], capsys, "not UTF-8")
    fails(["generate", run, "--prefill-chunk", "0"], capsys, "--prefill-chunk must be between 1")
    (tmp_path / "empty.txt").write_text("")
    fails(["generate", run, "--context", str(tmp_path / "empty.txt")], capsys, "is empty")
    fails(["generate", run, "--context", str(document), "--save-state", str(tmp_path / "no" / "s")], capsys, "does not exist")
    fails(["generate", run, "--context", str(document), "--save-state", str(tmp_path)], capsys, "is a folder")
    for flag in ("--context", "--state", "--save-state"):  # an empty path is refused, not taken for no flag at all
        fails(["generate", run, "--prompt", "x", flag, ""], capsys, f"{flag} needs a path, got an empty one")
    fails(["generate", run, "--state", str(tmp_path), "--prompt", "x"], capsys, "is not a regular file")
    state = tmp_path / "doc.state"
    assert main(["generate", run, "--context", str(document), "--save-state", str(state)]) == 0
    capsys.readouterr()
    raw = state.read_bytes()
    state.write_bytes(raw[:-3] + bytes([raw[-3] ^ 0xFF]) + raw[-2:])
    fails(["generate", run, "--state", str(state), "--prompt", "x"], capsys, "corrupt")


def test_save_state_writes_through_a_link_and_keeps_a_read_only_file(trained_run, tmp_path, capsys):
    document = tmp_path / "doc.txt"
    document.write_text("To be, or not to be.")
    run, kept = str(trained_run), tmp_path / "kept.state"
    assert main(["generate", run, "--context", str(document), "--save-state", str(kept)]) == 0
    before = digest(kept)
    link = tmp_path / "link.state"
    link.symlink_to(kept.name)
    document.write_text("That is the question.")
    assert main(["generate", run, "--context", str(document), "--save-state", str(link)]) == 0
    assert link.is_symlink() and digest(kept) != before  # the link stays; the file it names holds the new state
    capsys.readouterr()
    kept.chmod(0o444)
    before = digest(kept)
    fails(["generate", run, "--context", str(document), "--save-state", str(kept)], capsys, "read-only")
    assert digest(kept) == before and kept.stat().st_mode & 0o777 == 0o444
