"""Document states: read a long document once, keep the model's state after it, and answer any
number of later prompts from that state without reading the document again.

    logits, state = model.prefill(document_ids)          # (1, N) -> the state after it
    save_state(state, "doc.state", model, tokens=N)       # kilobytes for a wave model
    state = load_state("doc.state", model)                # refused if another model made it
    model.generate(prompt_ids, 64, state=state)           # = generate(document + prompt)
    model.generate(prompts, 64, state=expand_state(state, len(prompts)))  # several at once

A wave layer's state is its field (a few complex numbers per head and channel) and its short
conv's last inputs, whatever the document's length; an attention layer's is its KV cache,
which grows with it (a hybrid's state file holds its caches, and state_bytes counts them).

The file is safetensors: one tensor per entry of each layer's state ("layers.I.KEY"), and in
its metadata the format, the layout of each layer's entries, the number of tokens read, a
fingerprint of the model (config and weights: a state means nothing to another model) and a
sha256 of the tensors (a flipped bit is refused, not decoded from).
"""

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .errors import MissingError, UserError
from .io import save_safetensors

FORMAT, VERSION = "wavefield-state", "1"


def _bytes(t: torch.Tensor):
    """A tensor's bytes, as a buffer hashlib reads (any dtype)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def _sha256(tensors: dict, prefix: bytes = b"") -> str:
    """sha256 of `prefix` and each tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256(prefix)
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        h.update(_bytes(t))
    return h.hexdigest()


def fingerprint(model) -> str:
    """sha256 of the model's config and weights."""
    return _sha256(model.state_dict(), model.config.to_json().encode())


def state_bytes(state) -> int:
    """Bytes the state holds: each entry's tensor (a KV cache's T positions, not its buffer's spare room)."""
    return sum(v.numel() * v.element_size() for s in state for v in (s or {}).values() if isinstance(v, torch.Tensor))


def _entries(block, s) -> dict:
    """The entries of a layer's state that make it (the mixer's STATE_KEYS): not a KV buffer's spare memory."""
    return {k: v for k, v in (s or {}).items() if k in block.mixer.STATE_KEYS}


def save_state(state, path, model, tokens: int | None = None):
    """Write `state` (model.prefill's, one entry per layer) to the safetensors file `path`, atomically."""
    if not isinstance(state, (list, tuple)) or len(state) != len(model.blocks):
        raise UserError(f"a state has one entry per layer ({len(model.blocks)}), as model.prefill returns it")
    _check(state, model, _batch(state), "the state to save")
    layout, tensors = [], {}
    for i, (block, s) in enumerate(zip(model.blocks, state)):
        entries = _entries(block, s)
        layout.append({k: v is not None for k, v in entries.items()})
        tensors.update({f"layers.{i}.{k}": v.detach().contiguous().cpu() for k, v in entries.items() if v is not None})
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "model": fingerprint(model),
        "layout": json.dumps(layout),
        "tokens": json.dumps(tokens),
        "sha256": _sha256(tensors),
    }
    save_safetensors(tensors, path, metadata=metadata)


def read_metadata(path) -> dict:
    """The metadata of a state file (format checked), without reading its tensors."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise UserError(f"{path} is not a regular file: name a state file")
    if not path.is_file():
        raise MissingError(f"{path}: no such state file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} is not a wavefield state file (unreadable: {e})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is not a wavefield state file")
    if meta.get("version") != VERSION:
        raise UserError(f"{path}: state file version {meta.get('version')!r} is not supported (this wavefield reads {VERSION})")
    return meta


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t.float() if t.element_size() == 1 else t).all())  # float8 has no isfinite of its own


def _batch(state):
    return next((v.shape[0] for s in state for v in (s or {}).values() if isinstance(v, torch.Tensor) and v.dim()), None)


def _check(state, model, batch_size, what):
    """Each layer's check_state, its ValueError a UserError naming `what`."""
    for i, (block, s) in enumerate(zip(model.blocks, state)):
        try:
            block.mixer.check_state(s, batch_size)
        except ValueError as e:
            raise UserError(f"{what} does not fit this model (layer {i}): {e}") from None


def load_state(path, model, device=None, batch_size: int | None = None) -> list:
    """The state saved in `path`, on `device` (default: the model's), for `model`: refused with a
    UserError when another model (config or weights) made it, when the file is corrupt, or
    when it does not hold the state of `batch_size` rows (None: any batch)."""
    path = Path(path)
    meta = read_metadata(path)
    if meta.get("model") != fingerprint(model):
        raise UserError(f"{path} was made by another model (its config or weights differ from this one's): read the document again with this model")
    try:
        layout = json.loads(meta["layout"])
        ok = isinstance(layout, list) and len(layout) == len(model.blocks) and all(isinstance(e, dict) for e in layout)
        ok = ok and all(k in block.mixer.STATE_KEYS and isinstance(v, bool) for block, e in zip(model.blocks, layout) for k, v in e.items())
    except (KeyError, ValueError, RecursionError):
        ok = False
    if not ok:
        raise UserError(f"{path}: the state's layout does not fit this model")
    names = {f"layers.{i}.{k}" for i, e in enumerate(layout) for k, present in e.items() if present}
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} cannot be read (truncated or corrupt?): {e}") from None
    if set(tensors) != names or _sha256(tensors) != meta.get("sha256"):
        raise UserError(f"{path} is corrupt: its tensors do not match their checksum")
    if not all(_finite(t) for t in tensors.values() if t.is_floating_point() or t.is_complex()):
        raise UserError(f"{path} is corrupt: it holds numbers that are not finite (NaN or infinite)")
    device = device if device is not None else next(model.parameters()).device
    state = [{k: tensors[f"layers.{i}.{k}"].to(device) if present else None for k, present in e.items()} for i, e in enumerate(layout)]
    batch = _batch(state)
    if batch_size is not None and batch != batch_size:
        raise UserError(f"{path} holds the state of {batch} rows, {batch_size} needed here")
    _check(state, model, batch, str(path))
    return state


def state_tokens(path) -> int | None:
    """How many tokens the state in `path` has read (as save_state was told), or None."""
    try:
        value = json.loads(read_metadata(path).get("tokens", "null"))
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def expand_state(state, batch_size: int) -> list:
    """A state of batch 1 repeated for `batch_size` prompts (each row its own copy), so one
    document answers several prompts of equal length at once. (Prompts of different lengths
    would need padding between the document and the prompt, which a wave layer's field does not
    skip: answer those one at a time.)"""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if _batch(state) != 1:
        raise UserError("expand_state needs a state of batch 1")
    # tensors are repeated; a KV cache's buffer (its spare memory) is left behind: the first token after makes a new one
    return [{k: v.expand(batch_size, *v.shape[1:]).clone() if v is not None else None for k, v in (s or {}).items() if not _spare(v)} for s in state]


def _spare(value) -> bool:
    """An entry of a state that is neither a tensor nor None: a KV cache's buffer."""
    return value is not None and not isinstance(value, torch.Tensor)
