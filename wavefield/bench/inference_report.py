"""Markdown tables, target checks and PNG plots from the records of `wavefield bench inference`."""

import statistics
from pathlib import Path

from ..config import LAYER_LETTERS
from .report import _fmt, _table, pyplot

REFERENCE = "wave"  # ratios are other model / the wave model (time, memory) or wave / other (tokens/s)
MEASURED = ("prefill_s", "ttft_s", "total_s", "decode_s_per_token", "decode_tokens_per_s", "peak_mb")  # what repeats vary


def summarise(records) -> list:
    """The records with each measurement's repeats (bench inference --repeats) made one: the
    median of each figure in MEASURED, the number of runs in "repeats" and every run's total
    seconds in "total_s_runs". Records without repeats (and records made so) pass unchanged."""
    groups = {}
    for r in records:
        key = (r["kind"], r["model"], r["context"], r.get("batch"), r["skipped"]) if "repeat" in r else id(r)
        groups.setdefault(key, []).append(r)
    out = []
    for runs in groups.values():
        if len(runs) == 1:
            out.append(runs[0])
            continue
        merged = dict(runs[0], repeats=len(runs))
        del merged["repeat"]
        if not merged["skipped"]:
            for k in MEASURED:
                values = [r[k] for r in runs]
                merged[k] = statistics.median(values) if None not in values else None
            merged["total_s_runs"] = [r["total_s"] for r in runs]
        out.append(merged)
    return out


def repeat_ratios(records, context: int = 65536) -> list:
    """The time target's ratio in each repeat: the transformer's best total at `context` over
    the wave model's best (each with or without its one-pass variant), repeat by repeat."""
    ratios = []
    for repeat in sorted({r["repeat"] for r in records if "repeat" in r}):
        same = [r for r in records if r.get("repeat") == repeat]
        fastest, wave = _best(same, "context", "transformer", context, "total_s"), _best(same, "context", REFERENCE, context, "total_s")
        if fastest and wave:
            ratios.append(fastest["total_s"] / wave["total_s"])
    return ratios


def _done(records, kind):
    return [r for r in records if r["kind"] == kind and not r["skipped"]]


def _find(records, kind, model, context, batch=1):
    for r in _done(records, kind):
        if r["model"] == model and r["context"] == context and r["batch"] == batch:
            return r
    return None


def _best(records, kind, family, context, key, batch=1):
    """The record of the `family` model (with or without its one-pass variant) with the lowest
    `key` at this context: each target compares each model's best figure, and names it."""
    found = [r for r in _done(records, kind) if r["model"].split(" (")[0] == family and r["context"] == context and r["batch"] == batch and r[key]]
    return min(found, key=lambda r: r[key]) if found else None


def targets(records, new_tokens_target: int = 256) -> list:
    """(description, measured, met) for the targets of this benchmark that the records cover
    (with repeats, each figure's median: summarise)."""
    records, checks = summarise(records), []
    wave64 = _find(records, "context", "wave", 65536)
    fastest, leanest = _best(records, "context", "transformer", 65536, "total_s"), _best(records, "context", "transformer", 65536, "peak_mb")
    fast_wave, lean_wave = _best(records, "context", "wave", 65536, "total_s"), _best(records, "context", "wave", 65536, "peak_mb")
    if fast_wave and fastest and fast_wave["new_tokens"] == new_tokens_target:
        ratio = fastest["total_s"] / fast_wave["total_s"]
        checks.append((f"64K prompt + 256 tokens: total time, {fastest['model']} / {fast_wave['model']} >= 20", ratio, ratio >= 20))
        if lean_wave and leanest:
            ratio = leanest["peak_mb"] / lean_wave["peak_mb"]
            checks.append((f"64K prompt + 256 tokens: peak memory, {leanest['model']} / {lean_wave['model']} >= 17.4", ratio, ratio >= 17.4))
    wave1k = _find(records, "context", "wave", 1024)
    if wave64 and wave1k:
        ratio = wave64["decode_s_per_token"] / wave1k["decode_s_per_token"]
        checks.append(("wave decode per token at 64K / at 1K <= 1.2", ratio, ratio <= 1.2))
    wave16, attn16 = _find(records, "batch", "wave", 8192, 16), _find(records, "batch", "transformer", 8192, 16)
    if wave16 and attn16:
        ratio = wave16["decode_tokens_per_s"] / attn16["decode_tokens_per_s"]
        checks.append(("batch 16 at 8K: wave decode tokens/s / transformer's >= 10", ratio, ratio >= 10))
    return checks


def _context_tables(records):
    rows = _done(records, "context")
    if not rows:
        return []
    models = list(dict.fromkeys(r["model"] for r in rows))
    table = [
        [
            f"{r['context']:,}",
            r["model"],
            _fmt(r["prefill_s"]),
            _fmt(r["ttft_s"]),
            _fmt(r["decode_s_per_token"] * 1000),
            _fmt(r["total_s"]),
            _fmt(r["peak_mb"]),
            _fmt(r["state_mb"]),
        ]
        for r in sorted(rows, key=lambda r: (r["context"], models.index(r["model"])))
    ]
    header = ["context", "model", "prefill s", "first token s", "decode ms/token", "total s", "peak MiB", "state MiB"]
    sections = [f"### One prompt, then {rows[0]['new_tokens']} new tokens (batch 1)\n\n" + _table(header, table)]
    others = [m for m in models if m != REFERENCE]
    if REFERENCE in models and others:
        ratio_rows = []
        for n in sorted({r["context"] for r in rows}):
            wave = _find(records, "context", REFERENCE, n)
            cells = [f"{n:,}"]
            for m in others:
                other = _find(records, "context", m, n)
                both = wave is not None and other is not None
                cells += [
                    f"{_fmt(other['total_s'] / wave['total_s'])}x" if both else "-",
                    f"{_fmt(other['peak_mb'] / wave['peak_mb'])}x" if both and wave["peak_mb"] and other["peak_mb"] else "-",
                ]
            ratio_rows.append(cells)
        header = ["context"] + [f"{m} / wave {what}" for m in others for what in ("total time", "peak memory")]
        sections.append("### Ratios to the wave model (same run)\n\n" + _table(header, ratio_rows))
    return sections


def _batch_table(records):
    rows = _done(records, "batch")
    if not rows:
        return []
    models = list(dict.fromkeys(r["model"] for r in rows))
    table = []
    for n, B in sorted({(r["context"], r["batch"]) for r in rows}):
        wave = _find(records, "batch", REFERENCE, n, B)
        for m in models:
            r = _find(records, "batch", m, n, B)
            if r is None:
                continue
            ratio = f"{_fmt(wave['decode_tokens_per_s'] / r['decode_tokens_per_s'])}x" if wave is not None and m != REFERENCE else "-"
            table.append([f"{n:,}", str(B), m, _fmt(r["decode_tokens_per_s"]), ratio, _fmt(r["prefill_s"]), _fmt(r["peak_mb"]), _fmt(r["state_mb"])])
    header = ["context", "batch", "model", "decode tokens/s", "wave / model", "prefill s", "peak MiB", "state MiB"]
    title = f"### Batched decoding: left-padded prompts of [context/2, context] tokens, then {rows[0]['new_tokens']} new tokens"
    return [title + "\n\n" + _table(header, table)]


def _flops_table(records):
    rows = [r for r in records if r["kind"] == "flops"]
    if not rows:
        return []
    n = rows[0]["context"]
    wave = next((r for r in rows if r["model"] == REFERENCE), None)
    table = []
    for r in rows:
        measured = _find(records, "context", r["model"], n)
        wave_measured = _find(records, "context", REFERENCE, n)
        table.append(
            [
                r["model"],
                _fmt(r["prefill_gflops"]),
                f"{_fmt(r['prefill_gflops'] / wave['prefill_gflops'])}x" if wave else "-",
                _fmt(measured["prefill_s"]) if measured else "-",
                f"{_fmt(measured['prefill_s'] / wave_measured['prefill_s'])}x" if measured and wave_measured else "-",
                _fmt(r["decode_gflops"] * 1000),
                f"{_fmt(r['decode_gflops'] / wave['decode_gflops'])}x" if wave else "-",
            ]
        )
    header = ["model", "prefill GFLOPs", "/ wave", "prefill s (measured)", "/ wave", "decode MFLOPs per token", "/ wave"]
    return [f"### Operations at {n:,} tokens (theoretical) beside the measured time\n\n" + _table(header, table)]


def _dense_table(records):
    rows = [r for r in records if r["kind"] == "dense"]
    if not rows:
        return []
    pct = lambda part, whole: f"{_fmt(part * 1000)} ({100 * part / whole:.0f}%)"  # noqa: E731
    table = [
        [r["model"], _fmt(r["piece_s"] * 1000), pct(r["piece_dense_s"], r["piece_s"]), _fmt(r["step_s"] * 1000), pct(r["step_dense_s"], r["step_s"])]
        for r in rows
    ]
    n = rows[0]["context"]
    header = ["model", f"first {n}-token piece ms", "its dense projections ms (share)", "decode step ms", "its dense projections ms (share)"]
    text = ["### Where the time goes: the dense projections alone (the same matmuls on random input)\n\n" + _table(header, table)]
    wave, fastest = next((r for r in rows if r["model"] == REFERENCE), None), _best(records, "context", "transformer", 65536, "total_s")
    measured = _best(records, "context", REFERENCE, 65536, "total_s")
    if wave and fastest and measured:  # a lower bound on the wave model's 64K time: its projections and nothing else
        floor = 65536 / n * wave["piece_dense_s"] + measured["new_tokens"] * wave["step_dense_s"]
        text.append(
            f"With nothing but its dense projections, the wave model would read the 65,536-token prompt and write "
            f"{measured['new_tokens']} tokens in {_fmt(floor)} s ({_fmt(measured['total_s'])} s measured): "
            f"{_fmt(fastest['total_s'] / floor)}x faster than {fastest['model']} ({_fmt(fastest['total_s'] / measured['total_s'])}x measured)."
        )
    return ["\n\n".join(text)]


def _document_table(records):
    rows = _done(records, "document")
    if not rows:
        return []
    r0 = rows[0]
    table = [
        [
            r["model"],
            _fmt(r["file_mb"]),
            _fmt(r["read_s"]),
            _fmt(r["save_s"]),
            _fmt(r["load_s"]),
            _fmt(r["from_state_s"]),
            _fmt(r["reread_s"]),
            f"{_fmt(r['reread_s'] / r['from_state_s'])}x",
            "yes" if r["same_tokens"] else "NO",
        ]
        for r in rows
    ]
    header = ["model", "state file MiB", "read document s", "save s", "load s", "answer from state s (load included)", "read again s", "speedup", "same tokens"]
    title = f"### A {r0['context']:,}-token document read once, then a {r0['prompt']}-token prompt and {r0['new_tokens']} new tokens"
    return [title + "\n\n" + _table(header, table)]


def write_report(results) -> str:
    env, records = results["environment"], summarise(results["records"])
    lines = ["# wavefield bench inference", "", "Environment: " + ", ".join(f"{k}={v}" for k, v in env.items() if k != "models"), ""]
    lines += ["Models:", ""]
    lines += [f"- {name}: layers {' '.join(LAYER_LETTERS[t] for t in m['layer_types'])}, {m['parameters']:,} parameters" for name, m in env["models"].items()]
    lines.append("")
    checks = targets(records)
    if checks:
        lines += ["## Targets", "", _table(["target", "measured", "met"], [[t, _fmt(v), "yes" if ok else "no"] for t, v, ok in checks]), ""]
    ratios = repeat_ratios(results["records"])
    if len(ratios) > 1:
        lines += [f"With {len(ratios)} repeats, the figures are medians; the time ratio run by run: " + ", ".join(f"{_fmt(x)}x" for x in ratios) + ".", ""]
    sections = _context_tables(records) + _batch_table(records) + _flops_table(records) + _dense_table(records) + _document_table(records)
    skipped = [r for r in records if r["skipped"]]
    if skipped:
        sections.append(
            "### Skipped (predicted over the budget)\n\n"
            + "\n".join(
                f"- {r['kind']} {r['model']} context {r['context']:,} batch {r['batch']}: predicted {_fmt(r['predicted_s'])} s, {_fmt(r['predicted_gb'])} GB"
                for r in skipped
            )
        )
    return "\n".join(lines) + "\n" + "\n\n".join(sections) + "\n"


def write_plots(results, out_dir) -> list:
    """Total time and peak memory against the context, decode tokens/s against the batch; returns the files written."""
    plt = pyplot()
    if plt is None:
        return []
    records, out_dir, written = summarise(results["records"]), Path(out_dir), []
    context = _done(records, "context")
    if context:
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
        for model in dict.fromkeys(r["model"] for r in context):
            pts = sorted((r["context"], r["total_s"], r["decode_s_per_token"] * 1000, r["peak_mb"]) for r in context if r["model"] == model)
            n, total, decode, peak = zip(*pts)
            axes[0].plot(n, total, marker="o", label=model)
            axes[1].plot(n, decode, marker="o", label=model)
            if all(peak):
                axes[2].plot(n, peak, marker="o", label=model)
        for ax, label in zip(axes, ("total seconds (prefill + decode)", "decode ms per token", "peak memory (MiB)")):
            ax.set(xscale="log", yscale="log", xlabel="prompt tokens", ylabel=label)
            ax.legend(fontsize=8)
        path = out_dir / "inference_context.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    batch = _done(records, "batch")
    if batch:
        contexts = sorted({r["context"] for r in batch})
        fig, axes = plt.subplots(1, len(contexts), figsize=(6 * len(contexts), 4.5), squeeze=False)
        for ax, n in zip(axes[0], contexts):
            for model in dict.fromkeys(r["model"] for r in batch):
                pts = sorted((r["batch"], r["decode_tokens_per_s"]) for r in batch if r["model"] == model and r["context"] == n)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=model)
            ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="decode tokens/s", title=f"context {n:,}")
            ax.legend(fontsize=8)
        path = out_dir / "inference_batch.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
