"""Attention peers for the speed benchmark, each a complete mixer x (B, N, D) -> (B, N, D)
with its input and output projections, so that every variant pays for the same matmuls.

* MaterialisedAttention: the textbook form, softmax(q k^T / sqrt(d) + causal mask) v, with
  the (B, H, N, N) score matrix in memory. O(N^2) time and memory.
* SlidingWindowAttention: each token attends to itself and the `window - 1` tokens before it,
  computed block by block (a query block of `window` tokens sees its own block and the one
  before it). O(N * window).
* LinearAttention: causal linear attention with the elu + 1 feature map, in the standard
  chunked form: masked q k^T inside chunks, a running (d x d) sum k^T v between them. O(N d^2).

Causal SDPA (torch's flash kernel on CPU and GPU) is the project's own CausalSelfAttention.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class _Projected(nn.Module):
    """q, k, v projections (B, H, N, d) in, one output projection out; subclasses mix."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        B, N, D = x.shape
        q, k, v = self.qkv_proj(x).view(B, N, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, N, d)
        y = self.mix(q, k, v)  # (B, H, N, d)
        return self.out_proj(y.transpose(1, 2).reshape(B, N, D))


class MaterialisedAttention(_Projected):
    def mix(self, q, k, v):
        N = q.shape[2]
        scores = q @ k.mT / math.sqrt(self.head_dim)  # (B, H, N, N)
        mask = torch.ones(N, N, dtype=torch.bool, device=q.device).triu(1)
        return scores.masked_fill(mask, float("-inf")).softmax(-1) @ v


class SlidingWindowAttention(_Projected):
    def __init__(self, d_model: int, n_heads: int, window: int = 512):
        super().__init__(d_model, n_heads)
        self.window = window

    def mix(self, q, k, v):
        B, H, N, d = q.shape
        W = min(self.window, N)
        nb = -(-N // W)
        pad = (0, 0, W, nb * W - N)  # one empty block in front (the block before block 0), zeros at the end
        q = F.pad(q, (0, 0, 0, nb * W - N)).view(B, H, nb, W, d)
        k, v = (F.pad(t, pad).view(B, H, nb + 1, W, d) for t in (k, v))
        keys = torch.cat([k[:, :, :-1], k[:, :, 1:]], dim=3)  # (B, H, nb, 2W, d): previous block + own
        values = torch.cat([v[:, :, :-1], v[:, :, 1:]], dim=3)
        i = torch.arange(W, device=q.device)[:, None] + W  # query position within the 2W keys
        j = torch.arange(2 * W, device=q.device)[None, :]
        allowed = (j <= i) & (j > i - W)  # (W, 2W): itself and the W-1 before it
        first = torch.arange(nb, device=q.device)[:, None, None] == 0
        allowed = allowed & ~(first & (j < W))  # block 0 has no previous block
        scores = (q @ keys.mT) / math.sqrt(d)  # (B, H, nb, W, 2W)
        y = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ values
        return y.reshape(B, H, nb * W, d)[:, :, :N]


class LinearAttention(_Projected):
    def __init__(self, d_model: int, n_heads: int, chunk_size: int = 64):
        super().__init__(d_model, n_heads)
        self.chunk_size = chunk_size

    def mix(self, q, k, v):
        B, H, N, d = q.shape
        C = min(self.chunk_size, N)
        nc = -(-N // C)
        q, k = F.elu(q) + 1, F.elu(k) + 1
        q, k, v = (F.pad(t, (0, 0, 0, nc * C - N)).view(B, H, nc, C, d) for t in (q, k, v))
        kv = k.mT @ v  # (B, H, nc, d, d): each chunk's sum of k^T v
        ksum = k.sum(3)  # (B, H, nc, d)
        # what the earlier chunks hold: exclusive cumulative sums over chunks
        kv_before = kv.cumsum(2) - kv
        k_before = ksum.cumsum(2) - ksum
        causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        scores = (q @ k.mT).masked_fill(~causal, 0.0)  # (B, H, nc, C, C)
        num = scores @ v + q @ kv_before  # (B, H, nc, C, d)
        den = scores.sum(-1, keepdim=True) + q @ k_before[..., None]  # (B, H, nc, C, 1)
        return (num / den).reshape(B, H, nc * C, d)[:, :, :N]
