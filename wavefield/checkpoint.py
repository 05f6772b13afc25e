"""Checkpoints of a training run, and loading any saved model with its tokenizer.

checkpoint/ holds model.safetensors + config.json (WaveFieldLM.save_pretrained),
tokenizer.json, train_state.json (step, resolved arguments, optimizer hyper-parameters, data
fingerprints) and train_state.safetensors (optimizer moments, RNG state): no pickle.

What survives a kill (SIGKILL, a crash, a full disk) at any moment of save_checkpoint:

  1. the new checkpoint is written whole into .checkpoint.tmp-XXXX/ beside checkpoint/;
  2. checkpoint/ is renamed to .checkpoint.old/;
  3. .checkpoint.tmp-XXXX/ is renamed to checkpoint/;
  4. .checkpoint.old/ is deleted.

Each rename is atomic, and .checkpoint.old/ is only ever deleted while checkpoint/ exists, so
the run folder always holds one whole checkpoint: checkpoint/, or (a kill between 2 and 3)
.checkpoint.old/. Loading reads .checkpoint.old/ where checkpoint/ is missing; resuming and
the next save first rename it back (recover_checkpoint) and remove temporary folders that a
kill left behind. A failed write (ENOSPC, EFBIG) removes its temporary folder and leaves
checkpoint/ untouched. This protects against killed processes, not power cuts: nothing is
fsync'ed.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from . import __version__
from .data import Tokenizer
from .errors import MissingError, UserError
from .io import save_safetensors
from .model import WaveFieldLM

OLD_DIR, TMP_PREFIX = ".checkpoint.old", ".checkpoint.tmp-"  # the save's swap: see the module docstring
CHECKPOINT_DIR, STATE_JSON, STATE_TENSORS = "checkpoint", "train_state.json", "train_state.safetensors"
STATE_VERSION = 2  # 2: the optimizer holds the physical parameters in a third group (train.param_groups)
READS_VERSIONS = (1, 2)  # a version-1 state is carried over on load (upgrade_optimizer_state)


def checkpoint_dir(path) -> Path:
    """A run folder or a checkpoint folder -> the folder that holds model.safetensors."""
    path = Path(path)
    if not path.exists():
        raise MissingError(f"{path}: no such folder")
    for name in (CHECKPOINT_DIR, OLD_DIR):  # OLD_DIR: a kill fell between the two renames of a save
        if (path / name).is_dir():
            return path / name
    return path


def recover_checkpoint(out: Path):
    """Rename .checkpoint.old/ back to checkpoint/ when a kill left only the former."""
    final, old = out / CHECKPOINT_DIR, out / OLD_DIR
    if not final.exists() and old.is_dir():
        try:
            os.rename(old, final)
        except FileNotFoundError:  # another rank of the same run renamed it first
            pass


def remove_stale_temporaries(out: Path):
    """Delete what a kill left of interrupted writes in the run folder: checkpoint folders, and
    the temporary files of io.atomic_path (metrics.jsonl, curve.png). Only the one writer of a
    run calls this, so nothing here can be another process's write in progress."""
    for tmp in out.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for tmp in out.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def read_state_json(ckpt: Path) -> dict:
    try:
        state = json.loads((ckpt / STATE_JSON).read_text())
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        raise UserError(f"{ckpt / STATE_JSON} is not a valid training state ({type(e).__name__}: {e})") from None
    missing = [k for k in ("step", "args", "model_config", "optimizer_param_groups", "data") if not isinstance(state, dict) or k not in state]
    if missing:
        raise UserError(f"{ckpt / STATE_JSON} is not a valid training state (missing {', '.join(missing)})")
    kinds = {"step": int, "args": dict, "model_config": dict, "optimizer_param_groups": list, "data": dict}
    wrong = [k for k, kind in kinds.items() if not isinstance(state[k], kind) or isinstance(state[k], bool)]
    if not wrong and not (isinstance(state["data"].get("corpus_digest"), str) and isinstance(state["data"].get("world_size"), int)):
        wrong = ["data"]
    if wrong or state["step"] < 0 or not all(isinstance(g, dict) for g in state["optimizer_param_groups"]):
        raise UserError(f"{ckpt / STATE_JSON} is not a valid training state (wrong type: {', '.join(wrong) or 'step or optimizer_param_groups'})")
    if state.get("state_version") not in READS_VERSIONS:
        raise UserError(f"{ckpt / STATE_JSON} has state version {state.get('state_version')!r}; this wavefield reads versions {list(READS_VERSIONS)}")
    return state


def rng_state() -> dict:
    """This process's random state (dropout draws from it; batches have their own generator)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def save_checkpoint(out: Path, model, optimizer, tokenizer: Tokenizer, args: dict, step: int, data_info: dict, rng_states: list[dict]):
    """Write checkpoint/ in `out` (the steps and what survives a kill: see the module docstring);
    rng_states holds one rng_state() per rank."""
    recover_checkpoint(out)
    remove_stale_temporaries(out)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=out))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a checkpoint is an ordinary folder
    try:
        model.save_pretrained(tmp)
        tokenizer.save(tmp)
        opt = optimizer.state_dict()
        tensors = {f"optimizer.{i}.{k}": v.detach().cpu().contiguous() for i, s in opt["state"].items() for k, v in s.items()}
        tensors.update({f"rng.{rank}.{kind}": t.cpu() for rank, state in enumerate(rng_states) for kind, t in state.items()})
        save_safetensors(tensors, tmp / STATE_TENSORS)
        state = {
            "state_version": STATE_VERSION,
            "wavefield_version": __version__,
            "step": step,
            "args": args,
            "model_config": model.config.to_dict(),
            "optimizer_param_groups": [{k: v for k, v in g.items() if k != "params"} for g in opt["param_groups"]],
            "data": data_info,
        }
        (tmp / STATE_JSON).write_text(json.dumps(state, indent=2))
        final, old = out / CHECKPOINT_DIR, out / OLD_DIR
        shutil.rmtree(old, ignore_errors=True)  # safe: recover_checkpoint made sure `final` exists
        if final.exists():
            os.rename(final, old)
        os.rename(tmp, final)  # the swap: `final` is either the old or the new checkpoint, whole
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def upgrade_optimizer_state(state: dict, groups: list[dict], model, optimizer) -> tuple[dict, list[dict]]:
    """A version-1 optimizer state in today's layout. Version 1 had two groups: the matrices,
    then every other parameter (norms, biases and the physical ones) in the model's order;
    version 2 splits the second group in two, the physical parameters last (train.param_groups).
    Each saved moment is mapped to its parameter, then to that parameter's place now."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    matrices = {id(p) for p in optimizer.param_groups[0]["params"]}
    old_order = list(optimizer.param_groups[0]["params"]) + [p for p in model.parameters() if id(p) not in matrices]
    if len(groups) != 2 or len(old_order) != len(params) or not set(state) <= set(range(len(old_order))):
        raise UserError("a version-1 training state that does not match its model: it cannot be carried over")
    place = {id(p): i for i, p in enumerate(params)}
    state = {place[id(old_order[i])]: moments for i, moments in state.items()}
    return state, [{**groups[0], "lr_scale": 1.0}, {**groups[1], "lr_scale": 1.0}, {**groups[1], "lr_scale": 1.0}]


def load_training_state(ckpt: Path, optimizer, saved: dict, rank: int = 0, model=None):
    """Restore the optimizer (and this rank's random state) from a checkpoint; `model`, whose
    parameters the optimizer holds, is needed to carry over a version-1 state."""
    try:
        tensors = load_file(str(ckpt / STATE_TENSORS))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{ckpt / STATE_TENSORS} cannot be read (truncated or corrupt?): {e}") from None
    state = {}
    for key, v in tensors.items():
        if key.startswith("optimizer."):
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = v
    saved_groups = saved["optimizer_param_groups"]
    if saved["state_version"] == 1:
        state, saved_groups = upgrade_optimizer_state(state, saved_groups, model, optimizer)
    groups = [{**g, "params": p["params"]} for g, p in zip(saved_groups, optimizer.state_dict()["param_groups"])]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    if f"rng.{rank}.cpu" not in tensors:  # resolve() refuses another world size, so only a damaged file gets here
        raise UserError(f"{ckpt / STATE_TENSORS} holds no random state for rank {rank}")
    torch.set_rng_state(tensors[f"rng.{rank}.cpu"])
    if f"rng.{rank}.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors[f"rng.{rank}.cuda"])


def load_checkpoint(path, device="cpu"):
    """A run folder or checkpoint folder -> (model, tokenizer, training state or None)."""
    ckpt = checkpoint_dir(path)
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    model = WaveFieldLM.from_pretrained(ckpt, map_location=device).eval()
    tokenizer = Tokenizer.load(ckpt)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise UserError(f"{ckpt}: the tokenizer has {tokenizer.vocab_size} tokens but the model {model.config.vocab_size}")
    state = read_state_json(ckpt) if (ckpt / STATE_JSON).exists() else None
    if state is not None:  # eval and lambada take their corpus and window from the training arguments
        from .train import check_saved_args  # train imports this module

        state["args"] = check_saved_args(state["args"], ckpt)
    return model, tokenizer, state
