"""Causal softmax self-attention with rotary positions: the transformer baseline and the
attention layers of hybrids. State is a KV cache: {"k": (B, H, T, d), "v": (B, H, T, d)}.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


def rotary(x: torch.Tensor, start: int, base: float) -> torch.Tensor:
    """Rotate channel pairs (i, i + d/2) of x (B, H, N, d) by angle position * base^(-2i/d)."""
    B, H, N, d = x.shape
    half = d // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)  # (d/2,)
    pos = torch.arange(start, start + N, device=x.device, dtype=torch.float32)
    angle = pos[:, None] * inv_freq[None, :]  # (N, d/2)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, rope_base: float = 10000.0, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads or (d_model // n_heads) % 2:
            raise ValueError(f"d_model ({d_model}) / n_heads ({n_heads}) must be an even whole number")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.rope_base, self.dropout = rope_base, dropout
        self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def check_state(self, state, batch_size: int):
        if not isinstance(state, dict) or "k" not in state or "v" not in state:
            raise ValueError("attention layer state must be a dict with 'k' and 'v' (as returned with return_state=True)")
        k = state["k"]
        if k.dim() != 4 or k.shape[0] != batch_size or k.shape[1] != self.n_heads or k.shape[3] != self.head_dim:
            raise ValueError(f"attention KV cache must have shape ({batch_size}, {self.n_heads}, T, {self.head_dim}), got {tuple(k.shape)}")

    def forward(self, x, state=None, return_state: bool = False):
        """x (B, N, D) -> (B, N, D); the state is the KV cache of every earlier token."""
        B, N, D = x.shape
        if state is not None:
            self.check_state(state, B)
        past = state["k"].shape[2] if state is not None else 0
        q, k, v = self.qkv_proj(x).view(B, N, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, N, d) each
        q, k = rotary(q, past, self.rope_base), rotary(k, past, self.rope_base)
        if state is not None:
            k = torch.cat([state["k"], k], dim=2)  # (B, H, T + N, d)
            v = torch.cat([state["v"], v], dim=2)
        drop = self.dropout if self.training else 0.0
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        else:  # query i sits at position past + i and sees keys 0 .. past + i
            mask = torch.ones(N, past + N, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        out = self.out_proj(y.transpose(1, 2).reshape(B, N, D))
        if not return_state:
            return out
        return out, {"k": k, "v": v}
