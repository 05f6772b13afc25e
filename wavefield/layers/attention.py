"""Causal softmax self-attention with rotary positions: the transformer baseline and the
attention layers of hybrids. State is a KV cache: {"k": (B, H, T, d), "v": (B, H, T, d),
"buffer": KVBuffer}, k and v views of the first T positions of the buffer. Once a mask has
marked padding, the state also carries "mask" (B, T) bool, True at the real keys (a view of
the buffer's mask), and "next" (B,) int64, each sample's next rotary position (its number of
real tokens so far); a state without them has no padding: every key real, next = T.

The buffer is preallocated and grows by doubling, so decoding writes each new key and value
in place (amortised O(1) per token, not a copy of the whole cache). States are never changed
by a later call: a call writes only beyond the furthest position any state of its buffer has
reached, and a call continuing from an older state (a second branch from the same prompt, say)
copies that state's T positions into a buffer of its own first (copy on write).

With short_conv = K > 0 (the layer type "conv-attention") q, k, v first pass the short causal
depthwise conv of the wave layer (ops.conv, kernel K, with bias) over time, before rotary; the
state then also carries "conv", the last K-1 projections (B, K-1, 3D), so that continuing from
it is exact. Padding zeroes the projections at masked positions before the conv, as the wave
layer does: a real token after left padding sees the zero history a sequence starts with.

Padding: masked keys are seen by no real query, and each sample's tokens take rotary positions
0, 1, .. counting its real tokens only (cumsum(mask) - 1, clamped at 0), so a left-padded sample gets exactly
the scores it gets alone, in prefill and in decoding. A masked query sees itself only (its
output is don't-care, but finite). Without a mask and without padding in the state, the code
path is the unmasked one: SDPA's causal and mask-free fast paths. With the conv, masked
tokens between real ones are not exact (the conv reads zeros there instead of the real tokens
before them); left padding, and right padding at the real positions, are.
"""

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import conv_tail, short_conv
from .state_check import expect_tensor


def rotary(x: torch.Tensor, start, base: float) -> torch.Tensor:
    """Rotate channel pairs (i, i + d/2) of x (B, H, N, d) by angle position * base^(-2i/d),
    at positions start, start + 1, .. (start an int), or at each sample's own positions
    (start a (B, N) tensor)."""
    B, H, N, d = x.shape
    half = d // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)  # (d/2,)
    if isinstance(start, int):
        pos = torch.arange(start, start + N, device=x.device, dtype=torch.float32)  # (N,)
    else:
        pos = start.to(torch.float32)[:, None]  # (B, 1, N): the same for every head
    angle = pos[..., None] * inv_freq  # (N, d/2) or (B, 1, N, d/2)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class KVBuffer:
    """Keys and values (B, H, capacity, d) shaped like `like` (B, H, N, d), shared by the states
    that view their first positions; `end` is the furthest position any of those states reached.
    With `masked`, also the key mask (B, capacity) bool (True: a real token)."""

    def __init__(self, like: torch.Tensor, capacity: int, masked: bool = False):
        B, H, _, d = like.shape
        self.k, self.v = like.new_empty(B, H, capacity, d), like.new_empty(B, H, capacity, d)
        self.mask = like.new_empty(B, capacity, dtype=torch.bool) if masked else None
        self.end = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[2]


class AttentionTerms(NamedTuple):
    """A CausalSelfAttention forward term by term (CausalSelfAttention.decompose):
    out_proj((weights @ values).transpose(1, 2).reshape(B, N, D)) is the layer's output."""

    weights: torch.Tensor  # softmax attention (B, H, N, N), zero above the diagonal
    values: torch.Tensor  # v (B, H, N, d)


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, rope_base: float = 10000.0, dropout: float = 0.0, short_conv: int = 0):
        super().__init__()
        if d_model % n_heads or (d_model // n_heads) % 2:
            raise ValueError(f"d_model ({d_model}) / n_heads ({n_heads}) must be an even whole number")
        if short_conv < 0:
            raise ValueError(f"short_conv must be >= 0, got {short_conv}")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.rope_base, self.dropout, self.short_conv = rope_base, dropout, short_conv
        self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=False)
        # the wave layer's short conv on q, k, v (0: none, the plain transformer's attention)
        self.conv = nn.Conv1d(3 * d_model, 3 * d_model, short_conv, groups=3 * d_model) if short_conv else None
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    STATE_KEYS = ("k", "v", "mask", "next", "conv")  # what a state holds ("buffer", the memory k and v view, is not part of it)

    def check_state(self, state, batch_size: int):
        if not isinstance(state, dict):
            raise ValueError("attention layer state must be a dict with 'k' and 'v' (as returned with return_state=True)")
        expect_tensor(state, "k", (batch_size, self.n_heads, None, self.head_dim), "float", "attention KV cache")
        T = state["k"].shape[2]
        expect_tensor(state, "v", (batch_size, self.n_heads, T, self.head_dim), "float", "attention KV cache")
        if ("mask" in state) != ("next" in state):
            raise ValueError("attention state with padding must carry both 'mask' and 'next' (as returned with return_state=True)")
        if "mask" in state:
            expect_tensor(state, "mask", (batch_size, T), "bool", "attention")
            expect_tensor(state, "next", (batch_size,), "int64", "attention")
        if self.conv is not None:
            expect_tensor(state, "conv", (batch_size, self.short_conv - 1, 3 * self.d_model), "float", "conv-attention")

    def reserve(self, state, batch_size: int, extra: int, masked: bool = False) -> dict:
        """The KV cache `state` (None: empty) with room for `extra` more tokens (reserve_cache)."""
        like = self.qkv_proj.weight.new_empty(batch_size, self.n_heads, 0, self.head_dim)  # (B, H, 0, d)
        new = reserve_cache(state, like, extra, masked)
        if self.conv is not None and new.get("conv") is None:  # an empty state: the conv starts from zeros, as without a state
            new["conv"] = like.new_zeros(batch_size, self.short_conv - 1, 3 * self.d_model)
        return new

    def _qkv(self, x, start, conv_state=None, mask=None):
        """q, k, v (B, H, N, d) each for x (B, N, D) at positions start .. (an int), or at the
        positions (B, N) given, rotary applied to q and k; and the new conv state (None without
        the conv). With the conv, the projections are zeroed where mask (B, N) is False, then
        convolved over time continuing from conv_state (B, K-1, 3D) (None: zeros)."""
        B, N, D = x.shape
        qkv = self.qkv_proj(x)  # (B, N, 3D)
        tail = None
        if self.conv is not None:
            if mask is not None:  # masked positions enter the conv as zeros
                qkv = qkv * mask[..., None].to(qkv.dtype)
            cm = qkv.mT.contiguous()  # (B, 3D, N): channel-major, as ops.conv works
            history = conv_state.to(cm.dtype).mT if conv_state is not None else cm.new_zeros(B, 3 * D, self.short_conv - 1)  # (B, 3D, K-1)
            qkv = short_conv(cm, history, self.conv.weight[:, 0], self.conv.bias).mT  # (B, N, 3D)
            tail = conv_tail(cm, history).mT  # (B, K-1, 3D)
        q, k, v = qkv.reshape(B, N, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, N, d) each
        return rotary(q, start, self.rope_base), rotary(k, start, self.rope_base), v, tail

    def forward(self, x, state=None, return_state: bool = False, mask=None):
        """x (B, N, D) -> (B, N, D); the state is the KV cache of every earlier token.

        mask (B, N) bool, True at real tokens (None: all are, and so are the new ones after a
        state with padding): see the module docstring."""
        B, N, D = x.shape
        if state is not None:
            self.check_state(state, B)
        if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (B, N)):
            raise ValueError(f"attention layer mask must be a bool tensor of shape {(B, N)}, got {mask.dtype} of shape {tuple(mask.shape)}")
        past = state["k"].shape[2] if state is not None else 0
        padded = mask is not None or (state is not None and "mask" in state)
        start = past  # without padding, every sample's tokens sit at positions past, past + 1, ..
        if padded:  # each sample's own positions: its real tokens so far
            mask = mask if mask is not None else torch.ones(B, N, dtype=torch.bool, device=x.device)
            nxt = state["next"] if state is not None and "next" in state else torch.full((B,), past, device=x.device)
            start = (nxt[:, None] + mask.cumsum(1) - 1).clamp(min=0)  # (B, N)
        q, k, v, tail = self._qkv(x, start, state.get("conv") if state is not None else None, mask)
        keys = mask
        if state is not None or return_state:
            state = _append(state, k, v, mask)
            k, v, keys = state["k"], state["v"], state.get("mask")  # (B, H, T + N, d); (B, T + N)
            if padded:
                state["next"] = nxt + mask.sum(1)
            if tail is not None:
                state["conv"] = tail
        drop = self.dropout if self.training else 0.0
        if padded:  # query i (at key index past + i) sees the real keys up to itself, and itself
            j = torch.arange(past + N, device=x.device)
            i = torch.arange(past, past + N, device=x.device)[:, None]
            allowed = (j <= i) & (keys[:, None, :] | (j == i))  # (B, N, T + N)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], dropout_p=drop)
        elif past == 0 or N == 1:  # one query after a past sees every key: exactly causal without a mask
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=past == 0)
        else:  # query i sits at position past + i and sees keys 0 .. past + i
            y = _causal_after_past(q, k, v, past, drop)
        out = self.out_proj(y.transpose(1, 2).reshape(B, N, D))
        return (out, state) if return_state else out

    def decompose(self, x) -> AttentionTerms:
        """The forward of x (B, N, D) from an empty cache, as its attention weights and values:
        the reference composition (explicit softmax) beside forward's fused SDPA."""
        q, k, v, _ = self._qkv(x, 0)
        N = x.shape[1]
        scores = q @ k.mT / math.sqrt(self.head_dim)  # (B, H, N, N)
        scores = scores.masked_fill(torch.ones(N, N, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
        return AttentionTerms(scores.softmax(-1), v)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, short_conv={self.short_conv}"


_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)  # SDPA's CPU kernel, with its log-sum-exp


def _causal_after_past(q, k, v, past: int, dropout_p: float):
    """Attention of the N > 1 queries q (B, H, N, d) at positions past .. past + N - 1 over the
    keys and values k, v (B, H, past + N, d), query i seeing keys 0 .. past + i (past >= 1).

    On CPU at inference (no gradient, no dropout): two calls of SDPA's own CPU kernel, the past
    keys unmasked and the last N causal (a square block), merged by their log-sum-exps, so that
    no (N, past + N) mask is built (it cost a prompt read in pieces a fifth of its time and, at
    64K tokens, 84 MB at its peak). The kernel's backward ignores its log-sum-exp, so with a
    gradient, and on other devices: SDPA with that mask."""
    inference = not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)) and dropout_p == 0.0
    if q.device.type == "cpu" and _FLASH_CPU is not None and inference:
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))  # the kernel reads each row's channels contiguously
        y_past, lse_past = _FLASH_CPU(q, k[:, :, :past], v[:, :, :past], 0.0, False)[:2]  # (B, H, N, d), (B, H, N) float32
        y_new, lse_new = _FLASH_CPU(q, k[:, :, past:], v[:, :, past:], 0.0, True)[:2]
        lse = torch.logaddexp(lse_past, lse_new)
        w_past, w_new = torch.exp(lse_past - lse)[..., None], torch.exp(lse_new - lse)[..., None]  # the two blocks' shares of each softmax
        return (w_past * y_past.float() + w_new * y_new.float()).to(q.dtype)
    N = q.shape[2]
    mask = torch.ones(N, past + N, dtype=torch.bool, device=q.device).tril(diagonal=past)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def _append(state, k, v, mask=None) -> dict:
    """The KV cache `state` (or None) followed by k, v (B, H, N, d), written in place where the
    state's buffer has room (_room) and no gradient is recorded. Otherwise the state's T
    positions go into a new buffer of max(T + N, 2T) positions first: doubling when the buffer
    is full, copy on write when another state of the same buffer has gone beyond this one.
    The key mask goes along where there is padding: the state's (its keys all real if it has
    none) followed by mask (B, N) bool (None: all real)."""
    T, N = (state["k"].shape[2] if state is not None else 0), k.shape[2]
    masked = mask is not None or (state is not None and "mask" in state)
    # while autograd records, earlier views of the buffer are saved for backward: writing into it
    # would change them, so every call gets a buffer of its own (a copy, as torch.cat would make)
    recording = torch.is_grad_enabled() and (k.requires_grad or v.requires_grad or (T > 0 and state["k"].requires_grad))
    buf = None if recording else _room(state, k, N, masked)
    if buf is None:
        buf = _grow(state, k, T + N if recording else max(T + N, 2 * T), masked)  # a prompt's cache exactly; the first token after it doubles it
    buf.k[:, :, T : T + N], buf.v[:, :, T : T + N] = k, v
    if masked:
        buf.mask[:, T : T + N] = mask if mask is not None else True
    buf.end = T + N
    return _views(state, buf, T + N, masked)


def _room(state, like, n: int, masked: bool):
    """The state's buffer, where n more positions can be written into it in place: the state
    views the buffer's first positions (a state cut to some samples, or made by hand, does not),
    no other state of it went further, and it has room and the dtype of `like`. Else None."""
    if state is None or state.get("buffer") is None:
        return None
    buf, T = state["buffer"], state["k"].shape[2]
    views = buf.k.shape[0] == like.shape[0] and _is_prefix(state["k"], buf.k) and _is_prefix(state["v"], buf.v)
    if masked:  # and where there is padding, the key mask too
        views = views and buf.mask is not None and "mask" in state and _is_prefix(state["mask"], buf.mask)
    return buf if views and buf.end == T and T + n <= buf.capacity and buf.k.dtype == like.dtype else None


def _is_prefix(view: torch.Tensor, full: torch.Tensor) -> bool:
    """Whether `view` is full[..., :T] (along dim 2, or 1 for a mask) of the same memory: an empty one too, whose data_ptr says nothing."""
    same = view.untyped_storage().data_ptr() == full.untyped_storage().data_ptr()
    return same and view.storage_offset() == full.storage_offset() and view.stride() == full.stride() and view.shape[0] == full.shape[0]


def _grow(state, like, capacity: int, masked: bool) -> KVBuffer:
    """A new buffer of `capacity` positions shaped like `like`, holding the state's T positions (and key mask)."""
    buf = KVBuffer(like, capacity, masked)
    T = state["k"].shape[2] if state is not None else 0
    if T:
        buf.k[:, :, :T], buf.v[:, :, :T] = state["k"], state["v"]
        if masked:
            buf.mask[:, :T] = state.get("mask", True)
    buf.end = T
    return buf


def _views(state, buf: KVBuffer, T: int, masked: bool) -> dict:
    """The state of the buffer's first T positions; entries of `state` other than the cache (its
    'next') carry over."""
    new = {**(state or {}), "k": buf.k[:, :, :T], "v": buf.v[:, :, :T], "buffer": buf}
    if masked:
        new["mask"] = buf.mask[:, :T]
    return new


def reserve_cache(state, like, extra: int, masked: bool = False) -> dict:
    """The KV cache `state` (None: an empty one) with room for `extra` more positions written in
    place: its own buffer where that has the room, else a buffer of exactly T + extra positions
    (a prompt's cache then needs no doubling while max_new_tokens are decoded after it). `like`
    (B, H, *, d) gives the shape and dtype; with `masked` the state carries a key mask and each
    sample's next position from here on, as after a padded call."""
    masked = masked or (state is not None and "mask" in state)
    buf = _room(state, like, extra, masked) or _grow(state, like, (state["k"].shape[2] if state is not None else 0) + extra, masked)
    new = _views(state, buf, buf.end, masked)
    if masked and "next" not in new:  # every key so far real: each sample's next position is T
        new["next"] = torch.full((like.shape[0],), buf.end, dtype=torch.int64, device=like.device)
    return new
