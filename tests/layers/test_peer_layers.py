"""The peers of the wave layer as layers of their own: attention with the short conv on q, k, v
("conv-attention") and the Mamba-2 style state-space mixer ("mamba2"). Each must be causal, continue exactly from its state (prompt in pieces,
then token by token) and give a left-padded sample what it gives alone. In a model (with wave
and attention layers too) they decode as a full recompute does: tests/test_model.py."""

import pytest
import torch

from wavefield import WaveFieldConfig, WaveFieldLM
from wavefield.layers import CausalSelfAttention, Mamba2Mixer

KINDS = ["conv-attention", "mamba2", "mamba2-recurrent"]


def layer(kind, seed=0):
    """A small mixer of `kind`; mamba2 with chunks of 5, so that pieces cut chunks anywhere
    ("mamba2-recurrent": the token-by-token reference scan)."""
    torch.manual_seed(seed)
    if kind == "conv-attention":
        mixer = CausalSelfAttention(16, 2, short_conv=4)
    else:
        mixer = Mamba2Mixer(16, 2, d_state=8, chunk_size=5, scan="recurrent" if kind.endswith("recurrent") else "auto")
        with torch.no_grad():  # the default init decays slowly: make some heads forget within a few tokens
            mixer.dt_bias.normal_(0.0, 1.0)
    return mixer.eval()


def run_in_pieces(mixer, x, bounds, mask=None):
    """The mixer over x (B, N, D) fed as the pieces between bounds, the state carried."""
    outs, state = [], None
    for a, b in zip(bounds[:-1], bounds[1:]):
        piece_mask = {"mask": mask[:, a:b]} if mask is not None else {}
        out, state = mixer(x[:, a:b], state=state, return_state=True, **piece_mask)
        outs.append(out)
    return torch.cat(outs, 1), state


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_changing_future_tokens_never_changes_past_outputs(kind):
    mixer, x = layer(kind), torch.randn(1, 19, 16)
    base = mixer(x)
    for j in (0, 1, 7, 18):
        changed = x.clone()
        changed[:, j:] = torch.randn(1, 19 - j, 16)
        out = mixer(changed)
        torch.testing.assert_close(out[:, :j], base[:, :j], atol=1e-6, rtol=1e-5)
        assert (out[:, j] - base[:, j]).abs().max() > 1e-3  # the test sees a change where there is one


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
@torch.no_grad()
def test_a_prompt_in_random_pieces_then_token_by_token_equals_one_pass(kind, seed):
    mixer, x = layer(kind, seed), torch.randn(2, 31, 16)
    gen = torch.Generator().manual_seed(seed)
    cuts = sorted(set(torch.randint(1, 20, (4,), generator=gen).tolist()))
    bounds = [0, *cuts, 20, *range(21, 32)]  # the prompt in pieces, then one token at a time
    out, _ = run_in_pieces(mixer, x, bounds)
    torch.testing.assert_close(out, mixer(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_a_left_padded_sample_gets_what_it_gets_alone(kind):
    """Prefill with the mask, then decoding after it: at the real positions, as if alone."""
    mixer, x = layer(kind, 3), torch.randn(2, 14, 16)
    mask = torch.ones(2, 14, dtype=torch.bool)
    mask[0, :5] = False  # sample 0: five pads, then 9 real tokens
    x_pad = x.clone()
    x_pad[0, :5] = 100 * torch.randn(5, 16)  # what sits at a masked position must not matter
    out, _ = run_in_pieces(mixer, x_pad, [0, 10, 11, 12, 13, 14], mask)
    alone = mixer(x[:1, 5:])
    torch.testing.assert_close(out[:1, 5:], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1:], mixer(x[1:]), atol=1e-5, rtol=1e-5)


def test_the_conv_changes_the_outputs_and_as_the_identity_changes_nothing():
    """Beside the same attention without the conv: outputs differ with the trained-from-init
    conv, and equal them once the conv is the identity (tap K-1 one, the others and the bias 0)."""
    conv = layer("conv-attention", 5)
    plain = CausalSelfAttention(16, 2).eval()
    plain.load_state_dict({k: v for k, v in conv.state_dict().items() if not k.startswith("conv.")})
    x = torch.randn(2, 12, 16)
    with torch.no_grad():
        assert (conv(x) - plain(x)).abs().max() > 1e-2
        conv.conv.weight.zero_()
        conv.conv.weight[:, 0, -1] = 1.0
        conv.conv.bias.zero_()
        torch.testing.assert_close(conv(x), plain(x), atol=1e-6, rtol=1e-5)


def test_a_conv_attention_state_without_its_conv_tail_is_refused():
    mixer = layer("conv-attention")
    _, state = mixer(torch.randn(2, 5, 16), return_state=True)
    assert state["conv"].shape == (2, 3, 48)
    with pytest.raises(ValueError, match=r"'conv' must be a float tensor of shape \(2, 3, 48\)"):
        mixer(torch.randn(2, 1, 16), state={k: v for k, v in state.items() if k != "conv"})


@torch.no_grad()
def test_the_chunked_mamba2_scan_equals_its_recurrent_reference():
    chunked, recurrent = layer("mamba2", 6), layer("mamba2-recurrent", 6)
    x = torch.randn(2, 23, 16)
    out, state = chunked(x, return_state=True)
    ref, ref_state = recurrent(x, return_state=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state["ssm"], ref_state["ssm"], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_mamba2_decodes_from_a_state_of_constant_size():
    mixer, x = layer("mamba2"), torch.randn(2, 40, 16)
    _, state = mixer(x[:, :8], return_state=True)
    shapes = {k: v.shape for k, v in state.items()}
    assert shapes == {"ssm": (2, 2, 8, 16), "conv": (2, 3, 32 + 16)}
    for t in range(8, 40):
        _, state = mixer(x[:, t : t + 1], state=state, return_state=True)
    assert {k: v.shape for k, v in state.items()} == shapes and state["ssm"].dtype == torch.float32


def test_gradients_reach_a_log_dt_bias_and_d():
    mixer = layer("mamba2").train()
    mixer(torch.randn(2, 12, 16)).square().mean().backward()
    for p in (mixer.A_log, mixer.dt_bias, mixer.D, mixer.conv.weight, mixer.in_proj.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and (p.grad != 0).all()


def test_mamba2_starts_with_dt_log_uniform_and_a_in_range():
    mixer = Mamba2Mixer(32, 64)
    dt = torch.nn.functional.softplus(mixer.dt_bias)
    assert 1e-3 * 0.999 <= dt.min() and dt.max() <= 1e-1 * 1.001
    assert (dt < 1e-2).any() and (dt > 1e-2).any()  # spread over both decades
    A = -torch.exp(mixer.A_log)
    assert (-16 <= A).all() and (A <= -1).all() and (mixer.D == 1).all()


def test_a_bad_mamba2_state_is_refused():
    mixer = layer("mamba2")
    _, state = mixer(torch.randn(2, 5, 16), return_state=True)
    with pytest.raises(ValueError, match=r"'ssm' must be a float tensor of shape \(2, 2, 8, 16\)"):
        mixer(torch.randn(2, 1, 16), state={**state, "ssm": state["ssm"][:, :1]})
    with pytest.raises(ValueError, match=r"'conv' must be a float tensor of shape \(2, 3, 48\)"):
        mixer(torch.randn(2, 1, 16), state={"ssm": state["ssm"]})


def test_mamba2_per_head_numbers_train_without_weight_decay():
    """A_log, dt_bias and D are vectors: param_groups puts them in the group without decay."""
    from wavefield.train import param_groups

    model = WaveFieldLM(WaveFieldConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, layer_types=["mamba2"], ssm_state=8))
    decay = {id(p): g["weight_decay"] for g in param_groups(model, 0.1) for p in g["params"]}
    mixer = model.blocks[0].mixer
    assert all(decay[id(p)] == 0.0 for p in (mixer.A_log, mixer.dt_bias, mixer.D)) and decay[id(mixer.in_proj.weight)] == 0.1
