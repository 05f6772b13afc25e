"""Perplexity and bits per byte of a model on a token stream.

Windowing: the stream is cut into consecutive, non-overlapping windows of `seq_len` tokens
(the last one may be shorter). Each window starts from an empty state, so a token is
predicted from the tokens before it in its own window only (on average seq_len / 2 of
context); every token but the very first is scored exactly once.

    loss = mean negative log-likelihood (nats) over the scored tokens;  ppl = exp(loss)
    bits per byte = loss / ln 2 / (UTF-8 bytes per token of the split)

Bits per byte does not depend on the tokenizer, so models with different tokenizers compare.
"""

import math

import numpy as np
import torch

from .errors import UserError


def window_starts(n_tokens: int, seq_len: int, max_windows: int | None = None) -> np.ndarray:
    """Starts of the windows that cover tokens[1:]; `max_windows` keeps an evenly spaced subset."""
    starts = np.arange(0, max(n_tokens - 1, 0), seq_len)
    if max_windows is not None and len(starts) > max_windows:
        starts = starts[np.linspace(0, len(starts) - 1, max_windows).round().astype(int)]
    return starts


@torch.no_grad()
def evaluate_tokens(model, tokens, seq_len: int, batch_size: int = 8, device="cpu", max_windows=None, bf16=False) -> dict:
    """Sum of the negative log-likelihood and count of scored tokens over the windows of `tokens`."""
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    starts = window_starts(len(tokens), seq_len, max_windows)
    full = [s for s in starts if s + seq_len + 1 <= len(tokens)]
    groups = [full[i : i + batch_size] for i in range(0, len(full), batch_size)]
    groups += [[s] for s in starts if s + seq_len + 1 > len(tokens)]  # the shorter last window
    device = torch.device(device)
    for group in groups:
        n = min(seq_len, len(tokens) - 1 - group[0])
        chunk = torch.from_numpy(np.stack([np.asarray(tokens[s : s + n + 1], dtype=np.int64) for s in group])).to(device)  # (b, n+1)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(chunk[:, :-1], targets=chunk[:, 1:])  # mean over the window's tokens, no (b, n, vocab) logits
        nll += loss.item() * chunk[:, 1:].numel()
        count += chunk[:, 1:].numel()
    model.train(was_training)
    return {"nll": nll, "tokens": count}


def summarize(nll: float, tokens: int, bytes_per_token: float) -> dict:
    loss = nll / max(tokens, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "bpb": loss / math.log(2) / bytes_per_token, "tokens": tokens}


def evaluate_checkpoint(path, data=None, split="val", seq_len=None, batch_size=8, max_windows=None, cache_dir=None, device="cpu") -> dict:
    """Score a checkpoint on a split of `data` (default: the corpus it was trained on),
    tokenised with the checkpoint's own tokenizer."""
    from .checkpoint import load_checkpoint
    from .data import load_corpus, prepare_data

    model, tokenizer, state = load_checkpoint(path, device)
    if state is not None:  # by default, the training run's corpus, window and cache
        data = data if data is not None else state["args"]["data"]
        seq_len = seq_len or state["args"]["seq_len"]
        cache_dir = cache_dir or state["args"]["cache_dir"]
    seq_len = seq_len or 256
    corpus = load_corpus(data)
    tokens = prepare_data(corpus, cache_dir=cache_dir, tokenizer=tokenizer)
    if len(tokens.tokens[split]) < 2:
        raise UserError(f"the {split} split of {corpus.name} has {len(tokens.tokens[split])} tokens, too few to score")
    result = evaluate_tokens(model, tokens.tokens[split], seq_len, batch_size, device, max_windows)
    return {"corpus": corpus.name, "split": split, "seq_len": seq_len, **summarize(result["nll"], result["tokens"], tokens.bytes_per_token(split))}
