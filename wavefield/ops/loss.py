"""Cross-entropy of a linear output head, a block of rows at a time, never holding all logits.

    loss = mean_i [ logsumexp(h_i W^T) - (h_i W^T)[target_i] ]     over rows with a target

The plain way, F.cross_entropy(F.linear(h, W), targets), writes the whole (M, vocab) logit
matrix, keeps it (and its log-softmax) for backward, and passes over it several more times:
at 8K tokens and a vocabulary of 8192 that is 256 MB per copy, and on a CPU a fifth of a
training step went into those passes. Here each block of `chunk_size` rows computes its
logits, its loss and, when gradients are needed, its gradient (softmax - one-hot) while the
block is still in cache; the gradients of h and W are kept and scaled by the incoming
gradient in backward. Reference: `F.cross_entropy(F.linear(h, W), targets)`, tested against it.
"""

import torch

IGNORE_INDEX = -100
REDUCTIONS = ("mean", "sum")


def _blocked(hidden, weight, targets, ignore_index: int, chunk_size: int, want_h: bool, want_w: bool):
    """hidden (M, D), weight (V, D), targets (M,) -> (summed loss, grad of hidden or None, grad
    of weight or None), the gradients those of the summed loss, formed only when asked for."""
    M, V = hidden.shape[0], weight.shape[0]
    w = weight.to(hidden.dtype)
    grad_h = torch.empty_like(hidden) if want_h else None
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    # one logits buffer for every block (fresh multi-MB tensors cost page faults on CPUs);
    # the softmax and its gradient are formed in it in place, in float32
    logits = hidden.new_empty(min(chunk_size, M), V)
    probs = logits if logits.dtype == torch.float32 else torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    for start in range(0, M, chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        z, p = logits[: len(h)], probs[: len(h)]
        torch.mm(h, w.t(), out=z)  # (m, V)
        if p is not z:
            p.copy_(z)
        keep = t != ignore_index
        t = torch.where(keep, t, 0)[:, None]  # (m, 1), ignored rows read column 0 and are masked
        top = p.amax(dim=1, keepdim=True)
        picked = p.gather(1, t)
        norm = p.sub_(top).exp_().sum(dim=1, keepdim=True)  # p = exp(logits - top)
        total -= ((picked - top - norm.log())[:, 0] * keep).sum()  # log-probability of each target
        if want_h or want_w:
            grad = p.div_(norm)  # softmax
            grad.scatter_add_(1, t, -torch.ones_like(t, dtype=grad.dtype)).mul_(keep[:, None])  # - one-hot
            if grad is not z:
                grad = z.copy_(grad)
            if want_h:
                torch.mm(grad, w, out=grad_h[start : start + chunk_size])
            if want_w and grad.dtype == grad_w.dtype:
                grad_w.addmm_(grad.t(), h)
            elif want_w:
                grad_w += grad.t() @ h
    return total, grad_h, grad_w


def _scale(targets, ignore_index: int, reduction: str):
    return 1.0 / (targets != ignore_index).sum() if reduction == "mean" else torch.ones((), device=targets.device)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index: int, chunk_size: int, reduction: str):
        total, grad_h, grad_w = _blocked(hidden, weight, targets, ignore_index, chunk_size, *ctx.needs_input_grad[:2])
        scale = _scale(targets, ignore_index, reduction)
        ctx.save_for_backward(grad_h, grad_w, scale)
        ctx.weight_dtype = weight.dtype
        return total * scale

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w, scale = ctx.saved_tensors
        factor = grad_loss * scale
        grad_h = grad_h * factor.to(grad_h.dtype) if grad_h is not None else None
        grad_w = (grad_w * factor).to(ctx.weight_dtype) if grad_w is not None else None
        return grad_h, grad_w, None, None, None, None


def linear_cross_entropy(hidden, weight, targets, ignore_index: int = IGNORE_INDEX, chunk_size: int = 1024, reduction: str = "mean"):
    """Cross-entropy of `hidden @ weight.T` against `targets`: hidden (..., D), weight (V, D),
    targets (...) of class ids, `ignore_index` where there is nothing to predict.
    A scalar float32: the mean over counted targets ("mean", NaN if none) or their sum ("sum")."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"targets of shape {tuple(targets.shape)} do not match hidden states of shape {tuple(hidden.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    flat, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    if not torch.is_grad_enabled():  # evaluation: no gradient is formed (requires_grad alone would ask for them)
        return _blocked(flat, weight, targets, ignore_index, chunk_size, False, False)[0] * _scale(targets, ignore_index, reduction)
    return _LinearCrossEntropy.apply(flat, weight, targets, ignore_index, chunk_size, reduction)
