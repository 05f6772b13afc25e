"""Markdown tables, target checks and PNG plots from the records of `wavefield bench speed`."""

import json
from pathlib import Path

from ..io import write_text_atomic

MODE_NAMES = {"forward": "forward", "backward": "forward + backward"}
# target c's peers: the attention peers the speed targets were set against (the materialised
# square is too slow to count; conv-sdpa and mamba2, the quality benchmark's peers, are not in it)
TARGET_PEERS = ("sdpa", "sliding", "linear")


def _by(records, kind):
    return [r for r in records if r.get("kind") == kind]


def _lookup(records, kind, op, n, mode):
    for r in records:
        if r.get("kind") == kind and r["op"] == op and r["n"] == n and r["mode"] == mode and not r["skipped"]:
            return r
    return None


def _fmt(value, digits=3):
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _mixer_tables(records):
    mixers = _by(records, "mixer")
    ops = list(dict.fromkeys(r["op"] for r in mixers))
    out = []
    for mode in dict.fromkeys(r["mode"] for r in mixers):
        lengths = sorted({r["n"] for r in mixers if r["mode"] == mode})
        for title, key, digits in (("time (ms)", "seconds", 3), ("peak extra memory (MiB)", "peak_mb", 3)):
            rows = []
            for n in lengths:
                row = [str(n)]
                for op in ops:
                    r = _lookup(records, "mixer", op, n, mode)
                    value = None if r is None or r[key] is None else r[key] * (1000 if key == "seconds" else 1)
                    row.append(_fmt(value, digits) if r else "skip")
                wave = _lookup(records, "mixer", "wave", n, mode)
                peers = [_lookup(records, "mixer", op, n, mode) for op in ops if not op.startswith("wave")]
                peers = [p for p in peers if p and p[key] is not None]
                best = min(peers, key=lambda p: p[key]) if peers else None
                ratio = best[key] / wave[key] if best and wave and wave[key] else None
                row.append(f"{_fmt(ratio)}x ({best['op']})" if ratio else "-")
                rows.append(row)
            out.append(f"### Mixers, {MODE_NAMES[mode]}: {title}\n\n" + _table(["N", *ops, "best peer / wave"], rows))
    gflop_rows = []
    for n in sorted({r["n"] for r in mixers if r["mode"] == "forward"}):
        gflop_rows.append([str(n)] + [_fmt((_lookup_any(mixers, op, n) or {}).get("gflops")) for op in ops])
    if gflop_rows:
        out.append("### Theoretical GFLOPs per forward call\n\n" + _table(["N", *ops], gflop_rows))
    return out


def _lookup_any(mixers, op, n):
    for r in mixers:
        if r["op"] == op and r["n"] == n and r["mode"] == "forward":
            return r
    return None


def _floor_table(records):
    rows = []
    for f in _by(records, "floor"):
        wave = _lookup(records, "mixer", "wave", f["n"], f["mode"])
        rows.append(
            [
                str(f["n"]),
                MODE_NAMES[f["mode"]],
                _fmt(wave["seconds"] * 1000) if wave else "-",
                _fmt(f["proj_seconds"] * 1000),
                _fmt(f["copy_seconds"] * 1000),
                _fmt(f["seconds"] * 1000),
                f"{_fmt(wave['seconds'] / f['seconds'])}x" if wave else "-",
            ]
        )
    if not rows:
        return []
    return [
        "### The wave mixer against its own floor\n\n"
        + _table(["N", "mode", "wave (ms)", "projections (ms)", "field read + write (ms)", "floor (ms)", "wave / floor"], rows)
    ]


def _pair_table(records, kind, title, header, cells):
    items = _by(records, kind)
    rows = []
    for n in sorted({r["n"] for r in items}):
        wave = _lookup(records, kind, "wave-lm", n, items[0]["mode"])
        transformer = _lookup(records, kind, "transformer-lm", n, items[0]["mode"])
        if wave and transformer:
            rows.append([str(n), *cells(wave, transformer)])
    return [f"### {title}\n\n" + _table(header, rows)] if rows else []


def targets(records) -> list:
    """The issue's targets a-h that the records measure, each as (name, measured figure, met?)."""

    def mixer(op, n, mode):
        return _lookup(records, "mixer", op, n, mode)

    def ratio(a, b, key="seconds"):
        return a[key] / b[key] if a and b and a[key] and b[key] else None

    out = []
    for label, n, mode, goal in (("a", 32768, "forward", 15), ("a", 65536, "forward", 30), ("b", 32768, "backward", 12)):
        r = ratio(mixer("sdpa", n, mode), mixer("wave", n, mode))
        if r is not None:
            out.append((f"{label}: SDPA / wave, {MODE_NAMES[mode]}, N={n} (goal >= {goal}x)", r, r >= goal))
    worst = None
    for r in _by(records, "mixer"):
        if r["n"] >= 8192 and r["op"] in TARGET_PEERS and not r["skipped"]:
            q = ratio(r, mixer("wave", r["n"], r["mode"]))
            if q is not None and (worst is None or q < worst[0]):
                worst = (q, r["op"], r["n"], r["mode"])
    if worst:
        out.append((f"c: slowest peer / wave at N >= 8K (worst: {worst[1]}, N={worst[2]}, {worst[3]}) (goal > 1x)", worst[0], worst[0] > 1))
    floors = [(f["n"], ratio(mixer("wave", f["n"], "forward"), f)) for f in _by(records, "floor") if f["n"] >= 32768 and f["mode"] == "forward"]
    floors = [(n, q) for n, q in floors if q is not None]
    if floors:
        n, q = max(floors, key=lambda t: t[1])
        out.append((f"d: wave / floor at N >= 32K (worst N={n}) (goal <= 1.5x)", q, q <= 1.5))
    for wave_op, mode in (("wave", "forward"), ("wave", "backward"), ("wave-lean", "backward")):
        mem = [
            (r["n"], ratio(mixer(wave_op, r["n"], mode), r, "peak_mb"))
            for r in _by(records, "mixer")
            if r["op"] == "sdpa" and r["mode"] == mode and r["n"] >= 8192 and not r["skipped"]
        ]
        mem = [m for m in mem if m[1] is not None]
        if mem:
            n, q = max(mem, key=lambda t: t[1])
            out.append((f"e: {wave_op} / SDPA peak memory, {MODE_NAMES[mode]}, N >= 8K (worst N={n}) (goal <= 1x)", q, q <= 1))
    for n, goal in ((512, 1.0), (8192, 3.0)):
        r = ratio(_lookup(records, "train", "transformer-lm", n, "train"), _lookup(records, "train", "wave-lm", n, "train"))
        if r is not None:
            out.append((f"f: training tokens/s wave / transformer, seq {n} (goal >= {goal}x)", r, r >= goal))
    decode = {(r["op"], r["n"]): r for r in _by(records, "decode")}
    contexts = sorted({n for _, n in decode})
    if contexts:
        lo, hi = contexts[0], contexts[-1]
        flat = ratio(decode.get(("wave-lm", hi)), decode.get(("wave-lm", lo)))
        out.append((f"g: wave per-token latency at context {hi} / at {lo} (goal <= 1.2x)", flat, flat is not None and flat <= 1.2))
        fast = ratio(decode.get(("transformer-lm", hi)), decode.get(("wave-lm", hi)))
        out.append((f"g: transformer / wave per-token latency at context {hi} (goal >= 10x)", fast, fast is not None and fast >= 10))
    for r in _by(records, "long"):
        out.append(
            (
                f"h: forward of the small wave LM over {r['n']} tokens: seconds (peak extra {_fmt(r['peak_mb'])} MiB)",
                r["seconds"],
                r["peak_mb"] is not None and r["peak_mb"] < 24 * 1024,
            )
        )
    return out


def write_report(results) -> str:
    env, records = results["environment"], results["records"]
    lines = ["# wavefield bench speed", "", "Environment: " + ", ".join(f"{k}={v}" for k, v in env.items()), ""]
    copy = _by(records, "copy")
    if copy:
        lines += [f"Copy bandwidth (read + write): {copy[0]['gb_per_s']:.2f} GB/s", ""]
    checks = targets(records)
    if checks:
        lines += ["## Targets", "", _table(["target", "measured", "met"], [[t, _fmt(v), "yes" if ok else "no"] for t, v, ok in checks]), ""]
    sections = _mixer_tables(records) + _floor_table(records)
    sections += _pair_table(
        records,
        "train",
        "Training throughput (tokens/s)",
        ["seq", "wave LM", "transformer LM", "wave / transformer", "params wave / transformer"],
        lambda w, t: [_fmt(w["tokens_per_s"]), _fmt(t["tokens_per_s"]), f"{_fmt(w['tokens_per_s'] / t['tokens_per_s'])}x", f"{w['params']} / {t['params']}"],
    )
    sections += _pair_table(
        records,
        "decode",
        "Decoding: per-token latency (ms) and state memory (MiB)",
        ["context", "wave LM ms", "transformer LM ms", "transformer / wave", "wave state MiB", "KV cache MiB"],
        lambda w, t: [_fmt(w["seconds"] * 1000), _fmt(t["seconds"] * 1000), f"{_fmt(t['seconds'] / w['seconds'])}x", _fmt(w["state_mb"]), _fmt(t["state_mb"])],
    )
    for r in _by(records, "long"):
        sections.append(
            f"### Long input\n\nWave LM (vocabulary {r['vocab_size']}, {r['params']} parameters), one forward pass over "
            f"{r['n']} tokens: {_fmt(r['seconds'])} s, peak extra memory {_fmt(r['peak_mb'])} MiB."
        )
    skipped = [r for r in records if r.get("skipped")]
    if skipped:
        sections.append("### Skipped\n\n" + "\n".join(f"- {r['op']} N={r['n']} {r['mode']}: {r['reason']}" for r in skipped))
    return "\n".join(lines) + "\n" + "\n\n".join(sections) + "\n"


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None (and a note) where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return None
    return plt


def write_results(results: dict, out_dir, json_path, stem: str, report, plots):
    """A benchmark's results into out_dir: STEM.json (or json_path), STEM.md (report(results)) and plots(results, out_dir)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(json_path) if json_path else out_dir / f"{stem}.json", json.dumps(results, indent=1))
    write_text_atomic(out_dir / f"{stem}.md", report(results))
    plots(results, out_dir)


def write_plots(results, out_dir) -> list:
    """time vs N (log-log), memory vs N, decode latency vs context; returns the files written."""
    plt = pyplot()
    if plt is None:
        return []
    records, out_dir, written = results["records"], Path(out_dir), []
    mixers = [r for r in _by(records, "mixer") if not r["skipped"]]
    for key, name, label in (("seconds", "time", "seconds"), ("peak_mb", "memory", "peak extra memory (MiB)")):
        modes = list(dict.fromkeys(r["mode"] for r in mixers))
        if not modes:
            continue
        fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), squeeze=False)
        for ax, mode in zip(axes[0], modes):
            for op in dict.fromkeys(r["op"] for r in mixers):
                pts = sorted((r["n"], r[key]) for r in mixers if r["op"] == op and r["mode"] == mode and r[key])
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=op)
            if name == "time":
                floor = sorted((r["n"], r["seconds"]) for r in _by(records, "floor") if r["mode"] == mode)
                if floor:
                    ax.plot(*zip(*floor), linestyle="--", color="gray", label="wave floor")
            ax.set(xscale="log", yscale="log", xlabel="N (tokens)", ylabel=label, title=MODE_NAMES[mode])
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        path = out_dir / f"mixer_{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    decode = _by(records, "decode")
    if decode:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for op in dict.fromkeys(r["op"] for r in decode):
            pts = sorted((r["n"], r["seconds"] * 1000) for r in decode if r["op"] == op)
            ax.plot(*zip(*pts), marker="o", label=op)
        ax.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="ms per token", title="decoding")
        ax.legend()
        path = out_dir / "decode_latency.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
