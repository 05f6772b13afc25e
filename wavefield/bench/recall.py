"""Multi-query associative recall (MQAR), the synthetic task of the Zoology benchmark.

A sequence starts with n_pairs key-value pairs (keys from the lower half of the vocabulary,
values from the upper half, all distinct within a sequence); each key is asked again later,
at a gap drawn from a power law (p(gap) ~ gap^(a - 1), a = 0.01, so most queries come soon
after the pairs and a few far away), and the model must answer with the key's value. Every
other position holds token 0. Loss and accuracy count the answer tokens only.

    k1 v1 k2 v2 ... kP vP | 0 0 k2 0 0 0 k1 0 ...     inputs
    -  -  -  -  ... -  -  | - - v2 - - - v1 - ...     targets (- is ignored)

`bench_recall` trains small models (2 layers, d_model 128, vocab 8192 by default) for each
task, model kind, learning rate and seed on fresh examples, scores each on a fixed test set,
and keeps, per model and task, the best learning rate (as Zoology reports its sweeps).
"""

import dataclasses
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import WaveFieldConfig, default_layer_types
from ..errors import UserError
from ..io import atomic_path, write_text_atomic
from ..model import WaveFieldLM
from ..train import lr_at, make_optimizer, set_lr

MODEL_KINDS = ("wave", "transformer", "hybrid", "conv-transformer", "mamba2", "wave-channel", "wave-outer")
DEFAULT_KINDS = ("wave", "transformer", "hybrid")  # what `bench recall` compares unless told
# the model kinds that are one layer type throughout (shared with bench quality): "wave-channel"
# and "wave-outer" are the default's two kinds of wave layer alone
UNIFORM_KINDS = {"transformer": "attention", "conv-transformer": "conv-attention", "mamba2": "mamba2", "wave-channel": "wave", "wave-outer": "wave-outer"}
IGNORE = -100


@dataclass
class RecallTask:
    seq_len: int
    n_pairs: int
    vocab_size: int = 8192
    power_a: float = 0.01

    def __post_init__(self):
        if self.seq_len % 2 or 4 * self.n_pairs > self.seq_len:
            raise UserError(f"MQAR needs an even seq_len >= 4 * n_pairs, got seq_len={self.seq_len}, n_pairs={self.n_pairs}")
        if self.vocab_size // 2 <= self.n_pairs or self.vocab_size <= self.seq_len:
            raise UserError(f"vocab_size {self.vocab_size} is too small for {self.n_pairs} pairs in {self.seq_len} tokens")

    @property
    def name(self) -> str:
        return f"mqar-{self.seq_len}-{self.n_pairs}"


@dataclass
class RecallBudget:
    """How much each model trains; every run is reproducible from (task, model, lr, seed)."""

    steps: int = 300
    batch_size: int = 32
    lrs: tuple = (3e-3, 1e-2)
    seeds: tuple = (0,)
    test_examples: int = 1000
    warmup: float = 0.1  # fraction of steps with a linear warm-up, then cosine decay to 0
    weight_decay: float = 0.1
    physical_lr_scale: float = 1.0  # learning rate of omega, alpha, phi relative to the rest
    eval_every: int = 0  # steps between points of the learning curve (0: no curve)
    curve_examples: int = 256  # test sequences each point of the curve scores (the first ones)
    stop_at: float | None = None  # end a run once a point of its curve reaches this accuracy (Zoology stops at 0.99)

    def __post_init__(self):
        if min(self.steps, self.batch_size, self.test_examples, self.curve_examples) < 1 or not self.lrs or not self.seeds or min(self.lrs) <= 0:
            raise UserError(f"a recall budget needs steps, batch_size, test_examples, curve_examples >= 1 and positive learning rates, got {self}")
        if self.eval_every < 0 or (self.stop_at is not None and not (0 < self.stop_at <= 1 and self.eval_every)):
            raise UserError(f"a recall budget needs eval_every >= 0, and stop_at in (0, 1] only with a curve (eval_every > 0), got {self}")


WAVE_KINDS = ("wave", "hybrid", "wave-channel", "wave-outer")  # the kinds with wave layers, which take the wave options
THRESHOLDS = (0.5, 0.9, 0.99)  # the curve reports the training sequences needed to reach each
QUICK = RecallBudget(steps=30, batch_size=16, lrs=(3e-3,), test_examples=64)
TASKS = (RecallTask(256, 16), RecallTask(512, 64))


def kind_layer_types(kind: str, n_layers: int, attention: tuple | None = None) -> list[str]:
    """The layer types of a model kind: "wave" is the default architecture
    (config.default_layer_types), a kind of UNIFORM_KINDS one layer type throughout, "hybrid" the
    default with attention at the indices `attention` (default: every fourth layer counted from
    the first, or the last layer when there are fewer than four)."""
    if kind in UNIFORM_KINDS:
        return [UNIFORM_KINDS[kind]] * n_layers
    types = default_layer_types(n_layers)
    if kind == "wave":
        return types
    if kind != "hybrid":
        raise UserError(f"model kind must be one of {MODEL_KINDS}, got {kind!r}")
    attention = tuple(attention) if attention is not None else tuple(i for i in range(n_layers) if (i + 1) % 4 == 0) or (n_layers - 1,)
    if not attention or len(set(attention)) == n_layers or not all(0 <= i < n_layers for i in attention):
        raise UserError(f"a hybrid's attention layers must be some, not all, of 0..{n_layers - 1}, got {list(attention)}")
    return ["attention" if i in attention else t for i, t in enumerate(types)]


def mqar(n: int, task: RecallTask, generator: torch.Generator):
    """n examples: inputs (n, seq_len) int64 and targets (n, seq_len), IGNORE off the answers, made
    on the generator's device (a CPU generator gives the same examples whatever the default device)."""
    P, V, N, on = task.n_pairs, task.vocab_size, task.seq_len, {"device": generator.device}
    keys = torch.rand(n, V // 2 - 1, generator=generator, **on).argsort(-1)[:, :P] + 1  # distinct, in [1, V/2)
    values = torch.rand(n, V - V // 2, generator=generator, **on).argsort(-1)[:, :P] + V // 2  # in [V/2, V)
    slots = (N - 2 * P) // 2  # a query may sit at any even offset after the pairs
    gap_p = task.power_a * torch.arange(1, slots + 1, dtype=torch.float64, **on) ** (task.power_a - 1)
    gaps = torch.multinomial(gap_p.expand(n, slots), P, replacement=False, generator=generator)  # (n, P)
    inputs = torch.zeros(n, N, dtype=torch.long, **on)
    inputs[:, 0 : 2 * P : 2], inputs[:, 1 : 2 * P : 2] = keys, values
    where = 2 * P + 2 * gaps  # query positions
    inputs.scatter_(1, where, keys)
    targets = torch.full((n, N), IGNORE, dtype=torch.long, **on).scatter_(1, where, values)
    return inputs, targets


def recall_config(
    kind: str,
    task: RecallTask,
    d_model: int = 128,
    n_layers: int = 2,
    n_heads: int = 4,
    mlp_ratio: float = 0.0,
    init_std: float | None = None,
    hybrid_attention: tuple | None = None,
    **wave,
) -> WaveFieldConfig:
    """The model of `kind` (kind_layer_types; a hybrid's attention layers are the indices in
    `hybrid_attention`, default the last layer) for a task, with the default config's options.
    Blocks have no MLP by default, as in Zoology's recall models, and weights start at std
    d_model^-0.5 unless init_std says otherwise. `wave` holds WaveFieldConfig options of the wave
    layers; its "layer_types", where given, are the wave model's (a candidate architecture)."""
    given = wave.pop("layer_types", None)
    attention = hybrid_attention if hybrid_attention is not None else (n_layers - 1,)
    layer_types = given if kind == "wave" and given is not None else kind_layer_types(kind, n_layers, attention)
    return WaveFieldConfig(
        vocab_size=task.vocab_size,
        d_model=d_model,
        n_layers=len(layer_types),
        n_heads=n_heads,
        layer_types=layer_types,
        mlp_ratio=mlp_ratio,
        init_std=init_std or d_model**-0.5,
        **wave,
    )


def answer_logits(model: WaveFieldLM, inputs, targets):
    """Logits at the answer positions only (M, vocab) and their targets (M,): the output head
    runs on M = batch * n_pairs rows instead of every token."""
    inputs, targets = inputs.to(model.embed.weight.device), targets.to(model.embed.weight.device)
    positions = (targets != IGNORE).nonzero()[:, 1].view(len(targets), -1)  # (B, n_pairs): each sequence has n_pairs answers
    return model(inputs, logits_at=positions).flatten(0, 1), targets.gather(1, positions).flatten()


@torch.no_grad()
def recall_accuracy(model: WaveFieldLM, inputs, targets, batch_size: int = 100) -> float:
    model.eval()
    hits = total = 0
    for i in range(0, len(inputs), batch_size):
        logits, answers = answer_logits(model, inputs[i : i + batch_size], targets[i : i + batch_size])
        hits += (logits.argmax(-1) == answers).sum().item()
        total += answers.numel()
    return hits / total


def train_recall(cfg: WaveFieldConfig, task: RecallTask, budget: RecallBudget, lr: float, seed: int, test, log=None, device="cpu") -> dict:
    """Train one model on fresh MQAR batches, then score it on `test` = (inputs, targets).

    With budget.eval_every, the run also records its learning curve: accuracy on the first
    curve_examples test sequences against the training sequences seen, and stops early once
    that reaches budget.stop_at (the schedule stays the one of budget.steps)."""
    torch.manual_seed(seed)
    model = WaveFieldLM(cfg).to(device)
    opt = make_optimizer(model, lr, budget.weight_decay, budget.physical_lr_scale, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(1_000_003 * seed + 1)  # training data: its own stream per seed
    warm = max(1, int(budget.warmup * budget.steps))
    curve_set = tuple(t[: budget.curve_examples] for t in test)
    losses, curve, start = [], [], time.perf_counter()
    for step in range(budget.steps):
        set_lr(opt, lr_at(step, lr, warm, budget.steps, min_lr_ratio=0.0))
        model.train()
        logits, answers = answer_logits(model, *mqar(budget.batch_size, task, gen))
        loss = F.cross_entropy(logits, answers)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if log and (step + 1) % max(1, budget.steps // 10) == 0:
            log(f"  step {step + 1}/{budget.steps} loss {sum(losses[-20:]) / len(losses[-20:]):.3f}")
        if budget.eval_every and ((step + 1) % budget.eval_every == 0 or step + 1 == budget.steps):
            curve.append([(step + 1) * budget.batch_size, recall_accuracy(model, *curve_set)])
            if budget.stop_at is not None and curve[-1][1] >= budget.stop_at:
                break
    train_s = time.perf_counter() - start
    return {
        "accuracy": recall_accuracy(model, *test),
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "train_seconds": round(train_s, 1),
        "steps": len(losses),
        "parameters": model.num_parameters(),
        **({"curve": curve, "sequences_to": sequences_to(curve)} if budget.eval_every else {}),
    }


def sequences_to(curve, thresholds=THRESHOLDS) -> dict:
    """The training sequences seen at the first point of `curve` = [[sequences, accuracy], ...]
    that reaches each threshold (None where none does)."""
    return {f"{t:g}": next((n for n, acc in curve if acc >= t), None) for t in thresholds}


def bench_recall(
    kinds=DEFAULT_KINDS,
    tasks=TASKS,
    budget: RecallBudget | None = None,
    wave=None,
    d_model: int = 128,
    n_layers: int = 2,
    n_heads: int = 4,
    init_std: float | None = None,
    out_dir=None,
    log=print,
    device="cpu",
    hybrid_attention: tuple | None = None,
) -> list[dict]:
    """Every model kind on every task; one record per (task, kind) with its best learning rate.

    Writes recall.json and recall.md into out_dir when given. `wave` holds the wave options
    (WaveFieldConfig fields) of the wave and hybrid models.
    """
    budget = budget or RecallBudget()
    wave = dict(wave or {})
    configs = {
        (task.name, kind): recall_config(
            kind, task, d_model, n_layers, n_heads, init_std=init_std, hybrid_attention=hybrid_attention, **(wave if kind in WAVE_KINDS else {})
        )
        for task in tasks
        for kind in kinds
    }
    records = []
    for task in tasks:
        test = mqar(budget.test_examples, task, torch.Generator().manual_seed(123_456_789))  # fixed test set
        for kind in kinds:
            cfg = configs[task.name, kind]
            runs = []
            for lr in budget.lrs:
                for seed in budget.seeds:
                    log(f"{task.name} {kind} lr={lr:g} seed={seed}")
                    run = train_recall(cfg, task, budget, lr, seed, test, log, device)
                    log(f"  accuracy {run['accuracy']:.4f} ({run['train_seconds']} s)")
                    runs.append({"lr": lr, "seed": seed, **run})
            by_lr = {lr: [r["accuracy"] for r in runs if r["lr"] == lr] for lr in budget.lrs}
            best_lr = max(by_lr, key=lambda lr: sum(by_lr[lr]) / len(by_lr[lr]))
            records.append(
                {
                    "task": task.name,
                    "seq_len": task.seq_len,
                    "n_pairs": task.n_pairs,
                    "model": kind,
                    "accuracy": sum(by_lr[best_lr]) / len(by_lr[best_lr]),
                    "best_lr": best_lr,
                    "parameters": runs[0]["parameters"],
                    "layer_types": cfg.layer_types,
                    "wave_options": wave if kind in WAVE_KINDS else None,
                    "config": cfg.to_dict(),
                    "runs": runs,
                }
            )
    if out_dir is not None:
        write_recall_report(records, budget, Path(out_dir))
    return records


def write_recall_report(records: list[dict], budget: RecallBudget, out_dir: Path):
    """recall.json (every run, curves included), recall.md (a table), and with curves recall_curves.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"budget": dataclasses.asdict(budget), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"}
    write_text_atomic(out_dir / "recall.json", json.dumps({**meta, "records": records}, indent=2) + "\n")
    curves = budget.eval_every > 0
    reach = " | sequences to " + " / ".join(f"{t:g}" for t in THRESHOLDS) + " (best lr, per seed)" if curves else ""
    lines = [
        "# MQAR (multi-query associative recall)",
        "",
        f"Budget: {budget.steps} steps of {budget.batch_size} fresh sequences, learning rates {list(budget.lrs)} "
        f"(best kept), seeds {list(budget.seeds)}, {budget.test_examples} test sequences"
        + (f"; a curve point every {budget.eval_every} steps on {budget.curve_examples} of them" if curves else "")
        + (f", a run stops at {budget.stop_at:g}" if budget.stop_at is not None else "")
        + f". Machine: {meta['machine']}.",
        "",
        f"| task | model | layers | parameters | accuracy | best lr | accuracy at each lr | train s / run{reach} |",
        "|---|---|---|---|---|---|---|---|" + ("---|" if curves else ""),
    ]
    for r in records:
        secs = sum(x["train_seconds"] for x in r["runs"]) / len(r["runs"])
        by_lr = ", ".join(f"{lr:g}: {acc:.3f}" for lr, acc in _mean_by_lr(r["runs"]).items())
        row = f"| {r['task']} | {r['model']} | {'+'.join(r['layer_types'])} | {r['parameters']:,} | {r['accuracy']:.4f} | {r['best_lr']:g} | {by_lr} | {secs:.0f} |"
        if curves:
            best = [x["sequences_to"] for x in r["runs"] if x["lr"] == r["best_lr"]]
            row += " " + "; ".join(" / ".join(f"{v:,}" if v is not None else "-" for v in reached.values()) for reached in best) + " |"
        lines.append(row)
    write_text_atomic(out_dir / "recall.md", "\n".join(lines) + "\n")
    if curves:
        plot_curves(records, out_dir / "recall_curves.png")


def _mean_by_lr(runs: list[dict]) -> dict:
    lrs = sorted({r["lr"] for r in runs})
    return {lr: sum(r["accuracy"] for r in runs if r["lr"] == lr) / sum(r["lr"] == lr for r in runs) for lr in lrs}


def plot_curves(records: list[dict], png: Path):
    """Accuracy against training sequences seen: one panel per task, a line per model, lr and seed (the best lr bold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in records))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    colours = dict(zip(dict.fromkeys(r["model"] for r in records), plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, task in zip(axes[0], tasks):
        for r in (r for r in records if r["task"] == task):
            for run in r["runs"]:
                best = run["lr"] == r["best_lr"]
                ax.plot(
                    *zip(*run["curve"]),
                    color=colours[r["model"]],
                    lw=2 if best else 0.7,
                    alpha=1 if best else 0.5,
                    label=f"{r['model']} lr {run['lr']:g}" if best and run["seed"] == r["runs"][0]["seed"] else None,
                )
        ax.set(xscale="log", xlabel="training sequences seen", ylabel="accuracy", title=task, ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
