"""One check for the tensors of a mixer's state (check_state of each layer): a state handed
back by the user, or read from a file, must hold tensors of the shapes and kinds the layer
makes, or a ValueError names what is wrong (wavefield.states turns it into a UserError)."""

import torch

KINDS = {
    "float": lambda t: t.is_floating_point(),
    "complex": lambda t: t.is_complex(),
    "bool": lambda t: t.dtype == torch.bool,
    "int64": lambda t: t.dtype == torch.int64,
}


def expect_tensor(state: dict, key: str, shape: tuple, kind: str, what: str):
    """state[key] must be a `kind` tensor of `shape` (None: any size along that dim)."""
    t = state.get(key)
    fits = isinstance(t, torch.Tensor) and t.dim() == len(shape) and all(s is None or s == n for s, n in zip(shape, t.shape)) and KINDS[kind](t)
    if not fits:
        shown = "(" + ", ".join("T" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        got = f"{t.dtype} of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        article = "an" if kind == "int64" else "a"
        raise ValueError(f"{what} state {key!r} must be {article} {kind} tensor of shape {shown}, got {got}")
