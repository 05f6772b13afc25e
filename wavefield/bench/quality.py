"""Language-model quality at matched size: wave, transformer, hybrid and peers on the same data.

Every model trains through `wavefield.train.train` on the same corpus, tokenizer, windows,
batches (a function of seed and step) and token budget. The reference is the wave model of
the preset, the default architecture ("wave" layers, every second one "wave-outer"); the
transformer (every layer attention), the hybrid (the default with one attention layer in
four, counted from the first; the last layer if there are fewer than four), the peers,
"conv-transformer" (every layer attention with the wave layer's short conv on q, k, v) and
"mamba2" (every layer the Mamba-2 style state-space mixer), and the default's two kinds of
wave layer alone, "wave-channel" and "wave-outer", get the MLP width that brings their
parameter count within 5% of it (recall.kind_layer_types). Ablations are wave models with one
design choice changed (ABLATIONS); they keep the preset's MLP width.

Learning rate: the same sweep for every model. Each rate in `lrs` trains `sweep_steps` steps
of the full schedule (warm-up, then cosine decay over `steps`); the `finalists` rates with the
lowest validation loss there (1 by default) are resumed from their checkpoints to `steps`, and
the one that ends with the lowest validation loss is kept (an early lead does not always last:
docs/quality.md). So every model's final run is one uninterrupted schedule, and the sweep costs
(len(lrs) - finalists) * sweep_steps + (finalists - 1) * steps extra steps. A rate whose loss
stops being finite loses; an interruption (Ctrl-C, SIGTERM) stops the whole comparison.
The test split is never used to choose.

Figures: validation and test loss, perplexity and bits per byte of the final model (over
`final_windows` evenly spaced windows of each split, all of them when None), tokens/s of
training (wall-clock of the training loop, periodic validation included), parameter counts,
and the validation curve against tokens and against wall-clock time.
"""

import dataclasses
import json
import math
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import LAYER_LETTERS, WaveFieldConfig
from ..data import load_corpus, prepare_data
from ..errors import UserError
from ..evaluate import evaluate_tokens, summarize
from ..io import atomic_path, write_text_atomic
from ..model import WaveFieldLM
from ..train import PRESETS, TrainArgs, TrainingDiverged, train
from .recall import MODEL_KINDS, kind_layer_types

DEFAULT_MODELS = ("wave", "transformer", "hybrid")  # what `bench quality` compares unless told
# wave models with one design choice changed: "wave-NAME" in the list of models
ABLATIONS = {
    "no-conv": {"short_conv": 0},
    "no-gate": {"wave_gate": False},
    "silu": {"feature_map": "silu"},
    "elu1": {"feature_map": "elu1"},
    "outer-deposit": {"wave_deposit": "outer"},  # on the "wave" layers too (the "wave-outer" ones have it)
    "norm": {"wave_norm": True},
    "single-scale": {"reach_min": 64.0, "reach_max": 64.0},
    "frozen": {"freeze_physics": True},
}
MATCH_TOLERANCE = 0.05


@dataclass
class QualityBudget:
    preset: str = "small"
    steps: int = 800
    sweep_steps: int = 150
    lrs: tuple = (1e-3, 3e-3)
    batch_size: int = 8
    seq_len: int = 256
    eval_interval: int = 100
    eval_windows: int = 24  # validation windows scored along the way
    final_windows: int | None = 200  # windows of val and test scored at the end (None: all)
    seed: int = 0
    physical_lr_scale: float = 1.0  # learning rate of the wave heads' omega, alpha, phi relative to the rest
    finalists: int = 1  # the best rates of the sweep resumed to `steps`; the best at the end is kept

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise UserError(f"unknown preset {self.preset!r} (choose from {', '.join(PRESETS)})")
        if not 1 <= self.sweep_steps <= self.steps or min(self.batch_size, self.seq_len, self.eval_interval, self.eval_windows) < 1:
            raise UserError(f"a quality budget needs 1 <= sweep_steps <= steps and positive sizes, got {self}")
        if not self.lrs or min(self.lrs) <= 0 or (self.final_windows is not None and self.final_windows < 1):
            raise UserError(f"a quality budget needs positive learning rates and final_windows, got {self}")
        if not 1 <= self.finalists <= len(self.lrs):
            raise UserError(f"a quality budget's finalists must lie in [1, {len(self.lrs)}] (the number of learning rates), got {self.finalists}")
        if not 0 <= self.physical_lr_scale <= 1e3:
            raise UserError(f"a quality budget's physical_lr_scale must lie in [0, 1000], got {self.physical_lr_scale}")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


QUICK = QualityBudget(preset="tiny", steps=6, sweep_steps=3, lrs=(3e-3, 1e-2), batch_size=4, seq_len=32, eval_interval=3, eval_windows=4, final_windows=8)


def _count(cfg: WaveFieldConfig, hidden: int) -> int:
    with torch.device("meta"):  # counts without allocating weights
        return WaveFieldLM(dataclasses.replace(cfg, mlp_ratio=(hidden + 0.5) / cfg.d_model)).num_parameters()


def match_parameters(cfg: WaveFieldConfig, target: int) -> WaveFieldConfig:
    """`cfg` with the MLP width whose parameter count is closest to `target` (the count is linear in it)."""
    d = cfg.d_model
    per_unit = (_count(cfg, 2 * d) - _count(cfg, d)) / d
    hidden = max(1, round(d + (target - _count(cfg, d)) / per_unit))
    matched = dataclasses.replace(cfg, mlp_ratio=(hidden + 0.5) / d)
    count = _count(cfg, hidden)
    if abs(count / target - 1) > MATCH_TOLERANCE:
        raise UserError(f"cannot match {target:,} parameters within {MATCH_TOLERANCE:.0%} with layers {cfg.layer_types} (closest {count:,})")
    return matched


def model_configs(models, budget: QualityBudget, vocab_size: int, model: dict | None = None) -> dict:
    """name -> WaveFieldConfig for each requested model: one of MODEL_KINDS or "wave-ABLATION".
    The wave model (and its ablations) takes the layer types of `model` where it names them;
    every other kind has its own (recall.kind_layer_types)."""
    base = WaveFieldConfig(**{**PRESETS[budget.preset]["model"], **(model or {}), "vocab_size": vocab_size})
    target = _count(base, int(base.mlp_ratio * base.d_model))
    configs = {}
    for name in models:
        if name in MODEL_KINDS:
            cfg = base if name == "wave" else dataclasses.replace(base, layer_types=kind_layer_types(name, base.n_layers))
            configs[name] = cfg if name == "wave" else match_parameters(cfg, target)
        elif name.startswith("wave-") and name[5:] in ABLATIONS:
            configs[name] = dataclasses.replace(base, **ABLATIONS[name[5:]])
        else:
            choices = ", ".join([*MODEL_KINDS, *(f"wave-{a}" for a in ABLATIONS)])
            raise UserError(f"unknown model {name!r} (choose from {choices})")
    return configs


def read_curve(run_dir: Path, tokens_per_step: int) -> list[dict]:
    """The validation points of a run: step, tokens, wall-clock seconds of training so far, loss.
    A resumed run restarts its clock, so the segments are added up."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    clock, offset, last = {}, 0.0, 0.0
    for r in records:
        if r["type"] == "train":
            if r["elapsed_s"] < last:  # the first record after a resume
                offset += last
            last = r["elapsed_s"]
            clock[r["step"]] = offset + r["elapsed_s"]
    return [
        {"step": r["step"], "tokens": r["step"] * tokens_per_step, "seconds": clock.get(r["step"]), "val_loss": r["val_loss"]}
        for r in records
        if r["type"] == "val"
    ]


def _train_args(budget: QualityBudget, cfg: WaveFieldConfig, out: Path, lr: float, data, tokenizer, vocab_size, cache_dir, device) -> TrainArgs:
    model = {k: v for k, v in cfg.to_dict().items() if k not in ("config_version", "vocab_size")}
    return TrainArgs(
        preset=budget.preset,
        data=data,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        out=str(out),
        max_steps=budget.sweep_steps,
        decay_steps=budget.steps,
        seq_len=budget.seq_len,
        batch_size=budget.batch_size,
        lr=lr,
        seed=budget.seed,
        physical_lr_scale=budget.physical_lr_scale,
        eval_interval=budget.eval_interval,
        eval_windows=budget.eval_windows,
        log_interval=budget.eval_interval,
        checkpoint_interval=budget.steps,
        cache_dir=cache_dir,
        device=device,
        model=model,
    )


def _loss(value: float) -> float:
    """A validation loss to rank by: NaN (which sorts nowhere) counts as infinitely bad, as a diverged rate does."""
    return math.inf if math.isnan(value) else value


def train_with_sweep(name: str, cfg: WaveFieldConfig, budget: QualityBudget, out: Path, log=print, **data) -> tuple:
    """The learning-rate sweep, then its best `budget.finalists` rates resumed to the full budget,
    the best at the end kept; returns (model, record)."""
    sweep = {}
    for lr in budget.lrs:
        run_dir = out / name / f"lr-{lr:g}"
        log(f"{name}: lr {lr:g}, {budget.sweep_steps} steps")
        try:
            train(_train_args(budget, cfg, run_dir, lr, **data))
            sweep[lr] = _loss(read_curve(run_dir, budget.tokens_per_step)[-1]["val_loss"])
        except TrainingDiverged:  # this rate loses the sweep
            sweep[lr] = math.inf
    finalists = [lr for lr in sorted(sweep, key=sweep.get)[: budget.finalists] if math.isfinite(sweep[lr])]
    if not finalists:
        raise UserError(f"{name}: every learning rate of the sweep diverged ({list(budget.lrs)})")
    final, model, best, diverged = {}, None, None, None
    for lr in finalists:
        run_dir = out / name / f"lr-{lr:g}"
        log(f"{name}: lr {lr:g}, resumed to {budget.steps} steps")
        try:
            trained = train(TrainArgs(out=str(run_dir), resume=True, max_steps=budget.steps, device=data["device"]))
        except TrainingDiverged as e:  # a finalist that diverges later loses too
            final[lr], diverged = math.inf, e
            continue
        final[lr] = _loss(read_curve(run_dir, budget.tokens_per_step)[-1]["val_loss"])
        if best is None or final[lr] < final[best]:
            model, best = trained, lr
    if model is None:
        raise diverged
    if len(finalists) > 1:
        log(f"{name}: best lr {best:g} at the end")
    run_dir = out / name / f"lr-{best:g}"
    curve = read_curve(run_dir, budget.tokens_per_step)
    seconds = curve[-1]["seconds"]
    return model, {
        "model": name,
        "layer_types": cfg.layer_types,
        "mlp_ratio": cfg.mlp_ratio,
        "parameters": model.num_parameters(),
        "best_lr": best,
        "sweep_val_loss": {f"{lr:g}": v for lr, v in sweep.items()},
        "finalist_val_loss": {f"{lr:g}": v for lr, v in final.items()},  # at the end of each finalist's run
        "run_dir": str(run_dir),
        "tokens": budget.steps * budget.tokens_per_step,
        "train_seconds": seconds,
        "tokens_per_s": budget.steps * budget.tokens_per_step / seconds if seconds else None,
        "curve": curve,
        "config": cfg.to_dict(),
    }


def bench_quality(
    models=DEFAULT_MODELS,
    budget: QualityBudget | None = None,
    out_dir="runs/quality",
    data=None,
    tokenizer="bpe",
    vocab_size=8192,
    cache_dir=None,
    model: dict | None = None,
    device="cpu",
    log=print,
) -> list[dict]:
    """Train and score every model; write quality.json, quality.md and quality.png into out_dir."""
    budget = budget or QualityBudget()
    out = Path(out_dir)
    corpus = load_corpus(data)
    tokens = prepare_data(corpus, tokenizer, vocab_size, cache_dir)
    configs = model_configs(models, budget, tokens.tokenizer.vocab_size, model)
    records = []
    for name, cfg in configs.items():
        trained, record = train_with_sweep(
            name, cfg, budget, out / "runs", log, data=data, tokenizer=tokenizer, vocab_size=vocab_size, cache_dir=cache_dir, device=device
        )
        for split in ("val", "test"):
            scored = evaluate_tokens(trained, tokens.tokens[split], budget.seq_len, budget.batch_size, device, budget.final_windows)
            record[split] = summarize(scored["nll"], scored["tokens"], tokens.bytes_per_token(split))
        log(f"{name}: val ppl {record['val']['ppl']:.2f}, test ppl {record['test']['ppl']:.2f}, {record['parameters']:,} parameters")
        records.append(record)
    write_quality_report(records, budget, corpus.name, out)
    return records


def write_quality_report(records: list[dict], budget: QualityBudget, corpus: str, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "budget": dataclasses.asdict(budget),
        "corpus": corpus,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    write_text_atomic(out / "quality.json", json.dumps({**meta, "records": records}, indent=2) + "\n")
    ref = next((r for r in records if r["model"] == "transformer"), None)
    b = budget
    lines = [
        "# Language-model quality at matched parameters",
        "",
        f"Corpus {corpus}; preset {b.preset}; {b.steps} steps of {b.batch_size} x {b.seq_len} tokens "
        f"({b.steps * b.tokens_per_step:,} tokens) per model; learning rates {list(b.lrs)} swept over the first {b.sweep_steps} steps, "
        + ("best resumed" if b.finalists == 1 else f"the best {b.finalists} resumed to the end and the best there kept by validation loss")
        + f"; final figures over {b.final_windows or 'all'} windows of each split"
        + (f"; the wave heads' omega, alpha, phi at {b.physical_lr_scale:g} x the learning rate" if b.physical_lr_scale != 1 else "")
        + "".join(f"; dropout {p:g}" for p in sorted({r["config"].get("dropout", 0.0) for r in records}) if p)
        + f". Machine: {meta['machine']}.",
        "",
        "| model | layers | parameters | best lr | val ppl | val bits/byte | test ppl | test bits/byte | val ppl / transformer | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        ratio = f"{r['val']['ppl'] / ref['val']['ppl']:.3f}" if ref else "-"
        speed = f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] else "-"
        lines.append(
            f"| {r['model']} | {''.join(LAYER_LETTERS[t] for t in r['layer_types'])} | {r['parameters']:,} | {r['best_lr']:g} | "
            f"{r['val']['ppl']:.2f} | {r['val']['bpb']:.4f} | {r['test']['ppl']:.2f} | {r['test']['bpb']:.4f} | {ratio} | {speed} |"
        )
    lines += [
        "",
        f"Layers: {', '.join(f'{letter} {kind}' for kind, letter in LAYER_LETTERS.items())}. tokens/s: training loop wall-clock, periodic validation included.",
        "",
        "![validation loss](quality.png)",
    ]
    write_text_atomic(out / "quality.md", "\n".join(lines) + "\n")
    plot_quality(records, out / "quality.png")


def plot_quality(records: list[dict], png: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for r in records:
        points = [p for p in r["curve"] if p["seconds"] is not None]
        axes[0].plot([p["tokens"] for p in r["curve"]], [p["val_loss"] for p in r["curve"]], marker="o", label=r["model"])
        axes[1].plot([p["seconds"] for p in points], [p["val_loss"] for p in points], marker="o", label=r["model"])
    axes[0].set(xlabel="training tokens", ylabel="validation loss (nats/token)")
    axes[1].set(xlabel="training wall-clock (s)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
