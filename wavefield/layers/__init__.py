"""Sequence mixers: the wave-field layer and the softmax-attention baseline."""

from .attention import CausalSelfAttention, rotary
from .wave import WaveFieldAttention
