"""wavefield: language models built on wave-field attention."""

import importlib.abc
import importlib.util
import sys
import warnings

from .config import WaveFieldConfig
from .layers import CausalSelfAttention, WaveFieldAttention
from .model import WaveFieldLM

__version__ = "0.1.0"
__all__ = ["WaveFieldConfig", "WaveFieldLM", "WaveFieldAttention", "CausalSelfAttention", "__version__"]


# ---------------------------------------------------------------- Hugging Face registration
# `import wavefield` registers model_type "wavefield" with transformers' Auto classes
# (wavefield.hf), but transformers is optional and costs seconds to import: so the
# registration runs when transformers is imported, now if it already is, never without it.


def _register_hf():
    try:
        from . import hf  # noqa: F401  (registers on import)
    except Exception as e:  # a transformers we cannot work with must not break the user's import of it
        warnings.warn(f"wavefield: could not register with transformers ({type(e).__name__}: {e})", stacklevel=2)


class _RegisterWhenImported(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when `transformers` is first imported, it lets the normal import
    run and then registers wavefield's classes, and leaves sys.meta_path."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register_hf()

        spec.loader.exec_module = exec_then_register
        return spec


if sys.modules.get("transformers") is not None:
    _register_hf()
elif not any(isinstance(f, _RegisterWhenImported) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenImported())
