"""wavefield: language models built on wave-field attention."""

from .config import WaveFieldConfig
from .layers import CausalSelfAttention, WaveFieldAttention
from .model import WaveFieldLM

__version__ = "0.1.0"
__all__ = ["WaveFieldConfig", "WaveFieldLM", "WaveFieldAttention", "CausalSelfAttention", "__version__"]
