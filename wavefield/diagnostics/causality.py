"""Causality audit on real weights: a token may never influence the logits before it.

For every position j of a text sample, the token at j is replaced by another one, and the
largest change of any logit at positions < j is recorded. The audit passes when that change
is at most `tol` times the largest logit magnitude (float32 FFT round-off is ~1e-7 of it).
The change at j itself is reported too: it shows that the perturbation reached the model.
"""

import torch

CAUSALITY_TOL = 1e-5


@torch.no_grad()
def causality_audit(model, ids: torch.Tensor, tol: float = CAUSALITY_TOL, batch_size: int = 32, seed: int = 0) -> dict:
    """Perturb each position of ids (N,) in turn; returns a table and a verdict.

    {"rows": [{"position", "max_change_before", "change_at"}], "max_change_before",
     "logit_scale", "max_relative", "tolerance", "passed"}
    """
    N, V = ids.shape[0], model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    swapped = (ids + torch.randint(1, max(V, 2), (N,), generator=g, device="cpu").to(ids.device)) % V  # a different token at each j
    base = model(ids[None])[0]  # (N, V)
    rows = []
    for start in range(0, N, batch_size):
        j = torch.arange(start, min(start + batch_size, N))
        batch = ids.repeat(len(j), 1)
        batch[torch.arange(len(j)), j] = swapped[j]
        diff = (model(batch) - base).abs().amax(-1)  # (len(j), N)
        for r, pos in enumerate(j.tolist()):
            before = diff[r, :pos].max().item() if pos else 0.0
            rows.append({"position": pos, "max_change_before": before, "change_at": diff[r, pos].item()})
    worst = max(r["max_change_before"] for r in rows)
    scale = base.abs().max().item()
    relative = worst / max(scale, 1e-30)
    return {
        "rows": rows,
        "max_change_before": worst,
        "logit_scale": scale,
        "max_relative": relative,
        "tolerance": tol,
        "passed": relative <= tol,
    }
