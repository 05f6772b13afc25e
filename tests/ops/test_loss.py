"""The blocked output-head cross-entropy against F.cross_entropy(F.linear(h, W), targets)."""

import pytest
import torch
import torch.nn.functional as F

from wavefield.ops import linear_cross_entropy


def _loss_and_grads(fn, hidden, weight, targets):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = fn(h, w, targets)
    (3.0 * loss).backward()  # a gradient other than 1 reaches the saved gradients
    return loss, h.grad, w.grad


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("M,chunk", [(1, 4), (37, 8), (37, 37), (37, 1000), (64, 16)])
def test_matches_reference_with_ignored_targets(M, chunk, reduction):
    gen = torch.Generator(torch.get_default_device()).manual_seed(M * 100 + chunk)
    D, V = 12, 29
    hidden, weight = torch.randn(2, M, D, generator=gen), torch.randn(V, D, generator=gen)
    targets = torch.randint(0, V, (2, M), generator=gen)
    targets[torch.rand(2, M, generator=gen) < 0.3] = -100
    targets[0, 0] = 5  # at least one counted target
    ours = _loss_and_grads(lambda h, w, t: linear_cross_entropy(h, w, t, chunk_size=chunk, reduction=reduction), hidden, weight, targets)
    ref = _loss_and_grads(lambda h, w, t: F.cross_entropy(F.linear(h, w).flatten(0, 1), t.flatten(), reduction=reduction), hidden, weight, targets)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_no_grad_and_frozen_weight():
    gen = torch.Generator(torch.get_default_device()).manual_seed(0)
    hidden, weight, targets = torch.randn(10, 6, generator=gen), torch.randn(7, 6, generator=gen), torch.randint(0, 7, (10,), generator=gen)
    ref = F.cross_entropy(hidden @ weight.t(), targets)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, targets, chunk_size=3), ref)
    h = hidden.clone().requires_grad_()
    linear_cross_entropy(h, weight, targets, chunk_size=3).backward()  # weight needs no gradient
    h_ref = hidden.clone().requires_grad_()
    F.cross_entropy(h_ref @ weight.t(), targets).backward()
    torch.testing.assert_close(h.grad, h_ref.grad)


def test_bfloat16_autocast_close_to_float32():
    gen = torch.Generator(torch.get_default_device()).manual_seed(1)
    hidden, weight, targets = torch.randn(40, 16, generator=gen), torch.randn(50, 16, generator=gen), torch.randint(0, 50, (40,), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = _loss_and_grads(lambda h, w, t: linear_cross_entropy(h, w, t, chunk_size=16), hidden, weight, targets)
    ref = _loss_and_grads(lambda h, w, t: F.cross_entropy(h @ w.t(), t), hidden, weight, targets)
    assert ours[0].dtype == torch.float32 and ours[2].dtype == torch.float32
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=0.05, rtol=0.05)


def test_bad_arguments():
    hidden, weight = torch.randn(4, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match="do not match"):
        linear_cross_entropy(hidden, weight, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(hidden, weight, torch.zeros(4, dtype=torch.long), reduction="none")


def test_no_grad_forms_no_gradient_even_for_parameters_that_require_one():
    """Under torch.no_grad (evaluation) only the logits matmuls run, one per block: the
    gradient matmuls (grad of hidden and of the weight) must not, although weight.requires_grad."""
    from torch.profiler import ProfilerActivity, profile

    hidden, weight = torch.randn(10, 6), torch.randn(7, 6, requires_grad=True)
    targets = torch.randint(0, 7, (10,))
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        loss = linear_cross_entropy(hidden, weight, targets, chunk_size=3)
    names = [e.name for e in prof.events()]
    assert names.count("aten::mm") == 4 and "aten::addmm_" not in names and "aten::addmm" not in names, names
    torch.testing.assert_close(loss, F.cross_entropy(hidden @ weight.detach().t(), targets))
