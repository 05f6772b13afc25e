"""What a model holds: parameter counts, config, and each wave head's physical numbers."""

from .layers import WaveFieldAttention
from .ops import period


def head_physics(model) -> list[dict]:
    """Per wave layer, the per-head omega (rad/token), alpha (1/token) and phi (rad), and the
    omega and alpha each head started from (the layer's initial_scales; phi starts at 0)."""
    heads = []
    for i, block in enumerate(model.blocks):
        mixer = block.mixer
        if isinstance(mixer, WaveFieldAttention):
            omega0, alpha0 = mixer.initial_scales()
            heads.append(
                {
                    "layer": i,
                    "omega": mixer.omega.detach().float().cpu().tolist(),
                    "alpha": mixer.alpha.detach().float().cpu().tolist(),
                    "phi": mixer.phi.detach().float().cpu().tolist(),
                    "omega_init": omega0.float().tolist(),
                    "alpha_init": alpha0.float().tolist(),
                }
            )
    return heads


def describe(model) -> dict:
    cfg = model.config
    layers = []
    for i, block in enumerate(model.blocks):
        layers.append(
            {
                "layer": i,
                "type": cfg.layer_types[i],
                "mixer": sum(p.numel() for p in block.mixer.parameters()),
                "mlp": sum(p.numel() for p in block.mlp.parameters()) if block.mlp is not None else 0,  # mlp_ratio 0: no MLP
                "norms": sum(p.numel() for norm in (block.norm1, block.norm2) if norm is not None for p in norm.parameters()),
            }
        )
    return {
        "parameters": {"total": model.num_parameters(), "embedding (tied to output)": model.embed.weight.numel(), "layers": layers},
        "config": cfg.to_dict(),
        "heads": head_physics(model),
    }


def format_description(info: dict) -> str:
    p = info["parameters"]
    lines = [f"parameters: {p['total']:,} (embedding, tied to the output head: {p['embedding (tied to output)']:,})"]
    for layer in p["layers"]:
        lines.append(f"  layer {layer['layer']} {layer['type']:<14} mixer {layer['mixer']:>10,}  mlp {layer['mlp']:>10,}  norms {layer['norms']:>6,}")
    lines.append("config:")
    lines += [f"  {k} = {v}" for k, v in info["config"].items()]
    if info["heads"]:
        lines.append("wave heads: omega (rad/token), alpha (1/token), phi (rad), reach = 1/alpha, period = 2 pi/omega (tokens);")
        lines.append("  the omega and reach each head started from, and the reach trained / initial (phi starts at 0)")
        lines.append(f"  {'layer':>5} {'head':>4} {'omega':>9} {'alpha':>9} {'phi':>9} {'reach':>9} {'period':>9} {'omega0':>9} {'reach0':>9} {'moved':>7}")
        for layer in info["heads"]:
            for h, (w, a, f, w0, a0) in enumerate(zip(layer["omega"], layer["alpha"], layer["phi"], layer["omega_init"], layer["alpha_init"])):
                lines.append(f"  {layer['layer']:>5} {h:>4} {w:9.4f} {a:9.4f} {f:9.4f} {1 / a:9.1f} {period(w):9.1f} {w0:9.4f} {1 / a0:9.1f} {a0 / a:6.2f}x")
    return "\n".join(lines)
