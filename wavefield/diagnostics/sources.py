"""What diagnostics read: model folders, the heads logged in a run's metrics.jsonl, and the
prompt as token ids.

A model folder is what WaveFieldLM.save_pretrained writes (config.json + model.safetensors).
A training run folder may hold one, several checkpoint subfolders, a tokenizer and
metrics.jsonl, whose records with a "heads" entry ([{"layer", "omega", "alpha", "phi"}]) trace
how the heads moved during training.
"""

import json
import re
from pathlib import Path

import torch

from ..checkpoint import checkpoint_dir
from ..data.tokenizer import TOKENIZER_NAME, Tokenizer
from ..errors import UserError
from ..model import CONFIG_NAME, WEIGHTS_NAME, WaveFieldLM

METRICS_NAME = "metrics.jsonl"
DEFAULT_PROMPT = (
    "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles "
    "and by opposing end them."
)


def is_model_dir(path: Path) -> bool:
    return (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def step_of(path: Path, default: int) -> int:
    digits = re.findall(r"\d+", path.name)
    return int(digits[-1]) if digits else default


def checkpoint_dirs(dirs) -> list[Path]:
    """Model folders among dirs, in training order; a folder that is not a model itself
    contributes its model subfolders (checkpoints of a run), ordered by the step in their name."""
    found = []
    for d in map(Path, dirs):
        if not d.is_dir():
            raise UserError(f"{d} is not a folder")
        if is_model_dir(d):
            found.append(d)
            continue
        # hidden folders are what an interrupted save left (checkpoint.py); the one a kill between
        # its two renames left in place of checkpoint/ is what checkpoint_dir finds then
        subs = sorted((s for s in d.iterdir() if s.is_dir() and not s.name.startswith(".") and is_model_dir(s)), key=lambda s: step_of(s, 0))
        if not subs and is_model_dir(checkpoint_dir(d)):
            subs = [checkpoint_dir(d)]
        if not subs:
            raise UserError(f"{d} holds no saved wavefield model ({CONFIG_NAME} + {WEIGHTS_NAME})")
        found.extend(subs)
    return found


def load_model(path: Path) -> WaveFieldLM:
    try:
        model = WaveFieldLM.from_pretrained(path).eval()
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise UserError(f"{path}: the model's weights hold numbers that are not finite (NaN or infinite): nothing to diagnose")
    return model


def _is_numbers(values, n: int) -> bool:
    return isinstance(values, list) and len(values) == n and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _is_heads(heads) -> bool:
    """[{"layer", "omega", "alpha", "phi"}] with one number per head in each list, and the same
    for "omega_init" and "alpha_init" where a record has them (wavefield.info.head_physics)."""
    return isinstance(heads, list) and all(
        isinstance(h, dict)
        and isinstance(h.get("layer"), int)
        and isinstance(h.get("omega"), list)
        and all(_is_numbers(h.get(k), len(h["omega"])) for k in ("omega", "alpha", "phi"))
        and all(_is_numbers(h[k], len(h["omega"])) for k in ("omega_init", "alpha_init") if k in h)
        for h in heads
    )


def metrics_history(dirs) -> list[dict]:
    """[{"step", "source", "heads"}] from the records with a "heads" entry in any metrics.jsonl
    found in dirs or their parents, in step order."""
    files = {f.resolve() for d in map(Path, dirs) for f in (d / METRICS_NAME, d.parent / METRICS_NAME) if f.is_file()}
    history = []
    for f in sorted(files):
        for n, line in enumerate(f.read_text(errors="replace").splitlines()):  # a damaged byte spoils its line only
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash mid-write
            step = rec.get("step", n) if isinstance(rec, dict) else None
            if isinstance(step, int) and not isinstance(step, bool) and _is_heads(rec.get("heads")):
                history.append({"step": step, "source": str(f), "heads": rec["heads"]})
    return sorted(history, key=lambda r: r["step"])


def encode_prompt(folder: Path, text: str, vocab_size: int):
    """Token ids, a printable piece per token, and how they were made.

    Uses the run's tokenizer.json when the folder or its parent has one, and
    otherwise falls back to UTF-8 bytes (modulo vocab_size), saying so.
    """
    for f in (folder / TOKENIZER_NAME, folder.parent / TOKENIZER_NAME):
        if f.is_file():
            tok = Tokenizer.load(f.parent)
            ids = tok.encode(text)
            if ids and max(ids) >= vocab_size:
                raise UserError(f"{f} produces ids up to {max(ids)}, beyond the model's vocab_size {vocab_size}")
            return ids, [tok.decode([i]) for i in ids], f"tokenizer {f}"
    data = text.encode("utf-8")
    note = "UTF-8 bytes (no tokenizer.json in the model folder)"
    if vocab_size < 256:
        note += f", taken modulo vocab_size {vocab_size}"
    return [b % vocab_size for b in data], [chr(b) if b < 128 else f"<{b:02x}>" for b in data], note
