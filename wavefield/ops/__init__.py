"""Pure tensor operations: the wave kernel, the three exact propagation paths, the short conv."""

from .conv import short_conv
from .kernel import lower_toeplitz, next_fast_len, reach, read_weights, wave_gain, wave_kernel, wave_powers
from .propagate import (
    PATHS,
    carry_in,
    propagate,
    propagate_chunked,
    propagate_fft,
    propagate_heads,
    propagate_recurrent,
    state_out,
)
from .outer import OUTER_PATHS, outer_chunked, outer_quadratic, outer_recurrent, outer_state_out, propagate_outer
