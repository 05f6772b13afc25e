"""Pure tensor operations: the wave kernel, the three exact propagation paths, the short conv,
the whole field stage of a layer as one op (conv, deposit, propagation, read, gate), the
selective state-space recurrence of the Mamba-2 peer (SSD), and the output head's cross-entropy
computed a block of rows at a time."""

from .conv import causal_conv, causal_conv_backward, conv_tail, short_conv
from .field import gated_field
from .kernel import lower_toeplitz, next_fast_len, period, reach, read_weights, wave_gain, wave_kernel, wave_powers
from .loss import linear_cross_entropy
from .outer import OUTER_PATHS, outer_chunked, outer_quadratic, outer_recurrent, outer_state_out, propagate_outer, propagate_outer_heads
from .propagate import PATHS, carry_in_heads, propagate, propagate_heads, state_out_heads
from .ssd import segsum, ssd_chunked, ssd_reference, ssd_step
