"""Sequence mixers: the wave-field layer, the softmax-attention baseline (with or without the short
conv on q, k, v) and the Mamba-2 style state-space peer."""

from .attention import CausalSelfAttention, rotary
from .mamba2 import Mamba2Mixer
from .wave import WaveFieldAttention
