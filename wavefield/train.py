"""Training: presets, the loop, checkpoints, resuming, and DistributedDataParallel.

    wavefield train --preset tiny                      # bundled Shakespeare, ~1M parameters
    torchrun --nproc_per_node=2 -m wavefield.cli train ...   # DDP: gloo on CPU, NCCL on GPU

Batches: step s on rank r reads `batch_size` windows of `seq_len + 1` tokens at offsets drawn
from a generator seeded with (seed, s, r) inside rank r's contiguous shard of the training
stream. The data position is therefore the step number, and a resumed run reads exactly the
batches an uninterrupted run would have read.

A run folder (--out) holds metrics.jsonl, curve.png, tb/ (TensorBoard scalars, when
tensorboard is installed) and checkpoint/ (see checkpoint.py).
"""

import dataclasses
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .checkpoint import CHECKPOINT_DIR, STATE_JSON, load_training_state, read_state_json, recover_checkpoint, rng_state, save_checkpoint
from .config import WaveFieldConfig
from .data import Tokenizer, load_corpus, prepare_data
from .errors import MissingError, UserError
from .evaluate import evaluate_tokens, summarize
from .info import head_physics
from .io import atomic_path, write_text_atomic
from .model import WaveFieldLM, physical_parameters

PRESETS = {
    # ~1.2M parameters (0.8M of them the 8192 x 96 embedding): a few minutes on a 2-core CPU
    "tiny": {"model": dict(d_model=96, n_layers=3, n_heads=4), "train": dict(seq_len=128, batch_size=16, lr=3e-3, max_steps=300, eval_interval=100)},
    # ~6.4M parameters
    "small": {"model": dict(d_model=256, n_layers=5, n_heads=8), "train": dict(seq_len=256, batch_size=32, lr=1e-3, max_steps=5000, eval_interval=250)},
    # ~25M parameters
    "base": {"model": dict(d_model=512, n_layers=6, n_heads=8), "train": dict(seq_len=512, batch_size=32, lr=6e-4, max_steps=20000, eval_interval=500)},
}
# flags that may change when a run is resumed; every other one must match the checkpoint
ADDED_ARGS = {"physical_lr_scale": 1.0}  # arguments added since checkpoints were first saved, with the value they had before
CHANGEABLE = ("max_steps", "device", "compile", "log_physics", "eval_interval", "checkpoint_interval", "log_interval", "cache_dir", "eval_windows")


@dataclass
class TrainArgs:
    """Every flag of `wavefield train`. None means: the preset's value (or the checkpoint's, on --resume)."""

    preset: str | None = None
    data: str | None = None
    tokenizer: str | None = None  # bpe | gpt2 | bytes
    vocab_size: int | None = None  # BPE tokenizer size (default 8192)
    out: str | None = None
    max_steps: int | None = None
    decay_steps: int | None = None  # length of the cosine schedule (default max_steps)
    warmup_steps: int | None = None
    seq_len: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    min_lr_ratio: float | None = None
    weight_decay: float | None = None
    physical_lr_scale: float | None = None  # learning rate of omega, alpha, phi relative to the rest (default 1)
    grad_clip: float | None = None
    seed: int | None = None
    eval_interval: int | None = None
    eval_windows: int | None = None  # windows of the val split scored at each validation
    checkpoint_interval: int | None = None
    log_interval: int | None = None
    device: str | None = None
    bf16: bool | None = None
    log_physics: bool | None = None  # per validation: kernel energy, dissipation, path agreement
    compile: bool | None = None
    cache_dir: str | None = None
    resume: bool = False
    model: dict = field(default_factory=dict)  # WaveFieldConfig fields to override


DEFAULTS = dict(
    preset="tiny",
    data=None,
    tokenizer="bpe",
    vocab_size=8192,
    decay_steps=None,
    warmup_steps=None,
    min_lr_ratio=0.1,
    weight_decay=0.1,
    physical_lr_scale=1.0,
    grad_clip=1.0,
    seed=0,
    eval_windows=64,
    checkpoint_interval=None,
    log_interval=10,
    device="auto",
    bf16=False,
    log_physics=False,
    compile=False,
    cache_dir=None,
)


class TrainingStopped(Exception):
    """Training stopped early; `exit_code` is what the command returns (130: interrupted by a signal)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class TrainingDiverged(TrainingStopped):
    """Training stopped because the loss or the gradient norm stopped being finite (exit code 2):
    what a learning-rate sweep counts as a lost rate, unlike an interruption."""

    def __init__(self, message: str):
        super().__init__(message, 2)


# ---------------------------------------------------------------- arguments and checks


def check_numbers(a: TrainArgs):
    positive = ["max_steps", "seq_len", "batch_size", "eval_interval", "eval_windows", "checkpoint_interval", "log_interval", "decay_steps", "vocab_size"]
    limits = {"seq_len": 2**20, "batch_size": 2**16, "max_steps": 10**9, "decay_steps": 10**9, "eval_windows": 10**6}
    for name in positive:
        v = getattr(a, name)
        if v is not None and not (1 <= v <= limits.get(name, 10**9)):
            raise UserError(f"--{name.replace('_', '-')} must be between 1 and {limits.get(name, 10**9)}, got {v}")
    if a.warmup_steps is not None and not 0 <= a.warmup_steps <= 10**9:
        raise UserError(f"--warmup-steps must be >= 0, got {a.warmup_steps}")
    for name, lo, hi in [("lr", 0.0, 1.0), ("min_lr_ratio", 0.0, 1.0), ("weight_decay", 0.0, 10.0), ("physical_lr_scale", 0.0, 1e3), ("grad_clip", 0.0, 1e6)]:
        v = getattr(a, name)
        if v is not None and not (math.isfinite(v) and lo <= v <= hi and (name != "lr" or v > 0)):
            raise UserError(f"--{name.replace('_', '-')} must lie in {'(' if name == 'lr' else '['}{lo}, {hi}], got {v}")
    if a.seed is not None and not 0 <= a.seed < 2**31:
        raise UserError(f"--seed must be in [0, 2^31), got {a.seed}")
    if a.preset is not None and a.preset not in PRESETS:
        raise UserError(f"unknown preset {a.preset!r} (choose from {', '.join(PRESETS)})")


def check_saved_args(base: dict, ckpt: Path) -> dict:
    """The arguments saved in train_state.json, refused unless they are exactly TrainArgs'
    fields with values of their types (a damaged or foreign file otherwise fails deep inside)."""
    fields = {f.name: f.type for f in dataclasses.fields(TrainArgs)}
    base = {**{k: v for k, v in ADDED_ARGS.items() if k not in base}, **base}  # a checkpoint from before they existed
    if base.keys() != fields.keys():
        raise UserError(
            f"{ckpt / STATE_JSON} holds other training arguments than this wavefield's (differing: {', '.join(sorted(base.keys() ^ fields.keys()))})"
        )
    base = {k: float(v) if type(v) is int and isinstance(0.0, fields[k]) else v for k, v in base.items()}  # a float field given as 2 is saved as 2
    wrong = [k for k, kind in fields.items() if not isinstance(base[k], kind)]
    if wrong:
        raise UserError(f"{ckpt / STATE_JSON}: the saved arguments {', '.join(wrong)} have the wrong type")
    try:
        check_numbers(TrainArgs(**base))
    except UserError as e:  # its message names the flag; the value came from the file
        raise UserError(f"{ckpt / STATE_JSON}: a saved argument is out of range: {e}") from None
    return base


def check_world_size(saved: dict, ckpt: Path):
    """Refuse to resume on another number of processes than the checkpoint was trained on:
    each rank reads its own shard of the data and restores its own random state, so another
    world size would silently change the batches and the dropout masks. Checked from
    torchrun's WORLD_SIZE before any process group is set up."""
    world, trained = env_int("WORLD_SIZE", 1), saved["data"]["world_size"]
    if world != trained:
        raise UserError(
            f"--resume: the checkpoint in {ckpt} was trained with {trained} process(es) but this run has {world}; "
            f"resume it with {trained} (the data shards and random states are per process)"
        )


def env_int(name: str, default: int) -> int:
    """A process-layout variable that torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK), checked."""
    value = os.environ.get(name, str(default))
    if not value.isdigit() or (name == "WORLD_SIZE" and int(value) < 1):
        raise UserError(f"{name} must be a {'positive' if name == 'WORLD_SIZE' else 'non-negative'} integer, got {value!r}")
    return int(value)


def resolve(a: TrainArgs) -> tuple[TrainArgs, WaveFieldConfig | None, dict | None]:
    """Fill every None from the checkpoint (on --resume) or the preset; return the checkpoint's
    saved state when resuming. Raises ValueError naming the first problem."""
    check_numbers(a)
    out = Path(a.out or f"runs/{a.preset or DEFAULTS['preset']}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    ckpt = out / CHECKPOINT_DIR
    saved = None
    if a.resume:
        recover_checkpoint(out)  # a kill between the two renames of a save left .checkpoint.old
        if not (ckpt / STATE_JSON).is_file():
            raise MissingError(f"--resume: {out} holds no checkpoint to resume")
        saved = read_state_json(ckpt)
        check_world_size(saved, ckpt)
        base = check_saved_args(saved["args"], ckpt)
        for k, v in dataclasses.asdict(a).items():
            if k in ("out", "resume", "model") or v is None or k in CHANGEABLE:
                continue
            if v != base[k]:
                raise UserError(f"--resume: --{k.replace('_', '-')} {v} differs from the checkpoint's {base[k]} in {ckpt}")
        saved_cfg = saved["model_config"]
        for k, v in a.model.items():
            if saved_cfg.get(k) != v:
                raise UserError(f"--resume: {k}={v} differs from the checkpoint's {k}={saved_cfg.get(k)} in {ckpt}")
        filled = {**base, **{k: v for k, v in dataclasses.asdict(a).items() if k in CHANGEABLE and v is not None}}
        cfg = WaveFieldConfig.from_dict(saved_cfg)
    else:
        if out.is_dir() and any(out.iterdir()):
            raise UserError(f"--out {out} already exists and is not empty: pass --resume to continue its run, or choose another --out")
        preset = PRESETS[a.preset or DEFAULTS["preset"]]
        filled = {**DEFAULTS, **preset["train"], **{k: v for k, v in dataclasses.asdict(a).items() if v is not None and k != "model"}}
        filled["preset"] = a.preset or DEFAULTS["preset"]
        filled["decay_steps"] = filled["decay_steps"] or filled["max_steps"]
        if filled["warmup_steps"] is None:
            filled["warmup_steps"] = min(100, filled["max_steps"] // 10)
        filled["checkpoint_interval"] = filled["checkpoint_interval"] or filled["eval_interval"]
        WaveFieldConfig(**{**preset["model"], **a.model})  # reject a bad model flag before any work
        cfg = None  # built once the tokenizer, and so vocab_size, is known
    filled.update(out=str(out), resume=a.resume, model=dict(a.model))
    return TrainArgs(**filled), cfg, saved


def lr_at(step: int, lr: float, warmup_steps: int, decay_steps: int, min_lr_ratio: float) -> float:
    """Linear warm-up to lr, then cosine decay to lr * min_lr_ratio at decay_steps, flat after."""
    if step < warmup_steps:
        return lr * ((step + 1) / warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, decay_steps - warmup_steps))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def param_groups(model, weight_decay: float, physical_lr_scale: float = 1.0) -> list[dict]:
    """Weight decay on matrices only: not on norms, biases, or the wave's physical parameters,
    which form a group of their own at physical_lr_scale times the learning rate (see set_lr)."""
    physical = physical_parameters(model)
    ids = {id(p) for p in physical}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [
        {"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0, "lr_scale": 1.0},
        {"params": physical, "weight_decay": 0.0, "lr_scale": physical_lr_scale},
    ]


def make_optimizer(model, lr: float, weight_decay: float, physical_lr_scale: float = 1.0, betas=(0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW over param_groups: what `wavefield train` and bench recall train with."""
    return torch.optim.AdamW(param_groups(model, weight_decay, physical_lr_scale), lr=lr, betas=betas, eps=1e-8)


def set_lr(optimizer, lr: float):
    """Every group at lr times its lr_scale."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g["lr_scale"]


def get_batch(tokens, step: int, a: TrainArgs, rank: int, world: int):
    """Rank `rank`'s batch for `step`: (x, y) of shape (B, seq_len), y shifted by one."""
    shard = len(tokens) // world
    lo = rank * shard
    g = torch.Generator(device="cpu").manual_seed(a.seed * 1_000_003 + step * 4099 + rank)
    offsets = lo + torch.randint(0, shard - a.seq_len - 1, (a.batch_size,), generator=g, device="cpu")
    chunk = torch.from_numpy(np.stack([np.asarray(tokens[o : o + a.seq_len + 1], dtype=np.int64) for o in offsets.tolist()]))
    return chunk[:, :-1], chunk[:, 1:]  # (B, N) each


# ---------------------------------------------------------------- logging


def eval_record(model, step: int, val: dict, physics_ids=None) -> dict:
    """The periodic-validation record appended to metrics.jsonl. `model` is the bare
    WaveFieldLM; with physics_ids (N,) (--log-physics) it adds each head's kernel energy and
    dissipation and the agreement of the FFT path with the chunked path on those tokens."""
    record = {"type": "val", "step": step, **{f"val_{k}": v for k, v in val.items()}, "heads": head_physics(model)}
    if physics_ids is not None:
        from .diagnostics.energy import physics_summary

        record["physics"] = physics_summary(model, physics_ids)
    return record


class Metrics:
    """metrics.jsonl (one JSON object a line), plus TensorBoard scalars when it is installed."""

    def __init__(self, out: Path, resume_step: int | None):
        self.path = out / "metrics.jsonl"
        if resume_step is not None and self.path.exists():  # forget what ran after the checkpoint
            write_text_atomic(self.path, "".join(line + "\n" for line in self.path.read_text().splitlines() if self._step(line) <= resume_step))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tb"))
        except ImportError:
            self.tb = None

    @staticmethod
    def _step(line: str) -> float:
        try:
            return json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):  # a line cut short by a crash
            return math.inf

    def log(self, record: dict):
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"{record['type']}/{k}", v, record["step"])

    def close(self):
        if self.tb is not None:
            self.tb.close()


def plot_curve(metrics_path: Path, png: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in records if r["type"] == "train"]
    val = [(r["step"], r["val_loss"]) for r in records if r["type"] == "val"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for points, label in [(train, "train"), (val, "val")]:
        if points:
            ax.plot(*zip(*points), label=label, marker="o" if label == "val" else None)
    ax.set(xlabel="step", ylabel="loss (nats/token)", title=f"{png.parent.name}")
    ax.grid(alpha=0.3)
    ax.legend()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- the loop


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available")
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise UserError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device("cpu")


def train(args: TrainArgs):
    """Train as `args` asks; returns the trained WaveFieldLM (on every rank under torchrun)."""
    rank, world, local_rank = env_int("RANK", 0), env_int("WORLD_SIZE", 1), env_int("LOCAL_RANK", 0)
    distributed = world > 1
    a, cfg, saved = resolve(args)
    device = pick_device(a.device, local_rank)
    if distributed:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return _train(a, cfg, saved, device, rank, world, local_rank, distributed)
    finally:
        if distributed:
            dist.destroy_process_group()


def _train(a, cfg, saved, device, rank, world, local_rank, distributed):
    out, ckpt = Path(a.out), Path(a.out) / CHECKPOINT_DIR
    # data: one process per machine tokenises (and trains the BPE), the others read its cache
    corpus = load_corpus(a.data)
    tokenizer = Tokenizer.load(ckpt) if saved else None
    if local_rank != 0 and distributed:
        dist.barrier()
    data = prepare_data(corpus, a.tokenizer, a.vocab_size, a.cache_dir, tokenizer=tokenizer)
    if local_rank == 0 and distributed:
        dist.barrier()
    train_tokens, val_tokens = data.tokens["train"], data.tokens["val"]
    if len(train_tokens) // world <= a.seq_len + 1:
        raise UserError(
            f"corpus too small: its train split has {len(train_tokens)} tokens ({len(train_tokens) // world} per process), "
            f"need more than seq_len + 1 = {a.seq_len + 1} per process"
        )
    if len(val_tokens) < 2:
        raise UserError(f"corpus too small: its val split has {len(val_tokens)} tokens, need at least 2")
    data_info = {
        "corpus": corpus.name,
        "corpus_digest": corpus.digest(),
        "tokenizer_fingerprint": data.tokenizer.fingerprint(),
        "bytes_per_token_val": data.bytes_per_token("val"),
        "world_size": world,
    }
    if saved and saved["data"]["corpus_digest"] != data_info["corpus_digest"]:
        raise UserError(f"--resume: the corpus {corpus.name} differs from the one the checkpoint in {ckpt} was trained on")

    torch.manual_seed(a.seed + rank)
    if cfg is None:
        cfg = WaveFieldConfig(**{**PRESETS[a.preset]["model"], **a.model, "vocab_size": data.tokenizer.vocab_size})
    model = WaveFieldLM.from_pretrained(ckpt) if saved else WaveFieldLM(cfg)
    model.to(device).train()
    optimizer = make_optimizer(model, a.lr, a.weight_decay, a.physical_lr_scale)
    start = 0
    if saved:
        load_training_state(ckpt, optimizer, saved, rank, model)
        start = saved["step"]
    wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if distributed else model
    run = torch.compile(wrapped) if a.compile else wrapped

    writer = rank == 0
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        metrics = Metrics(out, start if saved else None)
    stop = {"signal": 0}

    def on_signal(signum, frame):
        stop["signal"] = signum

    handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    from tqdm import tqdm

    # the bar shows on a terminal; elsewhere (logs, pipes) only the validation lines are printed
    bar = tqdm(total=a.max_steps, initial=start, disable=None if writer else True, dynamic_ncols=True, mininterval=0.5, desc="train")
    tokens_per_step, last_good, t0 = a.batch_size * a.seq_len * world, (start if saved else None), time.perf_counter()
    try:
        for step in range(start, a.max_steps):
            lr = lr_at(step, a.lr, a.warmup_steps, a.decay_steps, a.min_lr_ratio)
            set_lr(optimizer, lr)
            x, y = (t.to(device) for t in get_batch(train_tokens, step, a, rank, world))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.bf16):
                loss = run(x, targets=y)  # mean next-token cross-entropy, float32
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip if a.grad_clip > 0 else float("inf"))
            shared = torch.stack([loss.detach().float(), grad_norm.detach().float(), torch.tensor(float(stop["signal"]), device=device)])
            if distributed:  # every rank sees the same mean loss and the same decision to stop
                dist.all_reduce(shared)
                shared[:2] /= world
            loss_value, norm_value, signalled = shared.tolist()
            if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
                kept = f"the last good checkpoint (step {last_good}) is kept in {ckpt}" if last_good is not None else "no checkpoint had been written yet"
                message = f"loss became {loss_value} (gradient norm {norm_value}) at step {step + 1}; stopped: {kept}"
                if signalled:  # interrupted in the same step: the interrupt must not pass for a lost learning rate
                    raise TrainingStopped(f"interrupted at step {step}; {message}", 130)
                raise TrainingDiverged(message)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            bar.update(1)
            elapsed = time.perf_counter() - t0
            if writer and (done % a.log_interval == 0 or done == a.max_steps):
                rate = (done - start) * tokens_per_step / elapsed
                metrics.log(
                    {
                        "type": "train",
                        "step": done,
                        "loss": loss_value,
                        "ppl": math.exp(min(loss_value, 700)),
                        "lr": lr,
                        "grad_norm": norm_value,
                        "tokens": done * tokens_per_step,
                        "tok_per_s": rate,
                        "elapsed_s": elapsed,
                    }
                )
                bar.set_postfix_str(f"loss {loss_value:.3f} ppl {math.exp(min(loss_value, 700)):.1f} {rate:,.0f} tok/s")
            if writer and (done % a.eval_interval == 0 or done == a.max_steps):
                val = evaluate_tokens(model, val_tokens, a.seq_len, a.batch_size, device, a.eval_windows, a.bf16)
                val = summarize(val["nll"], val["tokens"], data.bytes_per_token("val"))
                physics_ids = torch.as_tensor(np.asarray(val_tokens[: a.seq_len], dtype=np.int64), device=device) if a.log_physics else None
                metrics.log(eval_record(model, done, val, physics_ids))
                bar.write(
                    f"step {done}: train loss {loss_value:.4f}  val loss {val['loss']:.4f}  val ppl {val['ppl']:.2f}  "
                    f"val bits/byte {val['bpb']:.4f}  {(done - start) * tokens_per_step / elapsed:,.0f} tok/s",
                    file=sys.stderr,
                )
            end = done == a.max_steps or signalled
            if done % a.checkpoint_interval == 0 or end:
                rng_states = [rng_state()]
                if distributed:  # every rank's random state goes into rank 0's checkpoint
                    rng_states = [None] * world
                    dist.all_gather_object(rng_states, rng_state())
                if writer:
                    save_checkpoint(out, model, optimizer, data.tokenizer, dataclasses.asdict(a), done, data_info, rng_states)
                last_good = done
            if signalled:
                raise TrainingStopped(f"interrupted at step {done}; checkpoint saved in {ckpt} (continue with --resume)", 130)
    finally:
        bar.close()
        for s, h in handlers.items():
            signal.signal(s, h)
        if writer:
            metrics.close()
    if writer:
        plot_curve(metrics.path, out / "curve.png")
    return model
