"""The short causal conv against torch's depthwise conv1d, values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from wavefield.ops import short_conv


@pytest.mark.parametrize("N,K", [(1, 4), (2, 4), (3, 4), (50, 4), (7, 1), (9, 3)])
def test_short_conv_matches_conv1d_with_history(N, K):
    gen = torch.Generator(torch.get_default_device()).manual_seed(N * 10 + K)
    B, C = 2, 5
    x, history = torch.randn(B, C, N, generator=gen), torch.randn(B, C, K - 1, generator=gen)
    weight, bias = torch.randn(C, K, generator=gen), torch.randn(C, generator=gen)
    grad = torch.randn(B, C, N, generator=gen)
    ours, ref = [], []
    for fn, store in ((short_conv, ours), (lambda x, h, w, b: F.conv1d(torch.cat([h, x], 2), w[:, None], b, groups=C), ref)):
        inputs = [t.clone().requires_grad_() for t in (x, history, weight, bias)]
        out = fn(*inputs)
        out.backward(grad)
        store += [out, *(t.grad for t in inputs)]
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
