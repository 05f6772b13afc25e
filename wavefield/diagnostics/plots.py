"""The pictures: matplotlib (Agg) figures for each diagnostic and a GIF of the field building up.

Every function takes the plain data that also goes into the JSON report and returns PNG / GIF
bytes, so a script can redraw any figure from the JSON alone.
"""

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from PIL import Image  # noqa: E402

from .heads import LOCAL_MAX, LONG_MIN  # noqa: E402

CLASS_COLORS = {"local": "#d95f02", "medium": "#7570b3", "long": "#1b9e77"}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _token_axis(ax, tokens, axis="x"):
    step = max(1, len(tokens) // 48)
    ticks = list(range(0, len(tokens), step))
    labels = [repr(tokens[i])[1:-1] or " " for i in ticks]
    if axis == "x":
        ax.set_xticks(ticks, labels, rotation=90, fontsize=7, family="monospace")
    else:
        ax.set_yticks(ticks, labels, fontsize=7, family="monospace")


def _head_labels(table):
    return [f"L{r['layer']} h{r['head']}" for r in table]


def heads_heatmap(table) -> bytes:
    """Layer x head grid coloured by reach (1/e, log scale), each cell labelled with its class."""
    layers = sorted({r["layer"] for r in table})
    n_heads = max(r["head"] for r in table) + 1
    grid = np.full((len(layers), n_heads), np.nan)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * n_heads, 0.9 + 0.7 * len(layers)))
    for r in table:
        grid[layers.index(r["layer"]), r["head"]] = r["reach_1e"]
    lo, hi = min(np.nanmin(grid), 1.0), max(np.nanmax(grid), 2 * LONG_MIN)
    im = ax.imshow(grid, cmap="viridis", norm=LogNorm(lo, hi), aspect="auto")
    for r in table:
        y, x = layers.index(r["layer"]), r["head"]
        ax.text(
            x, y, f"{r['class']}\n{r['reach_1e']:.3g}", ha="center", va="center", fontsize=8, color="white" if r["reach_1e"] < np.sqrt(lo * hi) else "black"
        )
    ax.set_xticks(range(n_heads), [f"head {h}" for h in range(n_heads)])
    ax.set_yticks(range(len(layers)), [f"layer {i}" for i in layers])
    bar = fig.colorbar(im, ax=ax, label="reach 1/alpha (tokens)")
    for t in (LOCAL_MAX, LONG_MIN):
        bar.ax.axhline(t, color="red", lw=1.5)
    ax.set_title(f"Head roles: local < {LOCAL_MAX:g} <= medium < {LONG_MIN:g} <= long (reach in tokens)", fontsize=9)
    return _png(fig)


def head_history(history) -> bytes:
    """Reach and frequency of every head against the training step."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [h["step"] for h in history]
    first = history[0]["table"]
    cmap = plt.get_cmap("tab10")
    layers = sorted({r["layer"] for r in first})
    for k, r in enumerate(first):
        color = cmap(layers.index(r["layer"]) % 10)
        a1.plot(steps, [h["table"][k]["reach_1e"] for h in history], color=color, marker=".", label=f"layer {r['layer']}" if r["head"] == 0 else None)
        a2.plot(steps, [h["table"][k]["omega"] for h in history], color=color, marker=".")
    a1.set_yscale("log")
    for t in (LOCAL_MAX, LONG_MIN):
        a1.axhline(t, color="gray", ls="--", lw=0.8)
    a1.set(xlabel="training step", ylabel="reach 1/alpha (tokens)", title="Damping: how far each head reaches")
    a2.set(xlabel="training step", ylabel="omega (rad / token)", title="Frequency of each head", ylim=(0, np.pi))
    a1.legend(fontsize=8)
    return _png(fig)


def energy(table, field_energy, tokens) -> bytes:
    """Kernel energy and dissipation per head; field energy along the positions of the input."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    x = np.arange(len(table))
    a1.bar(x - 0.2, [r["energy"] for r in table], 0.4, label="kernel energy sum kappa^2", color=[CLASS_COLORS[r["class"]] for r in table])
    a1.bar(x + 0.2, [r["dissipation"] for r in table], 0.4, label="energy lost per token 1 - e^-2alpha", color="gray")
    a1.set_yscale("log")
    a1.set_xticks(x, _head_labels(table), rotation=90, fontsize=7)
    a1.set_title("Per head: energy (coloured by role) and dissipation (gray)")
    a1.legend(fontsize=8)
    for layer, e in zip(sorted({r["layer"] for r in table}), field_energy):
        a2.plot(e, label=f"layer {layer}")
    a2.set_yscale("log")
    _token_axis(a2, tokens)
    a2.set(ylabel="field energy sum |gain s|^2", title="Field energy along the input")
    a2.legend(fontsize=8)
    return _png(fig)


def causality(audit) -> bytes:
    """Largest logit change before each perturbed position, against the tolerance."""
    fig, ax = plt.subplots(figsize=(10, 3.5))
    pos = [r["position"] for r in audit["rows"]]
    floor = 1e-12 * audit["logit_scale"]  # an exact zero drawn at the bottom of the log axis
    ax.plot(pos[1:], [max(r["max_change_before"], floor) for r in audit["rows"][1:]], ".-", label="largest change at positions < j")
    ax.plot(pos, [max(r["change_at"], floor) for r in audit["rows"]], ".", color="gray", label="change at j (the perturbation itself)")
    ax.axhline(audit["tolerance"] * audit["logit_scale"], color="red", ls="--", label=f"tolerance {audit['tolerance']:g} x max |logit|")
    ax.set_yscale("log")
    ax.set(xlabel="perturbed position j", ylabel="max |delta logit|", title="Causality audit: " + ("PASS" if audit["passed"] else "FAIL"))
    ax.legend(fontsize=8)
    return _png(fig)


def _amplitude_norm(rows) -> LogNorm:
    """Log colours from the smallest positive amplitude (at most 1e4 below the largest) to the largest."""
    top = max(rows.max(), 1e-30)
    return LogNorm(max(rows[rows > 0].min(initial=top), top * 1e-4), top)


def field_amplitude(amp, table, tokens) -> bytes:
    """|gain * s[t]| per head (rows) and position (columns)."""
    rows = np.asarray(amp).reshape(-1, len(tokens))
    fig, ax = plt.subplots(figsize=(min(14, max(6, 0.16 * len(tokens) + 2)), 1 + 0.28 * len(rows)))
    im = ax.imshow(rows, aspect="auto", cmap="magma", interpolation="nearest", norm=_amplitude_norm(rows))
    ax.set_yticks(range(len(rows)), _head_labels(table), fontsize=7)
    _token_axis(ax, tokens)
    fig.colorbar(im, ax=ax, label="field amplitude (RMS over channels)")
    ax.set_title("Field amplitude per head along the prompt")
    return _png(fig)


def impulse_response(resp, table) -> bytes:
    """Each layer's heads answering a unit deposit at t = 0."""
    resp = np.asarray(resp)
    fig, axes = plt.subplots(len(resp), 1, figsize=(10, 2.4 * len(resp)), squeeze=False)
    layers = sorted({r["layer"] for r in table})
    for ax, layer, curves in zip(axes[:, 0], layers, resp):
        for h, c in enumerate(curves):
            r = next(r for r in table if r["layer"] == layer and r["head"] == h)
            ax.plot(c / -np.expm1(-r["alpha"]), lw=1.2, label=f"head {h} ({r['class']})")
        ax.axhline(0, color="black", lw=0.5)
        ax.set_xscale("symlog", linthresh=1)
        ax.set(ylabel=f"layer {layer}: kappa / gain", xlim=(0, resp.shape[-1] - 1))
        ax.legend(fontsize=7, loc="upper right", ncol=2)
    axes[0, 0].set_title("Impulse response kappa(t) of each head, divided by its gain 1 - e^-alpha")
    axes[-1, 0].set_xlabel("tokens after the impulse")
    return _png(fig)


def effective_attention(maps, tokens, layers) -> bytes:
    """Share of each earlier token s in the output at t, per layer."""
    maps = np.asarray(maps)
    cols = min(len(maps), 2)
    rows = -(-len(maps) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 5.6 * rows), squeeze=False)
    for ax in axes.flat[len(maps) :]:
        ax.set_visible(False)
    for ax, layer, m in zip(axes.flat, layers, maps):
        m = np.where(m > 0, m, np.nan)
        im = ax.imshow(m, cmap="viridis", norm=LogNorm(1e-4, 1), interpolation="nearest")
        _token_axis(ax, tokens, "x")
        _token_axis(ax, tokens, "y")
        ax.set_title(f"layer {layer}: output t (rows) <- token s (columns)", fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), label="share of |contribution|, rows sum to 1", shrink=0.8)
    return _png(fig)


def _palette(*cmaps) -> Image.Image:
    """One GIF palette for every frame: samples of the colour maps plus a gray ramp for text."""
    n = (256 - 16) // len(cmaps)
    colors = [c(np.linspace(0, 1, n))[:, :3] for c in cmaps] + [np.linspace(0, 1, 256 - n * len(cmaps))[:, None].repeat(3, 1)]
    pal = Image.new("P", (1, 1))
    pal.putpalette((np.concatenate(colors) * 255).round().astype(np.uint8).ravel().tolist())
    return pal


def field_gif(fronts, amp, table, tokens, max_frames: int = 64, ms_per_frame: int = 180) -> bytes:
    """Frame t: the damped wave each token s <= t sends to t (top), and the field amplitude at
    positions <= t filling in (bottom)."""
    fronts = np.asarray(fronts)  # (T, rows, N)
    rows = np.asarray(amp).reshape(-1, fronts.shape[-1])  # (rows, N)
    N = fronts.shape[-1]
    scale = np.abs(fronts).max(axis=(0, 2))[:, None] + 1e-30  # per head, over all frames
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 1.6 + 0.36 * len(rows)), sharex=True, dpi=80)
    im1 = a1.imshow(np.zeros_like(rows), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    im2 = a2.imshow(rows, aspect="auto", cmap="magma", interpolation="nearest", norm=_amplitude_norm(rows))
    for ax in (a1, a2):
        ax.set_yticks(range(len(rows)), _head_labels(table), fontsize=6)
    a1.set_ylabel("wave from token s\n(per head, signed)", fontsize=8)
    a2.set_ylabel("field amplitude", fontsize=8)
    _token_axis(a2, tokens)
    title = fig.suptitle(" ", fontsize=9)
    fig.tight_layout()
    im2.set_data(np.full_like(rows, np.nan))
    fig.canvas.draw()  # the static parts once; each frame redraws only the two images and the title
    background = fig.canvas.copy_from_bbox(fig.bbox)
    palette = _palette(im1.cmap, im2.cmap)
    frames = []
    for t in np.unique(np.linspace(0, N - 1, min(N, max_frames)).round().astype(int)):
        fig.canvas.restore_region(background)
        im1.set_data(fronts[t] / scale)
        im2.set_data(np.where(np.arange(N) <= t, rows, np.nan))
        title.set_text(f"token {t}: {tokens[t]!r} enters the field")
        for artist in (im1, im2, title):
            fig.draw_artist(artist)
        rgb = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
        frames.append(rgb.quantize(palette=palette, dither=Image.Dither.NONE))
    plt.close(fig)
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=ms_per_frame, loop=0)
    return buf.getvalue()
