"""The damped wave kernel and its complex-mode form.

Every head h carries one damped complex mode. With lambda = exp(-alpha + i*omega) and
c = exp(i*phi), its impulse response is

    kappa(t) = gain * Re(c * lambda^t) = gain * exp(-alpha t) * cos(omega t + phi),   t >= 0

where gain = 1 - exp(-alpha) = 1 / sum_t exp(-alpha t) normalises the envelope. The gain lies
in (0, 1], so it can neither vanish nor blow up when the oscillation cancels itself.

All functions here take the physical parameters (omega, alpha, phi), each of shape (H,), and
compute in float64: omega * t loses a whole radian of phase in float32 once t reaches a few
million, so the powers are formed in double precision and handed back as float32 / complex64.

Precision policy: the propagation (every path, both deposits) runs inside `exact_float32`, in
IEEE float32 whatever the caller chose: autocast off, and on CUDA no TF32 in its matmuls
(TF32 keeps 10 mantissa bits, so the paths would agree only to about 1e-3, not to float32
round-off). The projections, MLPs and output head follow the caller's settings.
"""

import contextlib
import math

import torch
import torch.nn.functional as F


def next_fast_len(n: int) -> int:
    """Smallest 2^a * 3^b * 5^c >= n: sizes that every FFT library handles quickly."""
    best = 1 << max(0, (n - 1).bit_length())  # the next power of two is always a candidate
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            size = p35
            while size < n:
                size *= 2
            best = min(best, size)
            p35 *= 3
        p5 *= 5
    return best


def wave_gain(alpha: torch.Tensor) -> torch.Tensor:
    """1 - exp(-alpha), the envelope normaliser, (H,) float64."""
    return -torch.expm1(-alpha.double())


def wave_powers(omega: torch.Tensor, alpha: torch.Tensor, n: int, start: int = 0) -> torch.Tensor:
    """lambda^t for t = start .. start + n - 1, (H, n) complex128."""
    t = torch.arange(start, start + n, device=omega.device, dtype=torch.float64)
    log_mag = -alpha.double()[:, None] * t  # (H, n)
    angle = omega.double()[:, None] * t  # (H, n)
    return torch.polar(torch.exp(log_mag), angle)


def read_weights(omega, alpha, phi, n: int, start: int = 0) -> torch.Tensor:
    """gain * c * lambda^t for t = start .. start + n - 1, (H, n) complex64.

    The field state s (a complex number per channel) reads out as y = Re(weight * s).
    """
    c = torch.polar(torch.ones_like(phi, dtype=torch.float64), phi.double())  # (H,)
    w = (wave_gain(alpha) * c)[:, None] * wave_powers(omega, alpha, n, start)
    return w.to(torch.complex64)


def wave_kernel(omega, alpha, phi, n: int) -> torch.Tensor:
    """kappa(t) = gain * exp(-alpha t) cos(omega t + phi) for t = 0 .. n-1, (H, n) float32."""
    return read_weights(omega, alpha, phi, n).real


def lower_toeplitz(values: torch.Tensor, shift: int = 0) -> torch.Tensor:
    """(H, C) -> (H, C, C) with M[h, i, j] = values[h, i - j - shift] where i - j >= shift, else
    exactly 0: a causal convolution with `values` as a matrix. Built from windows of the values
    behind C - 1 + shift zeros, which is data movement only (no gather, no mask)."""
    C = values.shape[-1]
    if C == 0:
        return values.new_zeros(*values.shape, 0)
    padded = F.pad(values, (C - 1 + shift, 0))[..., : 2 * C - 1]  # padded[m] = values[m - (C - 1) - shift], zeros before
    return padded.flip(-1).unfold(-1, C, 1).flip(-2)  # M[i, j] = padded[C - 1 + i - j]


def period(omega: float) -> float:
    """Tokens per oscillation, 2 pi / omega; infinite where omega has underflowed to 0 (a pure decay)."""
    return 2 * math.pi / omega if omega > 0 else math.inf


def reach(alpha: torch.Tensor, level: float = math.exp(-1)) -> torch.Tensor:
    """Distance in tokens at which the envelope exp(-alpha t) falls to `level`."""
    return -math.log(level) / alpha


@contextlib.contextmanager
def exact_float32(device_type: str):
    """Autocast off and, on CUDA, TF32 off for the matmuls inside; the caller's settings come back after."""
    if device_type != "cuda":
        with torch.autocast(device_type=device_type, enabled=False):
            yield
        return
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
