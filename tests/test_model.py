"""The language model: exact causality, exact continuation, decoding, saving, bad input."""

import json
import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from wavefield import WaveFieldConfig, WaveFieldLM
from wavefield.errors import UserError


@st.composite
def configs(draw, layer_types=st.sampled_from(["wave", "wave-outer", "attention"])):  # noqa: B008 (a hypothesis strategy, built once)
    n_heads = draw(st.sampled_from([1, 2, 4]))
    head_dim = draw(st.sampled_from([2, 4, 8]))
    n_layers = draw(st.integers(1, 3))
    return WaveFieldConfig(
        vocab_size=draw(st.sampled_from([17, 64])),
        d_model=n_heads * head_dim,
        n_layers=n_layers,
        n_heads=n_heads,
        layer_types=draw(st.lists(layer_types, min_size=n_layers, max_size=n_layers)),
        short_conv=draw(st.sampled_from([0, 1, 3, 4])),
        feature_map=draw(st.sampled_from(["identity", "silu", "elu1"])),
        reach_min=1.0,
        reach_max=draw(st.sampled_from([4.0, 16.0, 64.0])),
        chunk_size=draw(st.sampled_from([3, 8, 16])),
        mlp_ratio=2.0,
        wave_deposit=draw(st.sampled_from(["channel", "outer"])),
        wave_norm=draw(st.booleans()),
        wave_gate=draw(st.booleans()),
    )


def model_for(cfg, seed):
    torch.manual_seed(seed)
    model = WaveFieldLM(cfg).eval()
    with torch.no_grad():  # move the physical parameters off their initial grid
        for block in model.blocks:
            if hasattr(block.mixer, "phi"):
                block.mixer.phi.normal_()
                block.mixer.omega_raw.add_(torch.randn_like(block.mixer.omega_raw))
    return model


def leak_per_position(model, ids, batched=True):
    """For every j: (largest change of logits at positions < j, change at j) when token j changes."""
    N, V = ids.shape[1], model.config.vocab_size
    perturbed = ids.repeat(N, 1)
    j = torch.arange(N)
    perturbed[j, j] = (ids[0, j] + 1 + torch.randint(0, V - 1, (N,))) % V
    base = model(ids)[0]
    with torch.no_grad():
        out = model(perturbed) if batched else torch.cat([model(p[None]) for p in perturbed])
    diff = (out - base).abs().amax(-1)  # (j, position)
    before = torch.stack([diff[k, :k].max() if k else torch.tensor(0.0) for k in range(N)])
    return before, diff[j, j], base.abs().max()


@settings(max_examples=25, deadline=None)
@given(cfg=configs(), N=st.integers(1, 150), seed=st.integers(0, 1000))
@example(cfg=WaveFieldConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, reach_max=16.0, chunk_size=8), N=97, seed=0)
@example(cfg=WaveFieldConfig(vocab_size=64, d_model=16, n_layers=3, n_heads=4, layer_types=["wave", "attention", "wave"], reach_max=4.0), N=131, seed=1)
@example(
    cfg=WaveFieldConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, reach_max=16.0, chunk_size=8, wave_deposit="outer", wave_norm=True), N=97, seed=2
)
@example(
    cfg=WaveFieldConfig(vocab_size=64, d_model=16, n_layers=3, n_heads=2, layer_types=["mamba2", "conv-attention", "wave"], chunk_size=8, ssm_state=8),
    N=41,
    seed=3,
)
def test_exact_causality(cfg, N, seed):
    """Changing token j moves no logit before j (beyond float32 FFT round-off), at every j,
    the j-1 neighbour included, and does move the logits at j."""
    model = model_for(cfg, seed)
    ids = torch.randint(0, cfg.vocab_size, (1, N), generator=torch.Generator(torch.get_default_device()).manual_seed(seed))
    with torch.no_grad():
        before, at_j, scale = leak_per_position(model, ids)
    j = before.argmax().item()
    assert before.max() <= 1e-5 * scale, f"changing token {j} moved the logits before it by {before.max().item():.3g}"
    assert (at_j > 0).all()  # the test can see a change when there is one


# every path but the FFT (whose round-off reaches every position, bounded above) is exact
@pytest.mark.parametrize("path, deposit", [("chunked", "channel"), ("recurrent", "channel"), ("fft", "outer"), ("chunked", "outer"), ("recurrent", "outer")])
def test_matmul_and_recurrent_paths_leak_exactly_nothing(path, deposit):
    cfg = WaveFieldConfig(vocab_size=50, d_model=16, n_layers=2, n_heads=2, reach_max=8.0, chunk_size=5, wave_path=path, wave_deposit=deposit)
    model = model_for(cfg, 3)
    ids = torch.randint(0, 50, (1, 23), generator=torch.Generator(torch.get_default_device()).manual_seed(0))
    with torch.no_grad():
        before, at_j, _ = leak_per_position(model, ids, batched=False)
    assert before.max() == 0
    assert (at_j > 0).all()


def set_path(model, path):
    for block in model.blocks:
        if hasattr(block.mixer, "path"):
            block.mixer.path = path


@settings(max_examples=20, deadline=None)
@given(cfg=configs(), N=st.integers(1, 120), cuts=st.lists(st.floats(0, 1), max_size=4), seed=st.integers(0, 1000))
def test_paths_and_continuation_agree(cfg, N, cuts, seed):
    """FFT == recurrence == chunked, the latter fed in pieces split at random points."""
    model = model_for(cfg, seed)
    ids = torch.randint(0, cfg.vocab_size, (2, N), generator=torch.Generator(torch.get_default_device()).manual_seed(seed))
    with torch.no_grad():
        set_path(model, "fft")
        ref = model(ids)
        set_path(model, "recurrent")
        rec = model(ids)
        set_path(model, "chunked")
        bounds = sorted({0, N, *(int(c * N) for c in cuts)})
        pieces, state = [], None
        for a, b in zip(bounds[:-1], bounds[1:]):
            logits, state = model(ids[:, a:b], state=state, return_state=True)
            pieces.append(logits)
    scale = ref.abs().max()
    assert (rec - ref).abs().max() <= 1e-5 * scale
    assert (torch.cat(pieces, 1) - ref).abs().max() <= 1e-5 * scale


@pytest.mark.parametrize("deposit", ["channel", "outer"])
@pytest.mark.parametrize(
    "layer_types",
    [
        ["wave", "wave"],
        ["attention", "wave"],
        ["wave", "wave-outer"],
        ["wave", "attention", "conv-attention"],
        ["mamba2", "wave", "mamba2"],
        ["mamba2", "conv-attention"],
    ],
)
def test_greedy_generate_matches_full_forward_argmax(layer_types, deposit):
    cfg = WaveFieldConfig(
        vocab_size=97,
        d_model=32,
        n_layers=len(layer_types),
        n_heads=4,
        layer_types=layer_types,
        reach_max=32.0,
        wave_deposit=deposit,
        wave_norm=deposit == "outer",
        ssm_state=16,
    )
    model = model_for(cfg, 0)
    prompt = torch.randint(0, 97, (2, 7), generator=torch.Generator(torch.get_default_device()).manual_seed(0))
    out = model.generate(prompt, max_new_tokens=64, temperature=0)
    ids = prompt
    with torch.no_grad():
        for _ in range(64):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ids)


def test_sampling_is_reproducible_and_respects_top_k():
    model = model_for(WaveFieldConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2), 0)
    prompt = torch.zeros(1, 3, dtype=torch.long)
    a = model.generate(prompt, 20, temperature=1.0, top_k=5, top_p=0.9, generator=torch.Generator(torch.get_default_device()).manual_seed(1))
    b = model.generate(prompt, 20, temperature=1.0, top_k=5, top_p=0.9, generator=torch.Generator(torch.get_default_device()).manual_seed(1))
    assert torch.equal(a, b)
    one = model.generate(prompt, 10, temperature=1.0, top_k=1, generator=torch.Generator(torch.get_default_device()).manual_seed(2))
    assert torch.equal(one, model.generate(prompt, 10, temperature=0))


@pytest.mark.parametrize("deposit", ["channel", "outer"])
def test_gradients_reach_the_physical_parameters(deposit):
    cfg = WaveFieldConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, layer_types=["wave", "wave"], wave_deposit=deposit)
    model = model_for(cfg, 0).train()
    ids = torch.randint(0, 64, (2, 40))
    torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()).backward()
    for block in model.blocks:
        for p in (block.mixer.omega_raw, block.mixer.alpha_raw, block.mixer.phi):
            assert p.grad is not None and torch.isfinite(p.grad).all() and (p.grad != 0).all()


def test_loss_from_targets_matches_the_logits_and_their_gradients():
    cfg = WaveFieldConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, layer_types=["wave", "attention"])
    ids = torch.randint(0, 64, (2, 41))
    targets = ids[:, 1:].clone()
    targets[0, :5] = -100  # nothing to predict there
    losses, grads = [], []
    for fused in (True, False):
        model = model_for(cfg, 0).train()
        loss = model(ids[:, :-1], targets=targets) if fused else torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), targets.flatten())
        loss.backward()
        losses.append(loss)
        grads.append([p.grad for p in model.parameters()])
    torch.testing.assert_close(losses[0], losses[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    with pytest.raises(ValueError, match="shape of input_ids"):
        model(ids, targets=targets)


def test_save_and_load_round_trip(tmp_path):
    cfg = WaveFieldConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, layer_types=["wave", "attention"])
    model = model_for(cfg, 0)
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = WaveFieldLM.from_pretrained(tmp_path / "m").eval()
    assert loaded.config == cfg
    ids = torch.randint(0, 64, (2, 30))
    with torch.no_grad():
        assert torch.equal(model(ids), loaded(ids))


def test_loading_bad_folders_says_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved wavefield model"):
        WaveFieldLM.from_pretrained(tmp_path / "nothing")
    model = model_for(WaveFieldConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2), 0)
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        WaveFieldLM.from_pretrained(tmp_path / "m")
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "config_version": 99}))
    with pytest.raises(ValueError, match="version"):
        WaveFieldLM.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "d_model": 32, "n_heads": 4}))
    with pytest.raises(ValueError, match="does not match its config"):
        WaveFieldLM.from_pretrained(tmp_path / "m")


def test_bad_inputs_raise_clear_errors():
    model = model_for(WaveFieldConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, layer_types=["wave", "attention"]), 0)
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        model(torch.tensor([[1, 64]]))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        model(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match="integer tensor"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"\(batch, seq_len\)"):
        model(torch.zeros(4, dtype=torch.long))
    _, state = model(torch.zeros(2, 5, dtype=torch.long), return_state=True)
    with pytest.raises(ValueError, match="wave field state"):
        model(torch.zeros(3, 1, dtype=torch.long), state=state)
    with pytest.raises(ValueError, match="one entry per layer"):
        model(torch.zeros(2, 1, dtype=torch.long), state=state[:1])
    with pytest.raises(ValueError, match="KV cache"):
        model(torch.zeros(2, 1, dtype=torch.long), state=[state[0], {"k": torch.zeros(2, 3), "v": torch.zeros(2, 3)}])


def test_empty_input_is_handled():
    model = model_for(WaveFieldConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, layer_types=["wave", "attention"]), 0)
    empty = torch.zeros(3, 0, dtype=torch.long)
    assert model(empty).shape == (3, 0, 64)
    ids = torch.randint(0, 64, (3, 9))
    _, state = model(empty, return_state=True)
    logits, state = model(ids, state=state, return_state=True)
    logits2, state2 = model(empty, state=state, return_state=True)
    assert logits2.shape == (3, 0, 64)
    with torch.no_grad():
        assert torch.allclose(logits, model(ids), atol=1e-6)


@pytest.mark.parametrize(
    "bad",
    [
        dict(n_heads=3),
        dict(layer_types=["wave"]),
        dict(layer_types=["wave", "mamba"]),
        dict(feature_map="relu2"),
        dict(reach_min=0.0),
        dict(wave_path="gpu"),
        dict(wave_deposit="matrix"),
        dict(layer_types=["conv-attention", "wave"], short_conv=0),
        dict(layer_types=["mamba2", "wave"], ssm_state=0),
        dict(layer_types=["mamba2", "wave"], ssm_state=10**6),
    ],
)
def test_config_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        WaveFieldConfig(**{**dict(d_model=64, n_layers=2, n_heads=4), **bad})


def test_from_pretrained_returns_an_eval_mode_model_in_the_asked_dtype(tmp_path):
    model = WaveFieldLM(WaveFieldConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, dropout=0.5)).train()
    model.save_pretrained(tmp_path)
    loaded = WaveFieldLM.from_pretrained(tmp_path)
    assert not loaded.training and not any(m.training for m in loaded.modules())
    ids = torch.randint(0, 32, (2, 9))
    torch.testing.assert_close(loaded(ids), loaded(ids), rtol=0, atol=0)  # no dropout draws
    half = WaveFieldLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize(
    "kwargs, phrase",
    [
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": -0.5}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": float("nan")}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": -3}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
    ],
)
def test_sample_rejects_settings_out_of_range(kwargs, phrase):
    from wavefield.model import sample

    logits = torch.randn(2, 11)
    with pytest.raises(ValueError, match=phrase):
        sample(logits, **{"temperature": 1.0, **kwargs})
    model = WaveFieldLM(WaveFieldConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2))
    with pytest.raises(ValueError, match=phrase):  # also through generate, before any decoding
        model.generate(torch.zeros(1, 3, dtype=torch.long), 2, **{"temperature": 1.0, **kwargs})


def test_generate_checks_its_settings_before_reading_the_prompt():
    model = WaveFieldLM(WaveFieldConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2))
    calls = []
    model.embed.register_forward_hook(lambda *_: calls.append(1))
    for kwargs, phrase in [
        ({"max_new_tokens": -3}, "max_new_tokens"),
        ({"max_new_tokens": 2.5}, "max_new_tokens"),
        ({"max_new_tokens": 2, "top_k": True}, "top_k"),
        ({"max_new_tokens": 2, "top_p": 0.0}, "top_p"),
    ]:
        with pytest.raises(ValueError, match=phrase):
            model.generate(torch.zeros(1, 3, dtype=torch.long), **kwargs)
    assert calls == []  # refused before any forward pass


def test_wave_outer_layers_take_the_recall_design_whatever_the_wave_fields_say():
    cfg = WaveFieldConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, layer_types=["wave", "wave-outer"], feature_map="silu", reach_max=256.0)
    wave, outer = (block.mixer for block in WaveFieldLM(cfg).blocks)
    assert (wave.deposit, wave.feature_map, wave.norm) == ("channel", "silu", False)
    assert (outer.deposit, outer.feature_map, outer.norm) == ("outer", "elu1", True)
    assert (1 / outer.alpha).min() >= 16 * (1 - 1e-4) and (1 / wave.alpha).min() < 16  # reach_min 1 for wave layers, 16 for outer ones
    assert outer.omega.max() <= 0.01 * math.pi / 17 * (1 + 1e-4) < wave.omega.max()
    mixed = WaveFieldLM(WaveFieldConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, layer_types=["wave-outer", "wave"], wave_implementation="fused"))
    assert [b.mixer.implementation for b in mixed.blocks] == ["reference", "fused"]  # wave_implementation is the "wave" layers' choice


def test_the_default_alternates_the_two_wave_layers_and_ends_with_a_channel_one():
    assert [WaveFieldConfig(n_layers=n).layer_types for n in (1, 2, 3, 5)] == [
        ["wave"],
        ["wave-outer", "wave"],
        ["wave", "wave-outer", "wave"],
        ["wave", "wave-outer", "wave", "wave-outer", "wave"],
    ]


def test_sampling_at_a_tiny_temperature_is_greedy_and_non_finite_logits_are_refused():
    from wavefield.model import sample

    logits = torch.tensor([[0.5, 3.0, -1.0], [2.0, -4.0, 1.0]])
    for temperature in (1e-40, 1e-300):  # logits / temperature alone overflows to inf, and softmax to NaN
        assert sample(logits, temperature=temperature).flatten().tolist() == [1, 0]
    for bad in (float("nan"), float("inf")):
        with pytest.raises(UserError, match="logits are not finite"):
            sample(logits.index_fill(1, torch.tensor([2]), bad), temperature=1.0)
        with pytest.raises(UserError, match="logits are not finite"):
            sample(logits.index_fill(1, torch.tensor([2]), bad), temperature=0)
