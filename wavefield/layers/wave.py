"""WaveFieldAttention: a causal sequence mixer that replaces softmax attention.

    q, k, v, g = split(W_in x)                    # (B, N, D) each, H heads of d channels
    q, k, v    = short causal depthwise conv      # optional, kernel size `short_conv`
    u          = f(k) * v                         # what each token deposits into the field
    y[t]       = sum_{s<=t} kappa_h(t-s) u[s]     # the field: a damped wave per head
    out        = W_out(sigmoid(g) * f(q) * y)     # read the field and gate

With deposit="outer" each token deposits the outer product f(k) v^T into a matrix field per
head and reads it with f(q) (ops.outer): y[t] = sum_{s<=t} kappa_h(t-s) (f(q[t]) . f(k[s])) v[s],
out = W_out(sigmoid(g) * y). The kernel is the same three numbers per head; the state grows
from d to d x d complex numbers per head, which is what lets a layer recall many key-value
pairs. With norm=True the read (f(q) * y, or y) is RMS-normalised per head before the gate.

kappa_h(t) = gain_h * exp(-alpha_h t) cos(omega_h t + phi_h): three physical numbers per head.
The field is the token axis itself, one cell per token, so nothing is ever interpolated.

State (for processing a long input in pieces, and for decoding one token at a time) is a
dict: "field", the complex wave state (B, H, d) (or (B, H, d, d) for outer deposits), and
"conv", the last short_conv - 1 inputs of the short convolution (B, short_conv - 1, 3D).

Padding: with a mask, masked tokens deposit nothing and enter the short conv as zeros, so a
left-padded batch gives each sample exactly what it gives alone (see forward).

`decompose` gives the forward term by term (deposits, kernel, complex field, read, gate; for
outer deposits the queries, keys and values too): what diagnostics read, tested to reproduce
the forward.
"""

import math
from functools import partial
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..ops import conv_tail, gated_field, lower_toeplitz, propagate_heads, propagate_outer_heads, short_conv, wave_kernel
from ..ops.field import FEATURE_MAPS
from .state_check import expect_tensor

ALPHA_MIN = 1e-5  # damping floor: reach can grow to 1e5 tokens, never infinite
DEPOSITS = ("channel", "outer")
RECOMPUTE = ("none", "field", "tile")  # what backward recomputes instead of keeping (see the constructor)
IMPLEMENTATIONS = ("auto", "fused", "reference")  # of the field stage (see field_implementation)
# the options of a "wave-outer" layer (config.LAYER_TYPES), the design that learns associative
# recall (docs/recall.md): outer-product deposits of positive features (elu + 1), each head's read
# RMS-normalised, heads that start slow (omega_scale 0.01) and reach at least OUTER_REACH_MIN tokens
OUTER_LAYER = {"deposit": "outer", "feature_map": "elu1", "norm": True, "omega_scale": 0.01, "implementation": "auto"}
OUTER_REACH_MIN = 16.0


def outer_layer_options(reach_min: float, reach_max: float) -> dict:
    """A "wave-outer" layer's options for a config's reach range: OUTER_LAYER, and reach_min
    raised to OUTER_REACH_MIN (to reach_max where that is shorter)."""
    return dict(OUTER_LAYER, reach_min=min(max(reach_min, OUTER_REACH_MIN), reach_max))


def init_scales(n_heads: int, layer_index: int, n_layers: int, reach_min: float, reach_max: float, omega_scale: float = 1.0):
    """Initial (omega, alpha) per head: reach 1/alpha log-spaced over [reach_min, reach_max].

    The heads of all layers interleave on one log grid, so each layer covers every scale with
    an offset of its own. A head's frequency starts at pi / (1 + reach): local heads oscillate
    quickly (omega near pi/2), long-range heads are slow, with a period of about twice their reach.
    omega_scale < 1 slows every head down (near 0: a pure decay, as in RetNet's retention).
    """
    frac = (torch.arange(n_heads, dtype=torch.float64) + (layer_index + 0.5) / n_layers) / n_heads
    reach = reach_min * (reach_max / reach_min) ** frac  # (H,)
    return omega_scale * math.pi / (1.0 + reach), 1.0 / reach


def field_implementation(implementation: str, deposit: str, norm: bool, recompute: str) -> str:
    """The field stage's implementation, "fused" or "reference", for the layer options given.

    "fused" is one op with a hand-written backward (ops.gated_field) that keeps only the
    projections and recomputes the rest: it needs channel deposits without norm, and a memory
    policy that recomputes the field ("field" or "tile"). "reference" composes autograd ops and
    works with every option. "auto" takes "fused" wherever it can."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if recompute not in RECOMPUTE:
        raise ValueError(f"recompute must be one of {RECOMPUTE}, got {recompute!r}")
    fusable = deposit == "channel" and not norm and recompute != "none"
    if implementation == "fused" and not fusable:
        raise ValueError(
            f"the fused field stage needs channel deposits without norm and recompute 'field' or 'tile' "
            f"(it always recomputes the field in backward); got deposit={deposit!r}, norm={norm}, recompute={recompute!r}: "
            f"use implementation 'reference' or 'auto'"
        )
    return "fused" if implementation == "fused" or (implementation == "auto" and fusable) else "reference"


class WaveFieldAttention(nn.Module):
    def __init__(
        self,
        d_model: int,
        n_heads: int,
        short_conv: int = 4,
        feature_map: str = "identity",
        reach_min: float = 1.0,
        reach_max: float = 1024.0,
        path: str = "auto",
        chunk_size: int = 64,
        layer_index: int = 0,
        n_layers: int = 1,
        tile_size: int = 2048,
        recompute: str = "field",
        deposit: str = "channel",
        norm: bool = False,
        omega_scale: float = 1.0,
        gate: bool = True,
        implementation: str = "auto",
    ):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {tuple(FEATURE_MAPS)}, got {feature_map!r}")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.short_conv, self.path, self.chunk_size, self.tile_size = short_conv, path, chunk_size, tile_size
        if tile_size < 1:
            raise ValueError(f"tile_size must be >= 1, got {tile_size}")
        if deposit not in DEPOSITS:
            raise ValueError(f"deposit must be one of {DEPOSITS}, got {deposit!r}")
        # the memory policy, what backward recomputes instead of keeping: "none", nothing;
        # "field", everything between the two projections (conv, propagation, read and gate:
        # cheap next to the matmuls); "tile", the whole tile from its input (memory O(tile)).
        # The implementation of the field stage: "fused" or "reference" (field_implementation).
        self.recompute = recompute
        self.implementation = field_implementation(implementation, deposit, norm, recompute)
        self.feature_map, self.f = feature_map, FEATURE_MAPS[feature_map]
        self.deposit, self.norm = deposit, norm

        self.gate = gate  # without it the read goes to W_out unscaled, and W_in has no g rows
        self.in_proj = nn.Linear(d_model, (4 if gate else 3) * d_model, bias=False)
        self.conv = nn.Conv1d(3 * d_model, 3 * d_model, short_conv, groups=3 * d_model) if short_conv else None
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

        # the three physical parameters per head, stored unconstrained
        self._init_scales = (n_heads, layer_index, n_layers, reach_min, reach_max, omega_scale)  # what initial_scales() recomputes
        omega, alpha = init_scales(*self._init_scales)
        self.omega_raw = nn.Parameter(torch.logit(omega / math.pi).float())  # omega = pi * sigmoid
        self.alpha_raw = nn.Parameter(torch.log(torch.expm1(alpha - ALPHA_MIN)).float())  # softplus + floor
        self.phi = nn.Parameter(torch.zeros(n_heads))

    def initial_scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(omega, alpha) per head at initialisation (float64, before any training): what the
        heads started from, for reports of what training moved."""
        return init_scales(*self._init_scales)

    def physical_parameters(self) -> list[nn.Parameter]:
        """The three physical parameters per head, unconstrained: omega_raw, alpha_raw, phi. The
        one place that names them (weight decay, freezing, their learning rate, diagnostics)."""
        return [self.omega_raw, self.alpha_raw, self.phi]

    @property
    def omega(self) -> torch.Tensor:
        """Frequency in radians per token, in (0, pi): (H,)."""
        return math.pi * torch.sigmoid(self.omega_raw)

    @property
    def alpha(self) -> torch.Tensor:
        """Damping per token, > 0: (H,)."""
        return F.softplus(self.alpha_raw) + ALPHA_MIN

    def _short_conv(self, qkv, conv_state):
        """Causal depthwise conv over time on channel-major qkv (B, 3D, N), continuing from the
        previous inputs in conv_state (B, K-1, 3D). Returns the output and the new conv state."""
        history = self._history(qkv, conv_state)
        return short_conv(qkv, history, self.conv.weight[:, 0], self.conv.bias), conv_tail(qkv, history).transpose(1, 2)

    def _history(self, qkv, conv_state):
        """The K-1 conv inputs before qkv (B, 3D, N), channel-major (B, 3D, K-1): the state's, or zeros."""
        if conv_state is not None:
            return conv_state.to(qkv.dtype).transpose(1, 2)
        return qkv.new_zeros(qkv.shape[0], 3 * self.d_model, self.short_conv - 1)

    STATE_KEYS = ("field", "conv")  # what a state of this layer holds (wavefield.states saves these)

    def check_state(self, state, batch_size: int):
        if not isinstance(state, dict):
            raise ValueError("wave layer state must be a dict with a 'field' entry (as returned with return_state=True)")
        expected = (batch_size, self.n_heads, self.head_dim) + ((self.head_dim,) if self.deposit == "outer" else ())
        expect_tensor(state, "field", expected, "complex", "wave field")
        if self.conv is not None:
            expect_tensor(state, "conv", (batch_size, self.short_conv - 1, 3 * self.d_model), "float", "wave conv")

    def forward(self, x, state=None, return_state: bool = False, mask=None):
        """x (B, N, D) -> (B, N, D); with return_state, (out, state) for exact continuation.

        mask (B, N) bool, True at real tokens (None: all are): a masked position deposits
        nothing, and its projections q, k, v are zeroed before the short conv. A real token
        after masked ones then sees the conv history a sequence starts with (zeros), and the
        field it reads holds the real tokens' deposits only: the kernel is time-invariant, so
        leading zeros change nothing. Left padding is therefore exact (each sample as if run
        alone, the state after it included), and right padding is, at the real positions. Masks
        between real tokens are not: the field keeps decaying over them. A masked position's
        own output is the read of the field there (don't-care)."""
        B, N, D = x.shape
        if state is not None:
            self.check_state(state, B)
        if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (B, N)):
            raise ValueError(f"wave layer mask must be a bool tensor of shape {(B, N)}, got {mask.dtype} of shape {tuple(mask.shape)}")
        if N == 0:
            out = self.out_proj(x)
            return (out, state) if return_state else out
        path = self.path if self.path != "auto" else ("recurrent" if N <= 4 else "chunked")
        if path != "chunked":
            return self._tiles(x, state, path, N, return_state, mask)
        # The chunked path continues from a state exactly, so the input runs in tiles of about
        # tile_size tokens, projections included: a tile's intermediates stay in cache and extra
        # memory is O(tile). Long sequences are cut along time, short ones grouped by sample.
        # On a GPU, groups run one after another would leave it idle: the batch stays whole there.
        group = max(1, self.tile_size // N) if x.device.type == "cpu" else B
        if B <= group:
            return self._tiles(x, state, path, self.tile_size, return_state, mask)
        pieces = x.split(group, dim=0)  # split, not slices: one gradient copy, not one per piece
        states = [None] * len(pieces)
        if state is not None:  # each group continues from its own samples' state
            states = [{k: v[i : i + group] if v is not None else None for k, v in state.items()} for i in range(0, B, group)]
        masks = mask.split(group, dim=0) if mask is not None else [None] * len(pieces)
        results = [
            self._tiles(piece, piece_state, path, self.tile_size, return_state, piece_mask) for piece, piece_state, piece_mask in zip(pieces, states, masks)
        ]
        if not return_state:
            return torch.cat(results, dim=0)
        outs, new_states = zip(*results)
        return torch.cat(outs, dim=0), {k: _cat([s[k] for s in new_states]) for k in new_states[0]}

    def _tiles(self, x, state, path: str, tile: int, return_state: bool, mask=None):
        """x (B, N, D) in tiles of `tile` tokens along time, the state carried from one to the next."""
        outs, tiles = [], x.split(tile, dim=1)
        masks = mask.split(tile, dim=1) if mask is not None else [None] * len(tiles)
        mix = partial(checkpoint, self._mix, use_reentrant=False) if self.recompute == "tile" and torch.is_grad_enabled() else self._mix
        for i, (piece, piece_mask) in enumerate(zip(tiles, masks)):
            out, state = mix(piece, state, path, return_state or i + 1 < len(tiles), piece_mask)
            outs.append(out)
        out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        return (out, state) if return_state else out

    def _mix(self, x, state, path: str, need_state: bool, mask=None):
        """One pass over x (B, N, D), channel-major inside: every channel's time series is contiguous."""
        p = self._project(x)  # (B, 4D, N)
        if mask is not None:  # masked positions: zero projections (the conv's inputs), and no deposit
            mask = mask[:, None].to(p.dtype)  # (B, 1, N)
            p = p * mask
        if self.implementation == "fused":
            field = self._gated_field  # one op; its backward recomputes what it needs from p
        elif self.recompute == "field" and torch.is_grad_enabled():
            field = partial(checkpoint, self._field, use_reentrant=False)
        else:
            field = self._field
        z, state = field(p, state, path, need_state, mask)  # (B, D, N)
        if not _plain(self.out_proj) or z.shape[-1] == 1:  # a wrapped projection (a LoRA adapter), or one token per sample
            return self.out_proj(z.mT), state
        out = torch.bmm(z.mT, self.out_proj.weight.t().expand(x.shape[0], -1, -1))  # (B, N, D)
        return out, state

    def inputs(self, x, conv_state=None):
        """What the field is built from, for x (B, N, D): q, k, v after the short conv and the gate
        g, channel-major (B, D, N) each, and the new conv state. Used by forward and diagnostics."""
        return self._split(self._project(x), conv_state)

    def _project(self, x):
        """x (B, N, D) -> W_in x^T (B, 4D, N) (3D without the gate): channel-major straight out of the
        matmul. The matmul reads the weight itself; a projection that is not a plain nn.Linear (a
        PEFT LoRA adapter wrapped around it) is called as the module it is instead."""
        if not _plain(self.in_proj) or x.shape[1] == 1:  # one token per sample (decoding): one matmul reads the weight once, not once per sample
            return self.in_proj(x).mT.contiguous()
        return torch.bmm(self.in_proj.weight.expand(x.shape[0], -1, -1), x.mT)

    def _split(self, p, conv_state):
        """Projections p (B, 4D, N) -> q, k, v (short conv applied), g (None without the gate), and
        the new conv state."""
        D = self.d_model
        qkv, g = p.split([3 * D, D], dim=1) if self.gate else (p, None)
        if self.conv is not None:
            qkv, conv_state = self._short_conv(qkv, conv_state)
        return (*qkv.split(D, dim=1), g, conv_state)

    def _gated_field(self, p, state, path: str, need_state: bool, mask=None):
        """_field for channel deposits without norm, fused into one op with a hand-written backward (ops.field)."""
        conv_state, field_in = (state["conv"], state["field"]) if state is not None else (None, None)
        weight, bias, history = None, None, None
        if self.conv is not None:
            weight, bias, history = self.conv.weight[:, 0], self.conv.bias, self._history(p[:, : 3 * self.d_model], conv_state)
        z = gated_field(
            p,
            weight,
            bias,
            history,
            self.omega,
            self.alpha,
            self.phi,
            field_in,
            self.n_heads,
            self.feature_map,
            self.gate,
            path,
            self.chunk_size,
            need_state,
            mask,
        )
        if not need_state:
            return z, None
        z, field, tail = z
        return z, {"field": field, "conv": tail.transpose(1, 2) if tail is not None else conv_state}

    def _field(self, p, state, path: str, need_state: bool, mask=None):
        """Projections p (B, 4D, N) -> the gated read of the field z (B, D, N), and the new state,
        nothing deposited where mask (B, 1, N) is 0. The reference composition of autograd ops;
        _gated_field is its fused form."""
        B, _, N = p.shape
        D = self.d_model
        q, k, v, g, conv_state = self._split(p, state["conv"] if state is not None else None)  # (B, D, N) each

        field_in = state["field"] if state is not None else None
        fk = self.f(k) if mask is None else self.f(k) * mask  # masked positions deposit nothing
        if self.deposit == "outer":
            outer_path = "quadratic" if path == "fft" else path  # its whole-sequence form
            fq = self._heads(self.f(q)) * self.head_dim**-0.5
            y = propagate_outer_heads(fq, self._heads(fk), self._heads(v), self.omega, self.alpha, self.phi, field_in, outer_path, self.chunk_size, need_state)
        else:
            u = self._heads(fk * v)  # (B, H, d, N)
            y = propagate_heads(u, self.omega, self.alpha, self.phi, field_in, path, self.chunk_size, need_state)
        field = None
        if need_state:
            y, field = y
        if self.deposit == "outer":
            read = y.to(p.dtype)  # (B, H, d, N)
        else:
            read = self._heads(self.f(q)) * y.to(p.dtype)  # (B, H, d, N)
        if self.norm:
            read = read * self._rms_scale(read)
        z = read.reshape(B, D, N) if g is None else torch.sigmoid(g) * read.reshape(B, D, N)  # (B, D, N)
        return z, {"field": field, "conv": conv_state}

    def _heads(self, t):
        """(B, D, N) -> (B, H, d, N)."""
        return t.view(t.shape[0], self.n_heads, self.head_dim, t.shape[-1])

    def _rms_scale(self, read):
        """1 / RMS over each head's d channels of the read (B, H, d, N): (B, H, 1, N). With
        norm=True the read-out is read * this (F.rms_norm without a weight, in float32)."""
        r = read.float()
        return torch.rsqrt(r.pow(2).mean(2, keepdim=True) + torch.finfo(read.dtype).eps).to(read.dtype)

    def kernel(self, n: int) -> torch.Tensor:
        """Each head's impulse response kappa_h(t), t = 0 .. n-1: (H, n) float32."""
        return wave_kernel(self.omega, self.alpha, self.phi, n)

    def decompose(self, x) -> "WaveTerms":
        """The forward of x (B, N, D) from a zero state, term by term. For channel deposits:

            out = out_proj((gate * read * Re(exp(i phi) * field)).reshape(B, D, N).mT)

        where field = gain * s[t], s[t] = lambda s[t-1] + u[t], so Re(exp(i phi) field[t]) =
        sum_{s<=t} kappa(t - s) u[s]. The reference composition beside forward's fused op; the
        complex field is two FFT propagations, at phase 0 (its real part) and -pi/2 (imaginary).

        For outer deposits u[s] = f(k[s]) v[s]^T, a d x d matrix per head (the field's d x d
        channels flattened, entry (i, j) at i d + j), and the read-out is linear attention whose
        scores are weighted by the wave: read = f(q) d^-0.5 (times the RMS-norm scale) reads
        Re(exp(i phi) field[t]), or equally out = out_proj((gate * sum_s weights[t, s] v[s])
        .reshape(B, D, N).mT) with weights[t, s] = kappa(t - s) (read[t] . f(k[s])) (WaveTerms.weights)."""
        q, k, v, g, _ = self.inputs(x)  # (B, D, N) each
        fq, fk, v = self._heads(self.f(q)), self._heads(self.f(k)), self._heads(v)  # (B, H, d, N)
        B, H, d, N = fk.shape
        u = fk * v if self.deposit == "channel" else (fk[:, :, :, None] * v[:, :, None]).reshape(B, H, d * d, N)
        re, im = (propagate_heads(u, self.omega, self.alpha, torch.full_like(self.phi, phase), path="fft") for phase in (0.0, -math.pi / 2))
        field = torch.complex(re, im)  # (B, H, d, N), or (B, H, d * d, N)
        outer = self.deposit == "outer"
        read = fq * d**-0.5 if outer else fq
        if self.norm:  # the scale of the normalised read-out, from the read it normalises: read times the wave
            wave = (torch.polar(torch.ones_like(self.phi), self.phi)[:, None, None] * field).real  # kappa * u
            y = torch.einsum("bhin,bhijn->bhjn", read, wave.view(B, H, d, d, N)) if outer else read * wave
            read = read * self._rms_scale(y)
        gate = self._heads(torch.sigmoid(g)) if g is not None else torch.ones_like(read)
        return WaveTerms(u, self.kernel(N), field, read, gate, *((fk, v) if outer else ()))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, short_conv={self.short_conv}, deposit={self.deposit!r}, norm={self.norm}, gate={self.gate}, path={self.path!r}, recompute={self.recompute!r}, implementation={self.implementation!r}"


class WaveTerms(NamedTuple):
    """A wave layer's forward term by term (WaveFieldAttention.decompose), channel-major; C, the
    field's channels per head, is d for channel deposits and d x d for outer ones."""

    deposits: torch.Tensor  # u = f(k) * v (B, H, d, N), or f(k) v^T flattened (B, H, d * d, N)
    kernel: torch.Tensor  # kappa_h(t) (H, N)
    field: torch.Tensor  # gain * s[t] (B, H, C, N) complex: its wave, Re(exp(i phi) field) = kappa * u
    read: torch.Tensor  # f(q) (B, H, d, N) (times d^-0.5 for outer deposits), times the RMS-norm scale where norm=True
    gate: torch.Tensor  # sigmoid(g) (B, H, d, N); ones without the gate
    keys: torch.Tensor | None = None  # outer deposits: f(k) (B, H, d, N)
    values: torch.Tensor | None = None  # outer deposits: v (B, H, d, N)

    @property
    def weights(self) -> torch.Tensor:
        """How much each earlier token s reaches t: (B, H, N, N), zero above the diagonal. Channel
        deposits: kappa(t - s), the same for every sample; outer ones, kappa(t - s) times the
        match of t's read with s's key."""
        toeplitz = lower_toeplitz(self.kernel)  # (H, N, N)
        if self.keys is None:
            return toeplitz.expand(self.read.shape[0], -1, -1, -1)
        return toeplitz * torch.einsum("bhdt,bhds->bhts", self.read, self.keys)


def _plain(projection: nn.Module) -> bool:
    """True for an nn.Linear itself, whose weight the layer may read directly (not a subclass or a wrapper)."""
    return type(projection) is nn.Linear


def _cat(entries):
    return torch.cat(entries, dim=0) if entries[0] is not None else None
