"""The peers of the wave layer as layers of their own: attention with the short conv on q, k, v
("conv-attention"). Each must be causal, continue exactly from its state (prompt in pieces,
then token by token), give a left-padded sample what it gives alone, and decode in a model
exactly as a full recompute does."""

import pytest
import torch

from wavefield import WaveFieldConfig, WaveFieldLM
from wavefield.layers import CausalSelfAttention

KINDS = ["conv-attention"]


def layer(kind, seed=0):
    torch.manual_seed(seed)
    if kind == "conv-attention":
        mixer = CausalSelfAttention(16, 2, short_conv=4)
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
    with pytest.raises(ValueError, match=r"'conv' must have shape \(2, 3, 48\)"):
        mixer(torch.randn(2, 1, 16), state={k: v for k, v in state.items() if k != "conv"})


@pytest.mark.parametrize("layer_types", [["wave", "attention", "conv-attention"]])
def test_a_mixed_model_decodes_the_tokens_a_full_recompute_picks(layer_types):
    torch.manual_seed(0)
    cfg = WaveFieldConfig(vocab_size=97, d_model=32, n_layers=len(layer_types), n_heads=4, layer_types=layer_types, reach_max=32.0, chunk_size=8)
    model = WaveFieldLM(cfg).eval()
    prompt = torch.randint(0, 97, (2, 7))
    out = model.generate(prompt, max_new_tokens=40, temperature=0)
    ids = prompt
    with torch.no_grad():
        for _ in range(40):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ids)
