"""The choices the ops make for a GPU, checked on whatever device the suite runs on: the batched
form of a CPU-shaped loop gives the same numbers, and the precision policy holds and restores."""

import pytest
import torch

from wavefield.ops.conv import _lag_dot
from wavefield.ops.kernel import exact_float32


@pytest.mark.parametrize("B, N, K", [(1, 9, 4), (3, 9, 4), (4, 2, 4), (2, 17, 2)])
def test_conv_weight_gradient_batched_equals_per_sample(B, N, K):
    gen = torch.Generator(torch.get_default_device()).manual_seed(B * N + K)
    grad, x, history = torch.randn(B, 6, N, generator=gen), torch.randn(B, 6, N, generator=gen), torch.randn(B, 6, K - 1, generator=gen)
    for lag in range(K):
        per_sample = _lag_dot(grad, x, history, lag, per_sample=True)
        batched = _lag_dot(grad, x, history, lag, per_sample=False)
        torch.testing.assert_close(batched, per_sample, rtol=1e-5, atol=1e-5)
        full = torch.cat([history, x], -1)  # the input at t - lag, t < 0 read from the history
        reference = (grad * full[..., K - 1 - lag : K - 1 - lag + N]).sum((0, 2))
        torch.testing.assert_close(per_sample, reference, rtol=1e-5, atol=1e-5)


def test_exact_float32_turns_tf32_off_inside_and_restores_it():
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        with exact_float32("cuda"):
            assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.backends.cuda.matmul.allow_tf32 is True
        with pytest.raises(RuntimeError), exact_float32("cuda"):
            raise RuntimeError("an error inside")
        assert torch.backends.cuda.matmul.allow_tf32 is True  # restored on the way out of an error too
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_exact_float32_disables_autocast():
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
        with exact_float32("cpu"):
            assert (a @ b).dtype == torch.float32
