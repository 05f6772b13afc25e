"""Mamba2Mixer: a Mamba-2 style selective state-space mixer (Dao & Gu 2024), the recurrent peer
of the wave layer, in plain PyTorch.

    z, xBC, dt = split(W_in x)                     # E = expand * D inner channels, H heads of P = E / H
    x, B, C    = split(silu(short conv(xBC)))      # (B, N, E), (B, N, S), (B, N, S): S = d_state
    dt         = softplus(dt + dt_bias)            # (B, N, H), > 0
    A          = -exp(A_log)                       # (H,), < 0
    y          = SSD(x, dt, A, B, C) + D * x       # per head: h[t] = exp(dt A) h[t-1] + dt B x^T, y = C^T h
    out        = W_out(RMSNorm(y * silu(z)))       # the gated RMSNorm

The recurrence is ops.ssd: chunked for a sequence, the one-token step for decoding. B and C
are shared by the heads (one group). dt_bias starts where dt is log-uniform in [dt_min,
dt_max], A_log at the log of a uniform draw from [1, 16], D at 1.

State: {"ssm": (B, H, S, P) float32 (float64 for a float64 model), "conv": (B, K-1, E + 2S),
the last K-1 inputs of the short conv} (no "conv" with short_conv 0): constant in size.

Padding: with a mask, a masked position's projections are zeroed (so the conv reads zeros
there) and its dt is 0, so the state neither decays nor grows there: a left-padded sample gets
exactly what it gets alone, and right padding is exact at the real positions. Masked tokens
between real ones are exact for the state, not for the conv (it reads zeros there).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import conv_tail, short_conv, ssd_chunked, ssd_reference
from .state_check import expect_tensor

SCANS = ("auto", "chunked", "recurrent")  # "auto": the step for one token, chunked otherwise


class Mamba2Mixer(nn.Module):
    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_state: int = 64,
        short_conv: int = 4,
        expand: int = 2,
        chunk_size: int = 64,
        scan: str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        inner = expand * d_model
        if inner % n_heads:
            raise ValueError(f"expand * d_model ({inner}) must be divisible by n_heads ({n_heads})")
        if scan not in SCANS:
            raise ValueError(f"scan must be one of {SCANS}, got {scan!r}")
        if min(d_state, chunk_size) < 1 or short_conv < 0 or not 0 < dt_min <= dt_max:
            raise ValueError(
                f"need d_state, chunk_size >= 1, short_conv >= 0 and 0 < dt_min <= dt_max, got {d_state}, {chunk_size}, {short_conv}, {dt_min}, {dt_max}"
            )
        self.d_model, self.n_heads, self.inner, self.head_dim, self.d_state = d_model, n_heads, inner, inner // n_heads, d_state
        self.short_conv, self.chunk_size, self.scan = short_conv, chunk_size, scan
        self.in_proj = nn.Linear(d_model, 2 * inner + 2 * d_state + n_heads, bias=False)  # z, x, B, C, dt
        channels = inner + 2 * d_state  # x, B and C pass the conv
        self.conv = nn.Conv1d(channels, channels, short_conv, groups=channels) if short_conv else None
        self.norm = nn.RMSNorm(inner, eps=norm_eps)
        self.out_proj = nn.Linear(inner, d_model, bias=False)

        # per head: dt's bias (softplus(dt_bias) log-uniform in [dt_min, dt_max]), A = -exp(A_log), D
        dt = torch.exp(torch.rand(n_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # the inverse of softplus
        self.A_log = nn.Parameter(torch.log(torch.empty(n_heads).uniform_(1.0, 16.0)))
        self.D = nn.Parameter(torch.ones(n_heads))

    STATE_KEYS = ("ssm", "conv")  # what a state of this layer holds (wavefield.states saves these)

    def check_state(self, state, batch_size: int):
        if not isinstance(state, dict):
            raise ValueError("mamba2 layer state must be a dict with an 'ssm' entry (as returned with return_state=True)")
        expect_tensor(state, "ssm", (batch_size, self.n_heads, self.d_state, self.head_dim), "float", "mamba2")
        if self.conv is not None:
            expect_tensor(state, "conv", (batch_size, self.short_conv - 1, self.inner + 2 * self.d_state), "float", "mamba2")

    def forward(self, x, state=None, return_state: bool = False, mask=None):
        """x (B, N, D) -> (B, N, D); with return_state, (out, state) for exact continuation.
        mask (B, N) bool, True at real tokens (None: all are): see the module docstring."""
        B, N, _ = x.shape
        if state is not None:
            self.check_state(state, B)
        if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (B, N)):
            raise ValueError(f"mamba2 layer mask must be a bool tensor of shape {(B, N)}, got {mask.dtype} of shape {tuple(mask.shape)}")
        E, S, H, P = self.inner, self.d_state, self.n_heads, self.head_dim
        p = self.in_proj(x)  # (B, N, 2E + 2S + H)
        if mask is not None:  # masked positions: zero projections (the conv's inputs there)
            p = p * mask[..., None].to(p.dtype)
        z, xbc, dt = p.split([E, E + 2 * S, H], dim=-1)
        new_state = {}
        if self.conv is not None:
            cm = xbc.mT.contiguous()  # (B, E + 2S, N): channel-major, as ops.conv works
            history = state["conv"].to(cm.dtype).mT if state is not None else cm.new_zeros(B, E + 2 * S, self.short_conv - 1)
            xbc = short_conv(cm, history, self.conv.weight[:, 0], self.conv.bias).mT  # (B, N, E + 2S)
            new_state["conv"] = conv_tail(cm, history).mT  # (B, K-1, E + 2S)
        xs, Bm, Cm = F.silu(xbc).split([E, S, S], dim=-1)  # (B, N, E), (B, N, S), (B, N, S)
        dt = F.softplus(dt + self.dt_bias)  # (B, N, H)
        if mask is not None:  # and no decay, no deposit: the state passes a masked position unchanged
            dt = dt * mask[..., None].to(dt.dtype)
        xs = xs.view(B, N, H, P)  # (B, N, H, P)
        f = torch.promote_types(x.dtype, torch.float32)  # the recurrence runs in float32 at least
        args = (xs.to(f), dt.to(f), -torch.exp(self.A_log.to(f)), Bm.to(f), Cm.to(f), state["ssm"] if state is not None else None)
        scan = self.scan if self.scan != "auto" else ("recurrent" if N == 1 else "chunked")
        y, new_state["ssm"] = ssd_reference(*args) if scan == "recurrent" else ssd_chunked(*args, chunk_size=self.chunk_size)
        y = y.to(x.dtype) + xs * self.D.to(x.dtype)[:, None]  # (B, N, H, P)
        out = self.out_proj(self.norm(y.reshape(B, N, E) * F.silu(z)))
        return (out, new_state) if return_state else out

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, inner={self.inner}, d_state={self.d_state}, short_conv={self.short_conv}, chunk_size={self.chunk_size}, scan={self.scan!r}"
