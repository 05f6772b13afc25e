"""The attention peers of the speed benchmark compute what they claim: each against a dense,
masked reference built from the same projections."""

import math

import pytest
import torch
import torch.nn.functional as F

from wavefield.bench.peers import LinearAttention, MaterialisedAttention, SlidingWindowAttention


def dense_reference(q, k, v, allowed, feature=None):
    if feature is None:
        scores = (q @ k.mT / math.sqrt(q.shape[-1])).masked_fill(~allowed, float("-inf"))
        return scores.softmax(-1) @ v
    weights = (feature(q) @ feature(k).mT).masked_fill(~allowed, 0.0)
    return weights @ v / weights.sum(-1, keepdim=True)


@pytest.mark.parametrize("N", [1, 7, 33, 100])
def test_peers_match_dense_references(N):
    torch.manual_seed(N)
    D, H = 32, 4
    peers = {"mat": MaterialisedAttention(D, H), "sliding": SlidingWindowAttention(D, H, window=16), "linear": LinearAttention(D, H, chunk_size=8)}
    for peer in peers.values():
        peer.load_state_dict(peers["mat"].state_dict())
    x = torch.randn(2, N, D)
    q, k, v = peers["mat"].qkv_proj(x).view(2, N, 3, H, D // H).permute(2, 0, 3, 1, 4)
    i, j = torch.arange(N)[:, None], torch.arange(N)[None, :]
    with torch.no_grad():
        torch.testing.assert_close(peers["mat"].mix(q, k, v), F.scaled_dot_product_attention(q, k, v, is_causal=True))
        torch.testing.assert_close(peers["sliding"].mix(q, k, v), dense_reference(q, k, v, (j <= i) & (j > i - 16)))
        elu1 = lambda t: F.elu(t) + 1  # noqa: E731
        torch.testing.assert_close(peers["linear"].mix(q, k, v), dense_reference(q, k, v, j <= i, elu1))
        assert peers["sliding"](x).shape == x.shape
