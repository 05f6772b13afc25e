"""`wavefield diagnose`: every diagnostic of a trained model, as PNGs, a GIF, one JSON and one
self-contained HTML report (images inline, plain JavaScript, nothing fetched from a network).
"""

import base64
import html
import json
from importlib import resources
from pathlib import Path

import torch

from ..errors import UserError
from ..io import atomic_path, write_text_atomic
from . import plots
from .causality import causality_audit
from .energy import field_energy
from .flow import effective_attention, field_amplitude, impulse_responses, wave_mixers, wavefronts
from .heads import LOCAL_MAX, LONG_MIN, head_physics, head_table
from .paths import path_agreement
from .sources import DEFAULT_PROMPT, checkpoint_dirs, encode_prompt, load_model, metrics_history, step_of

MAX_TOKENS = 512  # longest prompt diagnosed: the effective-attention maps are N x N
AUDIT_TOKENS = 128  # positions perturbed by the causality audit (each costs one forward pass)
IMPULSE_TOKENS = (128, 4096)  # impulse responses run over 3 reaches of the longest head, within these bounds
OUTPUT_NAMES = {
    "heads.png",
    "head_history.png",
    "energy.png",
    "causality.png",
    "field_amplitude.png",
    "impulse_response.png",
    "effective_attention.png",
    "field.gif",
    "diagnostics.json",
    "report.html",
}


def _rounded(x, digits: int = 6):
    """x with every float cut to `digits` significant digits and tensors turned into lists."""
    if isinstance(x, torch.Tensor):
        x = x.tolist()
    if isinstance(x, dict):
        return {k: _rounded(v, digits) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v, digits) for v in x]
    return float(f"{x:.{digits}g}") if isinstance(x, float) else x


def _is_report(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    # "parseval": what reports called the path-agreement check before it compared the paths
    return isinstance(data, dict) and {"heads", "causality"} <= data.keys() and bool({"path_agreement", "parseval"} & data.keys())


def _check_writable(out: Path, json_path):
    """Refuse to overwrite files that an earlier diagnose did not write."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    ours = OUTPUT_NAMES & {p.name for p in out.iterdir()} if out.is_dir() else set()
    if ours and not _is_report(out / "diagnostics.json"):
        raise UserError(f"{out} already holds {', '.join(sorted(ours))} not written by wavefield diagnose; choose another --out")
    if json_path is not None:
        json_path = Path(json_path)
        if json_path.is_dir():
            raise UserError(f"--json {json_path} is a folder; give a file name")
        if json_path.exists() and not _is_report(json_path):
            raise UserError(f"--json {json_path} exists and is not a diagnose report; refusing to overwrite it")
        if not json_path.parent.is_dir():
            raise UserError(f"--json {json_path}: folder {json_path.parent} does not exist")


def _history(dirs, paths) -> list[dict]:
    """Head snapshots over training: metrics.jsonl records, plus one per checkpoint folder."""
    snaps = metrics_history(dirs)
    if len(paths) > 1:
        snaps += [{"step": step_of(p, k), "source": str(p), "heads": head_physics(load_model(p))} for k, p in enumerate(paths)]
    snaps = sorted(snaps, key=lambda s: s["step"])
    for s in snaps:
        s["table"] = head_table(s["heads"])
    return snaps


@torch.no_grad()
def diagnose(dirs, out=None, prompt: str | None = None, json_path=None, fft_size=None) -> dict:
    """Diagnose the last model among dirs (model folders or run folders); returns the report dict
    and writes it (JSON, PNGs, GIF, report.html) into out (default DIR/diagnostics). fft_size
    goes to the path-agreement check (default: the exact FFT length)."""
    dirs = [Path(d) for d in dirs]
    paths = checkpoint_dirs(dirs)
    out = Path(out) if out is not None else dirs[-1] / "diagnostics"
    _check_writable(out, json_path)
    text = DEFAULT_PROMPT if prompt is None else prompt
    if not text.strip():
        raise UserError("the prompt is empty")
    model = load_model(paths[-1])
    cfg = model.config
    if "mamba2" in cfg.layer_types:  # the effective-attention map needs each mixer's decompose, which a mamba2 layer has not
        raise UserError(f"{paths[-1]}: diagnose covers wave and attention layers; this model has mamba2 layers ({', '.join(cfg.layer_types)})")
    ids, tokens, tokenizer = encode_prompt(paths[-1], text, cfg.vocab_size)
    notes = [f"prompt tokenised with {tokenizer}"]
    if len(ids) > MAX_TOKENS:
        notes.append(f"prompt cut to its first {MAX_TOKENS} of {len(ids)} tokens")
        ids, tokens = ids[:MAX_TOKENS], tokens[:MAX_TOKENS]
    ids = torch.tensor(ids)
    has_wave = bool(wave_mixers(model))

    table = head_table(head_physics(model))
    history = [s for s in _history(dirs, paths) if len(s["table"]) == len(table)]
    audit = causality_audit(model, ids[:AUDIT_TOKENS])
    report = {
        "model": {
            "path": str(paths[-1]),
            "config": cfg.to_dict(),
            "n_parameters": model.num_parameters(),
            "checkpoints": [str(p) for p in paths],
        },
        "prompt": {"text": text, "ids": ids.tolist(), "tokens": tokens, "tokenizer": tokenizer},
        "notes": notes,
        "thresholds": {"local_below_reach": LOCAL_MAX, "long_from_reach": LONG_MIN, "reach": "1/alpha, tokens"},
        "heads": table,
        "history": [{"step": s["step"], "source": s["source"], "heads": s["table"]} for s in history],
        "path_agreement": path_agreement(model, ids, fft_size),
        "causality": audit,
        "effective_attention": {"layers": list(range(cfg.n_layers)), "maps": effective_attention(model, ids)},
    }
    if has_wave:
        report["field_energy"] = field_energy(model, ids)
        report["field_amplitude"] = field_amplitude(model, ids)
        longest = 3 * max(r["reach_1e"] for r in table)
        report["impulse_response"] = impulse_responses(model, int(min(max(longest, IMPULSE_TOKENS[0]), IMPULSE_TOKENS[1])))
    report = _rounded(report)

    attention = report["effective_attention"]
    figures = {"effective_attention.png": plots.effective_attention(attention["maps"], tokens, attention["layers"]), "causality.png": plots.causality(audit)}
    if has_wave:
        figures["heads.png"] = plots.heads_heatmap(table)
        figures["energy.png"] = plots.energy(table, report["field_energy"], tokens)
        figures["field_amplitude.png"] = plots.field_amplitude(report["field_amplitude"], table, tokens)
        figures["impulse_response.png"] = plots.impulse_response(report["impulse_response"], table)
        figures["field.gif"] = plots.field_gif(wavefronts(model, ids), report["field_amplitude"], table, tokens)
    if len(history) > 1:
        figures["head_history.png"] = plots.head_history(history)
    report["figures"] = sorted(figures)
    report["outputs"] = {"folder": str(out), "html": str(out / "report.html"), "json": str(out / "diagnostics.json")}

    out.mkdir(parents=True, exist_ok=True)
    body = json.dumps(report)
    write_text_atomic(out / "diagnostics.json", body)  # first: it marks the folder as ours
    if json_path is not None:
        write_text_atomic(Path(json_path), body)
    for name, data in figures.items():
        with atomic_path(out / name) as tmp:
            tmp.write_bytes(data)
    write_text_atomic(out / "report.html", render_html(report, figures))
    return report


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else "-" if v is None else html.escape(str(v))


def _moved(heads) -> str:
    """' (from A x to B x over the heads)', or nothing where the initial scales are unknown."""
    moved = [r["reach_moved"] for r in heads if r.get("reach_moved") is not None]
    return f" (from {min(moved):.3g}x to {max(moved):.3g}x over the heads)" if moved else ""


def _table(rows, columns) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r[c])}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(figures, name, alt) -> str:
    if name not in figures:
        return ""
    mime = "image/gif" if name.endswith(".gif") else "image/png"
    return f'<img id="fig-{name.split(".")[0]}" alt="{html.escape(alt)}" src="data:{mime};base64,{base64.b64encode(figures[name]).decode()}">'


def _verdict(ok: bool) -> str:
    return '<b class="pass">PASS</b>' if ok else '<b class="fail">FAIL</b>'


def _model_section(report) -> str:
    m, p, cfg = report["model"], report["prompt"], report["model"]["config"]
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report["notes"])
    return (
        f"<h2>Model</h2><p><code>{html.escape(m['path'])}</code>, {m['n_parameters']:,} parameters, {cfg['n_layers']} layers "
        f"({', '.join(cfg['layer_types'])}), {cfg['n_heads']} heads.</p>"
        f"<p>Prompt ({len(p['ids'])} tokens): <q>{html.escape(p['text'][:400])}</q></p><ul>{notes}</ul>"
    )


def _heads_section(report, figures) -> str:
    columns = ["layer", "head", "omega", "omega_init", "alpha", "phi", "period", "reach_1e", "reach_init", "reach_moved", "reach_1pct"]
    columns += ["q_factor", "energy", "dissipation", "class"]
    text = (
        f"<h2>Heads</h2><p>Roles by reach 1/alpha: <b>local</b> below {LOCAL_MAX:g} tokens, <b>medium</b> from {LOCAL_MAX:g} "
        f"to {LONG_MIN:g}, <b>long</b> from {LONG_MIN:g}. Period 2&pi;/omega; reach to 1/e and to 1%; quality factor omega / (2 alpha). "
        "What training learned: omega and the reach beside the values the head started from (phi starts at 0), and "
        f"reach_moved, the reach trained over initial{_moved(report['heads'])}.</p>"
    )
    text += _img(figures, "heads.png", "layer x head roles") + _table(report["heads"], columns)
    if "head_history.png" in figures:
        text += f"<h3>During training ({len(report['history'])} snapshots)</h3>" + _img(figures, "head_history.png", "heads over training")
    return text


def _energy_section(report, figures) -> str:
    paths = report["path_agreement"]
    return (
        f"<h2>Energy</h2>{_img(figures, 'energy.png', 'energy')}<p>Path agreement: the FFT path against the chunked path on the "
        f"prompt's deposits (largest gap relative to the largest output, tolerance {paths['tolerance']:g}): "
        f"{_verdict(paths['passed'])}, largest gap {paths['max_gap']:.3g}.</p>" + _table(paths["layers"], ["layer", "gap"])
    )


def _causality_section(report, figures) -> str:
    audit = report["causality"]
    rows = [dict(r, token=repr(report["prompt"]["tokens"][r["position"]])) for r in audit["rows"]]
    return (
        f"<h2>Causality audit</h2><p>Each of the first {len(rows)} tokens replaced in turn; largest logit change at earlier positions "
        f"{audit['max_change_before']:.3g} = {audit['max_relative']:.3g} x max |logit| (tolerance {audit['tolerance']:g}): "
        f"{_verdict(audit['passed'])}.</p>"
        + _img(figures, "causality.png", "causality audit")
        + f"<details><summary>Per position</summary>{_table(rows, ['position', 'token', 'max_change_before', 'change_at'])}</details>"
    )


def _flow_section(figures) -> str:
    return (
        "<h2>Information flow</h2>"
        + _img(figures, "field.gif", "the field building up token by token")
        + _img(figures, "field_amplitude.png", "field amplitude")
        + _img(figures, "impulse_response.png", "impulse responses")
        + "<p>Effective attention: the share of token s in the layer's output at t, from the exact decomposition of the "
        "output into one term per earlier token.</p>" + _img(figures, "effective_attention.png", "effective attention")
    )


def render_html(report: dict, figures: dict) -> str:
    """One HTML file: tables, inline images and the kernel explorer."""
    sections = [
        _model_section(report),
        _heads_section(report, figures),
        _energy_section(report, figures),
        _causality_section(report, figures),
        _flow_section(figures),
    ]
    template = resources.files(__package__).joinpath("report.html").read_text()
    return template.replace("__SECTIONS__", "\n".join(sections)).replace("__HEADS__", json.dumps(report["heads"]))
