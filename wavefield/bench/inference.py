"""`wavefield bench inference`: what a user serving long documents sees, whole model against whole model.

Models: bench quality's kinds (the wave model, the transformer, the hybrid) at the small
preset's sizes and vocabulary 8192, matched in parameters (bench.quality.model_configs), with
random weights (speed and memory do not depend on what the weights learned). Every model
generates through the library's own path: model.prefill reads the prompt in pieces of
`prefill_chunk` tokens with logits at its last position only and room reserved in every KV
cache for the tokens to come (the transformer's cache is preallocated and written in place),
then model.stream decodes greedily from the state.

Parts (--parts):
* context: one prompt of each length, then `new_tokens` tokens (the models of `one_pass` also
           with the prompt read in one pass: "transformer (one pass)"). Prefill seconds (the prompt but
           its last token), time to first token (prefill, then the last prompt token and the
           first sample), decode seconds per token after it, total, and the peak memory of the
           whole inference: the weights plus what the generation allocates at its peak (state
           or KV cache, activations), measured as bench speed measures memory (the process's
           high-water mark on CPU, the allocator's peak on CUDA).
* batch:   left-padded prompts of different lengths (uniform in [context/2, context]) at each
           batch size, then `batch_new_tokens` tokens: decode tokens/s over the batch, peak memory.
* flops:   theoretical FLOPs of each model (the matmuls, FFTs and attention products) to read
           a `flops_context`-token prompt and to decode one token after it.
* dense:   where the time goes: a prompt's first piece of `prefill_chunk` tokens and one decoding
           step of each model, against its dense projections alone (every nn.Linear and the
           output head, the same matmuls on random input, nothing else): what no implementation
           of the rest (fields, norms, activations, attention, Python) can go below.
* document: a `document_context`-token document read once and its state saved
           (wavefield.states); then a prompt answered from the reloaded state (load + answer),
           against reading document + prompt again; the state file's size, save and load time.

A call whose predicted time or memory exceeds the budget is skipped and recorded as skipped.
Ratios are between models measured in the same run, interleaved context by context. With
`repeats` R > 1 the context and batch parts measure every model R times, the models taking
turns (wave, transformer, wave, transformer, ...), so that a drift of a shared machine's speed
shows as spread rather than as a ratio; the report gives each figure's median over the R runs
and the time target's ratio in each run (inference_report.summarise).
"""

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from ..model import PREFILL_CHUNK, WaveFieldLM
from ..states import load_state, save_state, state_bytes
from .measure import median, peak_extra_mb, sync, time_call
from .quality import QualityBudget, model_configs
from .speed import machine, mixer_gflops

PARTS = ("context", "batch", "flops", "dense", "document")
MAX_CONTEXT, MAX_NEW_TOKENS, MAX_BATCH, MAX_REPEATS = 2**22, 10**5, 4096, 100  # bounds on what the command is asked to allocate
MAX_DENSE_PIECE = 256  # the dense part's piece when prompts are read in one pass


@dataclass
class InferenceSettings:
    models: tuple = ("wave", "transformer", "hybrid", "mamba2")
    one_pass: tuple = ("transformer",)  # also measured with the prompt read in one pass (the context part): faster, more memory
    preset: str = "small"
    vocab_size: int = 8192
    model: dict = field(default_factory=dict)  # overrides of the preset's sizes (the quick run's)
    contexts: tuple = (1024, 4096, 16384, 32768, 65536, 131072)
    new_tokens: int = 256
    prefill_chunk: int | None = PREFILL_CHUNK
    batches: tuple = (1, 4, 16, 64)
    batch_contexts: tuple = (2048, 8192)
    batch_new_tokens: int = 32
    repeats: int = 1  # the context and batch parts measure every model this many times, taking turns
    flops_context: int = 32768
    document_context: int = 65536
    document_prompt: int = 16
    document_new_tokens: int = 32
    parts: tuple = PARTS
    max_seconds: float = 1800.0  # per call: longer predicted calls are skipped
    max_memory_gb: float = 16.0  # per call: larger predicted peaks are skipped
    device: str = "cpu"
    threads: int = 0  # 0: torch's default
    seed: int = 0
    scratch: str | None = None  # folder for the document part's state files (default: out_dir)
    records: list = field(default_factory=list)


QUICK = dict(
    preset="tiny",
    vocab_size=256,
    model=dict(d_model=32, n_layers=4, n_heads=4),
    contexts=(64, 256),
    new_tokens=4,
    prefill_chunk=48,
    batches=(1, 3),
    batch_contexts=(64,),
    batch_new_tokens=3,
    flops_context=256,
    document_context=200,
    document_prompt=5,
    document_new_tokens=3,
    max_seconds=60.0,
    max_memory_gb=1.0,
)


def build_models(s: InferenceSettings, device) -> dict:
    """name -> WaveFieldLM in eval mode, matched in parameters to the wave model."""
    configs = model_configs(s.models, QualityBudget(preset=s.preset), s.vocab_size, s.model)
    models = {}
    for name, cfg in configs.items():
        torch.manual_seed(s.seed)
        models[name] = WaveFieldLM(cfg).to(device).eval()
    return models


def weights_mb(model) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20


KV_LAYERS = ("attention", "conv-attention")  # layer types whose state is a KV cache
MIXER_OPS = {
    "wave": "wave",
    "wave-outer": "wave-outer",
    "attention": "sdpa",
    "conv-attention": "conv-sdpa",
    "mamba2": "mamba2",
}  # bench speed's mixer of each layer type


def kv_bytes(cfg, tokens: int, batch: int = 1) -> int:
    """Bytes of the KV caches of `tokens` positions (float32 keys and values of every attention layer)."""
    return sum(t in KV_LAYERS for t in cfg.layer_types) * 2 * tokens * cfg.d_model * 4 * batch


def step_flops(cfg, kind: str, n: int) -> float:
    """FLOPs of one layer's mixer for one token after n: its projections, its conv and its state."""
    D, conv = cfg.d_model, 2 * cfg.short_conv
    if kind == "wave":  # in (D -> 4D), out, the conv on 3D channels, one complex multiply-add per channel
        return 10 * D * D + 3 * D * conv + 8 * D
    if kind == "wave-outer":  # the same projections and conv; a complex d x d state per head: decay and deposit, then the read
        return 10 * D * D + 3 * D * conv + 12 * D * cfg.head_dim
    if kind == "mamba2":  # in (D -> 2E + 2S + H), out (E -> D), the conv on E + 2S channels, h = a h + dt B x^T and C^T h
        E, S = 2 * D, cfg.ssm_state
        return 2 * D * (2 * E + 2 * S + cfg.n_heads) + 2 * E * D + (E + 2 * S) * conv + 4 * S * E
    return 8 * D * D + 4 * n * D + (3 * D * conv if kind == "conv-attention" else 0)  # then q k^T and p v over n keys


def model_gflops(cfg, n: int) -> dict:
    """Theoretical GFLOPs to read an n-token prompt (logits at its last position) and to decode
    one token after it: every layer's mixer (bench.speed.mixer_gflops for the prompt), MLP and
    the output head."""
    D, V = cfg.d_model, cfg.vocab_size
    mlp = 4 * D * int(cfg.mlp_ratio * D)  # up and down, per token
    prefill = decode = 2 * D * V / 1e9  # the output head at one position
    for layer_type in cfg.layer_types:
        kind = "wave-outer" if layer_type == "wave" and cfg.wave_deposit == "outer" else layer_type  # a "wave" layer set to outer deposits
        mixer = mixer_gflops(MIXER_OPS[kind], n, D, cfg.n_heads, 1, "forward", chunk=cfg.chunk_size, ssm_state=cfg.ssm_state, short_conv=cfg.short_conv)
        prefill += mixer + n * mlp / 1e9
        decode += (step_flops(cfg, kind, n) + mlp) / 1e9
    return {"prefill_gflops": prefill, "decode_gflops": decode}


def _record(s: InferenceSettings, **rec):
    rec.setdefault("skipped", False)
    s.records.append(rec)
    print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items() if v is not None), flush=True)
    return rec


def _predict(s: InferenceSettings, kind: str, name: str, n: int, cfg, batch: int, chunk):
    """(seconds, GB) expected for n tokens: the largest measured n of the same kind, its prefill
    and its decoding each scaled by their theoretical operations (model_gflops: linear for the
    projections and MLPs, quadratic for attention), and the KV caches plus a margin of
    activations (and where one is built, the float mask of a piece's queries over every key)."""
    done = [r for r in s.records if r["kind"] == kind and r["model"] == name and not r["skipped"] and r.get("batch", 1) == batch]
    seconds = None
    if done:
        last = max(done, key=lambda r: r["context"])
        now, then = model_gflops(cfg, n), model_gflops(cfg, last["context"])
        decoded = last["decode_s_per_token"] * (last["new_tokens"] - 1)  # the tokens after the first
        first = last["total_s"] - last["prefill_s"] - decoded  # the last prompt token and the first sample
        seconds = last["prefill_s"] * now["prefill_gflops"] / then["prefill_gflops"] + first + decoded * now["decode_gflops"] / then["decode_gflops"]
    piece = min(chunk or n, n)
    activations = 4 * batch * piece * 16 * cfg.d_model
    # padded prompts: a float mask of a piece's queries over every key; unpadded, none in one
    # piece (causal SDPA) nor, on CPU, in later pieces (layers.attention._causal_after_past)
    masked = kind == "batch" or (piece < n and s.device != "cpu")
    masks = 4 * batch * piece * n if masked else 0
    gb = (kv_bytes(cfg, n, batch) + activations + masks) / 1e9
    return seconds, gb


@torch.no_grad()
def generate_timed(model, ids, new_tokens: int, prefill_chunk, attention_mask=None) -> dict:
    """Greedy generation of new_tokens after the prompt ids (B, N), timed: model.prefill reads
    all but the last prompt token (room reserved for the rest), model.stream reads the last one
    and decodes. Returns seconds of prefill, first token and total, and the state's bytes."""
    device = ids.device
    sync(device)
    start = time.perf_counter()
    mask = attention_mask[:, :-1] if attention_mask is not None else None
    _, state = model.prefill(ids[:, :-1], chunk_size=prefill_chunk, reserve=new_tokens + 1, attention_mask=mask)
    sync(device)
    prefill = time.perf_counter() - start
    kept = state_bytes(state)
    times = []
    for _ in model.stream(ids[:, -1:], new_tokens, temperature=0, state=state, prefill_chunk=prefill_chunk):
        sync(device)
        times.append(time.perf_counter() - start)
    return {"prefill_s": prefill, "ttft_s": times[0], "total_s": times[-1], "state_mb": kept / 2**20}


def _measure(s, kind, name, model, ids, new_tokens, chunk, mask=None, **extra):
    cfg, device = model.config, ids.device
    B, n = ids.shape
    seconds, gb = _predict(s, kind, name, n, cfg, B, chunk)
    base = dict(kind=kind, model=name, context=n, batch=B, new_tokens=new_tokens, prefill_chunk=chunk, **extra)
    if (seconds is not None and seconds > s.max_seconds) or gb > s.max_memory_gb:
        return _record(s, **base, skipped=True, predicted_s=seconds, predicted_gb=gb)
    out = {}
    peak = peak_extra_mb(lambda: out.update(generate_timed(model, ids, new_tokens, chunk, mask)), device)
    decode = (out["total_s"] - out["ttft_s"]) / max(new_tokens - 1, 1)
    weights = weights_mb(model)
    return _record(
        s,
        **base,
        **out,
        decode_s_per_token=decode,
        decode_tokens_per_s=B / decode,
        weights_mb=weights,
        peak_mb=weights + peak if peak is not None else None,
    )


def bench_context(s: InferenceSettings, models: dict, device):
    gen = torch.Generator(device="cpu").manual_seed(s.seed)
    for n in s.contexts:
        ids = torch.randint(0, s.vocab_size, (1, n), generator=gen).to(device)
        for repeat in range(s.repeats):
            for name, model in models.items():
                _measure(s, "context", name, model, ids, s.new_tokens, s.prefill_chunk, repeat=repeat)
                if name in s.one_pass and s.prefill_chunk is not None:
                    _measure(s, "context", f"{name} (one pass)", model, ids, s.new_tokens, None, repeat=repeat)


def bench_batch(s: InferenceSettings, models: dict, device):
    gen = torch.Generator(device="cpu").manual_seed(s.seed + 1)
    for n in s.batch_contexts:
        for B in s.batches:
            lengths = torch.randint(n // 2, n + 1, (B,), generator=gen)
            lengths[0] = n  # the longest prompt sets the width
            ids = torch.randint(0, s.vocab_size, (B, n), generator=gen)
            mask = torch.arange(n)[None] >= (n - lengths)[:, None]  # left padding: (B, n), True at real tokens
            ids = ids.masked_fill(~mask, 0).to(device)
            for repeat in range(s.repeats):
                for name, model in models.items():
                    _measure(s, "batch", name, model, ids, s.batch_new_tokens, s.prefill_chunk, mask.to(device), real_tokens=int(lengths.sum()), repeat=repeat)


def bench_flops(s: InferenceSettings, models: dict, device):
    for name, model in models.items():
        _record(s, kind="flops", model=name, context=s.flops_context, **model_gflops(model.config, s.flops_context))


DENSE_REPEATS = 9  # timed calls per figure of the dense part (the median is kept)


def dense_call(model, tokens: int, device):
    """A function that runs every dense projection of `model` once on `tokens` rows of random
    input: each nn.Linear, then the output head at one position (generation's logits)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    inputs = {m.in_features: torch.randn(tokens, m.in_features, device=device) for m in linears}
    last = torch.randn(1, model.config.d_model, device=device)

    def run():
        for m in linears:
            F.linear(inputs[m.in_features], m.weight)
        F.linear(last, model.embed.weight)

    return run


@torch.no_grad()
def bench_dense(s: InferenceSettings, models: dict, device):
    n = s.prefill_chunk or MAX_DENSE_PIECE
    gen = torch.Generator(device="cpu").manual_seed(s.seed + 3)
    ids = torch.randint(0, s.vocab_size, (1, n + 1), generator=gen).to(device)
    for name, model in models.items():
        _record(s, kind="dense", model=name, context=n, batch=1, **_dense(model, ids, device))


def _dense(model, ids, device) -> dict:
    """Seconds of the first piece ids[:, :-1] and of one decoding step after it, each whole and as
    its dense projections alone (medians of DENSE_REPEATS calls)."""
    n = ids.shape[1] - 1

    def timed(fn):
        return median([time_call(fn, device) for _ in range(DENSE_REPEATS)])

    piece = timed(lambda: model(ids[:, :n], return_state=True, logits_at=1))
    state = [model.prefill(ids[:, :n], reserve=DENSE_REPEATS)[1]]

    def step():  # decoding: each call continues from the last one's state, written in place into the reserved room
        state[0] = model(ids[:, n:], state=state[0], return_state=True)[1]

    step = timed(step)
    return {"piece_s": piece, "piece_dense_s": timed(dense_call(model, n, device)), "step_s": step, "step_dense_s": timed(dense_call(model, 1, device))}


@torch.no_grad()
def bench_document(s: InferenceSettings, models: dict, device):
    """A document read once, its state saved (wavefield.states), then a prompt answered from the
    reloaded state, against reading document + prompt again. The answers must be the same tokens."""
    gen = torch.Generator(device="cpu").manual_seed(s.seed + 2)
    document = torch.randint(0, s.vocab_size, (1, s.document_context), generator=gen).to(device)
    prompt = torch.randint(0, s.vocab_size, (1, s.document_prompt), generator=gen).to(device)
    for name, model in models.items():
        with tempfile.TemporaryDirectory(dir=s.scratch) as tmp:
            _record(s, kind="document", model=name, context=s.document_context, batch=1, **_document(s, model, document, prompt, Path(tmp), device))


def _document(s: InferenceSettings, model, document, prompt, tmp: Path, device) -> dict:
    new, path = s.document_new_tokens, tmp / "document.state"
    read = Timed(lambda: model.prefill(document, chunk_size=s.prefill_chunk), device)
    state = read.result[1]
    saved = Timed(lambda: save_state(state, path, model, tokens=s.document_context), device)
    loaded = Timed(lambda: load_state(path, model, device), device)
    answered = Timed(lambda: model.generate(prompt, new, temperature=0, state=loaded.result, prefill_chunk=s.prefill_chunk), device)
    again = Timed(lambda: model.generate(torch.cat([document, prompt], 1), new, temperature=0, prefill_chunk=s.prefill_chunk), device)
    return dict(
        prompt=s.document_prompt,
        new_tokens=new,
        read_s=read.seconds,
        save_s=saved.seconds,
        file_mb=path.stat().st_size / 2**20,
        load_s=loaded.seconds,
        answer_s=answered.seconds,
        from_state_s=loaded.seconds + answered.seconds,
        reread_s=again.seconds,
        same_tokens=torch.equal(answered.result[:, -new:], again.result[:, -new:]),
    )


class Timed:
    """fn() run once on `device`: its result (.result) and wall-clock seconds (.seconds), the device synchronised around it."""

    def __init__(self, fn, device):
        sync(device)
        start = time.perf_counter()
        self.result = fn()
        sync(device)
        self.seconds = time.perf_counter() - start


def run_inference(s: InferenceSettings, out_dir, json_path=None) -> dict:
    """Run the selected parts; write inference.json, inference.md and PNG plots into out_dir."""
    unknown = sorted(set(s.parts) - set(PARTS))
    if unknown:
        raise UserError(f"unknown parts {', '.join(unknown)} (choose from {', '.join(PARTS)})")
    sizes = [
        ("contexts", (*s.contexts, *s.batch_contexts, s.flops_context, s.document_context), 2, MAX_CONTEXT),
        ("new tokens", (s.new_tokens, s.batch_new_tokens), 2, MAX_NEW_TOKENS),  # decode time is measured after the first
        ("document prompt and new tokens", (s.document_new_tokens, s.document_prompt), 1, MAX_NEW_TOKENS),
        ("batch sizes", s.batches, 1, MAX_BATCH),
        ("repeats", (s.repeats,), 1, MAX_REPEATS),
    ]
    for what, values, least, most in sizes:
        if not least <= min(values) <= max(values) <= most:
            raise UserError(f"bench inference: {what} must lie in [{least}, {most:,}], got {', '.join(map(str, values))}")
    s.scratch = s.scratch or str(out_dir)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    device = torch.device(s.device)
    if s.threads:
        torch.set_num_threads(s.threads)
    env = machine(device)
    models = build_models(s, device)
    env["models"] = {
        name: {"layer_types": m.config.layer_types, "parameters": m.num_parameters(), "mlp_ratio": m.config.mlp_ratio} for name, m in models.items()
    }
    warm = torch.randint(0, s.vocab_size, (1, (s.prefill_chunk or 0) + 32), device=device)
    for model in models.values():  # the first call of each model pays one-off costs (a piece and one after it)
        generate_timed(model, warm, 2, s.prefill_chunk)
    steps = {"context": bench_context, "batch": bench_batch, "flops": bench_flops, "dense": bench_dense, "document": bench_document}
    for part in s.parts:
        steps[part](s, models, device)
    env["load_average_after"] = machine(device).get("load_average")
    settings = {k: v for k, v in vars(s).items() if k != "records"}
    results = {"environment": env, "settings": settings, "records": s.records}
    from .inference_report import write_plots, write_report
    from .report import write_results

    write_results(results, out_dir, json_path, "inference", write_report, write_plots)
    return results
