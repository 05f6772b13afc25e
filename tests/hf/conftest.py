"""Fixtures of the Hugging Face tests: offline, tiny models, one exported folder.

Every test here needs the hf extra (transformers, lm-eval, peft, accelerate, datasets); without
it the folder is skipped as a whole."""

import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach a hub: set before transformers is imported
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
pytest.importorskip("transformers")

from wavefield import WaveFieldConfig, WaveFieldLM  # noqa: E402
from wavefield.cli import main  # noqa: E402

VOCAB = 64
LAYERS = {"wave": ["wave-outer", "wave"], "hybrid": ["wave", "attention"]}  # "wave": the default architecture


def tiny_model(kind="wave", seed=0) -> WaveFieldLM:
    torch.manual_seed(seed)
    return WaveFieldLM(WaveFieldConfig(vocab_size=VOCAB, d_model=16, n_layers=2, n_heads=2, layer_types=LAYERS[kind])).eval()


def as_hf(model):
    from wavefield.hf import WaveFieldForCausalLM

    return WaveFieldForCausalLM.from_wavefield(model).eval()


@pytest.fixture(params=list(LAYERS))
def kind(request):
    return request.param


@pytest.fixture(scope="session")
def exported(trained_run, tmp_path_factory):
    """The tiny trained run (bytes tokenizer) exported with `wavefield export`."""
    out = tmp_path_factory.mktemp("export") / "tiny-hf"
    assert main(["export", str(trained_run), "--out", str(out)]) == 0
    return out
