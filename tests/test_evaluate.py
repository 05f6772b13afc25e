"""evaluate_tokens against scoring each window by hand with F.cross_entropy of the full logits."""

import torch
import torch.nn.functional as F

from wavefield import WaveFieldConfig, WaveFieldLM
from wavefield.evaluate import evaluate_tokens


def test_evaluate_tokens_scores_every_window_exactly_once():
    torch.manual_seed(0)
    model = WaveFieldLM(WaveFieldConfig(vocab_size=37, d_model=16, n_layers=2, n_heads=2, layer_types=["wave", "attention"]))
    tokens = torch.randint(0, 37, (50,)).tolist()
    result = evaluate_tokens(model, tokens, seq_len=16, batch_size=2)
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, 49, 16):  # windows of 16 scored tokens; the last scores just 1
            window = torch.tensor(tokens[start : start + 17])[None]
            nll += F.cross_entropy(model(window[:, :-1])[0], window[0, 1:], reduction="sum").item()
            count += window.shape[1] - 1
    assert result["tokens"] == count == 49
    assert abs(result["nll"] - nll) < 1e-4 * nll
