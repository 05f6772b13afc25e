"""`wavefield bench speed`: time and memory of the wave mixer and model against attention peers.

Parts (each can be picked with --parts):
* mixer:  every mixer (projections included) at each N, forward (no grad) and forward+backward:
          median seconds, peak extra memory, theoretical GFLOPs. Competing mixers run interleaved
          in one process; a call predicted to exceed the time or memory budget is skipped and
          recorded as skipped. The wave mixer's floor is measured beside it in the same run:
          its two projection matmuls timed alone plus one read and one write of the field at
          the copy bandwidth measured on the spot.
* train:  training tokens/s (forward, cross-entropy, backward, AdamW step) of the wave LM and
          the transformer LM at matched parameter counts.
* decode: per-token latency and state memory after a prompt of each context length, the wave
          recurrent state against the transformer's KV cache.
* long:   one forward pass of a small wave LM over a very long input, time and peak memory.

Output: one JSON record per measurement (op, n, mode, seconds, peak_mb, skipped, ...), a
markdown report and PNG plots.
"""

import math
import os
import platform
from dataclasses import dataclass, field

import torch

from ..config import WaveFieldConfig
from ..errors import UserError
from ..layers import CausalSelfAttention, Mamba2Mixer, WaveFieldAttention
from ..layers.wave import outer_layer_options
from ..model import WaveFieldLM
from ..states import state_bytes
from ..train import DEFAULTS, make_optimizer
from .measure import copy_bandwidth, median, peak_extra_mb, time_call
from .peers import LinearAttention, MaterialisedAttention, SlidingWindowAttention

MIXERS = ("wave", "wave-lean", "wave-fft", "wave-outer", "sdpa", "materialised", "sliding", "linear", "conv-sdpa", "mamba2")
MODES = ("forward", "backward")  # backward means forward + backward
PARTS = ("mixer", "train", "decode", "long")
WINDOW = 512
SSM_STATE, SSM_CHUNK, SHORT_CONV = 64, 64, 4  # the mamba2 mixer's state size and chunk, the conv kernel of conv-sdpa and mamba2


@dataclass
class Settings:
    ops: tuple = MIXERS
    lengths: tuple = tuple(2**k for k in range(9, 21))  # 512 .. 1M
    modes: tuple = MODES
    parts: tuple = PARTS
    d_model: int = 256
    n_heads: int = 8
    batch: int = 1
    repeats: int = 3
    max_seconds: float = 60.0  # per call: longer predicted calls are skipped
    max_memory_gb: float = 8.0  # per call: larger predicted peaks are skipped
    train_lengths: tuple = (512, 2048, 8192)
    train_tokens: int = 8192  # tokens per training step (batch = train_tokens // length)
    decode_contexts: tuple = (128, 512, 2048, 8192, 32768)
    decode_steps: int = 16
    long_length: int = 2**20
    vocab_size: int = 8192
    n_layers: int = 4
    device: str = "cpu"
    threads: int = 0  # 0: torch's default
    records: list = field(default_factory=list)


QUICK = dict(
    lengths=(64, 128),
    train_lengths=(32, 64),
    train_tokens=128,
    decode_contexts=(16, 64),
    decode_steps=3,
    long_length=4096,
    d_model=32,
    n_heads=4,
    vocab_size=64,
    n_layers=2,
    repeats=2,
    max_seconds=10.0,
    max_memory_gb=1.0,
)


def make_mixer(op: str, d_model: int, n_heads: int) -> torch.nn.Module:
    if op == "wave":
        return WaveFieldAttention(d_model, n_heads)  # path "auto": chunked and tiled for N > 4
    if op == "wave-lean":  # recomputes each tile in backward: forward + backward memory O(tile)
        return WaveFieldAttention(d_model, n_heads, recompute="tile")
    if op == "wave-fft":
        return WaveFieldAttention(d_model, n_heads, path="fft")
    if op == "wave-outer":  # the layer type "wave-outer": outer-product deposits, a d x d field per head
        return WaveFieldAttention(d_model, n_heads, **outer_layer_options(1.0, 1024.0))  # the config's default reach range
    if op == "sdpa":
        return CausalSelfAttention(d_model, n_heads)
    if op == "conv-sdpa":  # the layer type "conv-attention": the short conv on q, k, v, then SDPA
        return CausalSelfAttention(d_model, n_heads, short_conv=SHORT_CONV)
    if op == "mamba2":
        return Mamba2Mixer(d_model, n_heads, SSM_STATE, SHORT_CONV, chunk_size=SSM_CHUNK)
    if op == "materialised":
        return MaterialisedAttention(d_model, n_heads)
    if op == "sliding":
        return SlidingWindowAttention(d_model, n_heads, WINDOW)
    if op == "linear":
        return LinearAttention(d_model, n_heads)
    raise UserError(f"unknown mixer {op!r}; expected one of {MIXERS}")


def mixer_gflops(
    op: str, n: int, d_model: int, n_heads: int, batch: int, mode: str, chunk: int = SSM_CHUNK, ssm_state: int = SSM_STATE, short_conv: int = SHORT_CONV
) -> float:
    """Theoretical multiply-add FLOPs (x2) of the matmuls, FFTs and attention products, for the
    chunk size (wave and mamba2), state size (mamba2) and conv kernel (conv-sdpa) given.
    Forward + backward counts as 3x forward (4x where the forward is recomputed)."""
    D, d = d_model, d_model // n_heads
    if op == "mamba2":  # inner width E = 2D; state size S; chunks of Q tokens
        E, S, Q = 2 * D, ssm_state, chunk
        proj = 2 * n * D * (2 * E + 2 * S + n_heads) + 2 * n * E * D  # in (D -> 2E + 2S + H) and out (E -> D)
        mix = 2 * n * Q * S + 2 * n * Q * E + 4 * n * S * E  # C B^T and its product with dt x inside chunks; states in and out
    elif op.startswith("wave"):
        proj = 10 * n * D * D  # in (D -> 4D) and out (D -> D)
        if op in ("wave", "wave-lean"):  # the chunked path (wave-lean recomputes it: passes below)
            mix = 2 * n * chunk * D + 8 * n * D  # Toeplitz inside chunks, carry in and out of them
        elif op == "wave-outer":  # q k^T and its product with v inside chunks; deposits k v^T and reads q^T S, real and imaginary
            mix = 4 * n * chunk * D + 8 * n * D * d
        else:
            n_fft = 2 * n
            mix = 2 * 2.5 * n_fft * math.log2(n_fft) * D + 3 * n_fft * D  # two real FFTs and a product
    else:
        proj = 8 * n * D * D  # q, k, v (D -> 3D) and out (D -> D)
        mix = {
            "sdpa": 2 * n * n * D,  # q k^T and p v over the causal half
            "conv-sdpa": 2 * n * n * D + 6 * n * short_conv * D,  # plus the conv over 3D channels
            "materialised": 4 * n * n * D,  # the full square
            "sliding": 8 * n * min(WINDOW, n) * D,  # each block of queries sees 2 blocks of keys
            "linear": 4 * n * 64 * D + 4 * n * d * D,  # inside chunks, plus the d x d running sums
        }[op]
    passes = 1 if mode == "forward" else 4 if op == "wave-lean" else 3
    return batch * (proj + mix) * passes / 1e9


def mixer_bytes(op: str, n: int, d_model: int, n_heads: int, batch: int, mode: str) -> float:
    """A rough upper estimate of a call's peak memory, only to skip hopeless configurations."""
    act = batch * n * d_model * 4
    grad = 3 if mode == "backward" else 1
    if op == "materialised":
        return grad * 3 * batch * n_heads * n * n * 4 + 10 * act
    if op == "sliding":
        return grad * 3 * batch * n_heads * n * 2 * WINDOW * 4 + 10 * act
    if op == "wave-fft":
        return grad * 16 * act
    if op == "wave" and mode == "forward":
        return 3 * act  # tiled: input, output and the tiles' outputs before they are joined
    if op == "wave-lean":
        return 6 * act
    if op == "mamba2":  # the decay and score matrices of every chunk, (B, H, N, chunk) each
        return grad * 3 * batch * n_heads * n * SSM_CHUNK * 4 + grad * 30 * act
    return grad * 12 * act


def _record(s: Settings, **rec):
    rec.setdefault("peak_mb", None)
    rec.setdefault("skipped", False)
    s.records.append(rec)
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items() if v is not None)
    print(shown, flush=True)
    return rec


def _predict_seconds(s: Settings, op: str, n: int, mode: str):
    """Extrapolate from the largest measured N of the same op and mode (N^2 for attention)."""
    done = [r for r in s.records if r.get("kind") == "mixer" and r["op"] == op and r["mode"] == mode and not r["skipped"]]
    if not done:
        return None
    last = max(done, key=lambda r: r["n"])
    power = 2 if op in ("sdpa", "materialised", "conv-sdpa") else 1.1
    return last["seconds"] * (n / last["n"]) ** power


def bench_mixers(s: Settings, device: torch.device):
    bandwidth = copy_bandwidth(device)
    _record(s, kind="copy", op="copy", n=None, mode="bandwidth", seconds=None, gb_per_s=bandwidth / 1e9)
    D, B = s.d_model, s.batch
    for n in s.lengths:
        x = torch.randn(B, n, D, device=device)
        for mode in s.modes:
            mixers = {}
            for op in s.ops:
                if op == "wave-lean" and mode == "forward":
                    continue  # identical to "wave" without gradients
                flops = mixer_gflops(op, n, D, s.n_heads, B, mode)
                predicted = _predict_seconds(s, op, n, mode)
                need = mixer_bytes(op, n, D, s.n_heads, B, mode) / 2**30
                reason = None
                if predicted is not None and predicted > s.max_seconds:
                    reason = f"predicted {predicted:.0f} s > {s.max_seconds:g} s"
                elif need > s.max_memory_gb:
                    reason = f"predicted {need:.1f} GiB > {s.max_memory_gb:g} GiB"
                if reason:
                    _record(s, kind="mixer", op=op, n=n, mode=mode, seconds=None, skipped=True, reason=reason, gflops=flops)
                else:
                    torch.manual_seed(0)
                    mixers[op] = (make_mixer(op, D, s.n_heads).to(device), flops, predicted)
            if "wave" in s.ops:
                wave = mixers.get("wave", (make_mixer("wave", D, s.n_heads).to(device),))[0]
                mixers["floor"] = (wave, None, None)
            _time_interleaved(s, mixers, x, mode, device, bandwidth)


def _call(op, module, x, mode, grad_out):
    """The function a measurement times: the mixer's forward, or forward + backward."""
    if op == "floor":  # the wave mixer's two projections alone, as the layer runs them
        B, N, D = x.shape
        w_in, w_out = (p.detach().requires_grad_(mode == "backward") for p in (module.in_proj.weight, module.out_proj.weight))
        z = torch.randn(B, D, N, device=x.device, requires_grad=mode == "backward")  # (B, D, N)
        xg = x.detach().requires_grad_(mode == "backward")

        def projections():
            with torch.set_grad_enabled(mode == "backward"):
                p = torch.bmm(w_in.expand(B, -1, -1), xg.mT)  # (B, 4D, N)
                out = torch.bmm(z.mT, w_out.t().expand(B, -1, -1))  # (B, N, D)
                if mode == "backward":
                    torch.autograd.backward([p, out], [p.detach(), grad_out])

        return projections
    if mode == "forward":

        def forward():
            with torch.no_grad():
                module(x)

        return forward
    xg = x.detach().requires_grad_()

    def forward_backward():
        for p in module.parameters():
            p.grad = None
        module(xg).backward(grad_out)

    return forward_backward


def _time_interleaved(s: Settings, mixers: dict, x, mode: str, device, bandwidth: float):
    n = x.shape[1]
    grad_out = torch.randn_like(x) if mode == "backward" else None
    calls = {op: _call(op, m, x, mode, grad_out) for op, (m, _, _) in mixers.items()}
    times = {op: [] for op in calls}
    slow = {op for op, (_, _, p) in mixers.items() if p is not None and p > 5.0}
    for op, fn in calls.items():  # warm-up, except where one call already takes seconds
        if op not in slow:
            fn()
    peaks = {}
    for r in range(s.repeats):
        for op, fn in calls.items():
            if r == 0:  # the first timed call also gives the peak memory
                peaks[op] = peak_extra_mb(lambda: times[op].append(time_call(fn, device)), device)
            elif op not in slow:
                times[op].append(time_call(fn, device))
    for op in calls:
        seconds = median(times[op])
        if op == "floor":
            copy_s = 2 * x.numel() * 4 / bandwidth * (1 if mode == "forward" else 3)  # read the deposit, write the field
            _record(s, kind="floor", op="wave-floor", n=n, mode=mode, seconds=seconds + copy_s, proj_seconds=seconds, copy_seconds=copy_s)
            continue
        flops = mixers[op][1]
        _record(s, kind="mixer", op=op, n=n, mode=mode, seconds=seconds, peak_mb=peaks[op], gflops=flops, gflops_per_s=flops / seconds, repeats=len(times[op]))


def lm_configs(s: Settings, vocab_size=None):
    """The wave LM and the transformer LM at matched parameter counts: a wave mixer has 5 D^2
    weights and an attention mixer 4 D^2, so the wave model's MLP is narrower by D^2 / 2."""
    common = dict(vocab_size=vocab_size or s.vocab_size, d_model=s.d_model, n_layers=s.n_layers, n_heads=s.n_heads)
    wave = WaveFieldConfig(**common, mlp_ratio=3.5)
    transformer = WaveFieldConfig(**common, mlp_ratio=4.0, layer_types=["attention"] * s.n_layers)
    return {"wave-lm": wave, "transformer-lm": transformer}


def bench_train(s: Settings, device: torch.device):
    models = {}
    for name, cfg in lm_configs(s).items():
        torch.manual_seed(0)
        model = WaveFieldLM(cfg).to(device).train()
        models[name] = (model, make_optimizer(model, lr=1e-4, weight_decay=DEFAULTS["weight_decay"]))
    for length in s.train_lengths:
        batch = max(1, s.train_tokens // length)
        ids = torch.randint(0, s.vocab_size, (batch, length + 1), device=device)

        def step(model, opt):  # as wavefield.train does it
            loss = model(ids[:, :-1], targets=ids[:, 1:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        times = {name: [] for name in models}
        for model, opt in models.values():
            step(model, opt)  # warm-up
        for _ in range(s.repeats):
            for name, (model, opt) in models.items():
                times[name].append(time_call(lambda: step(model, opt), device))
        for name, (model, _) in models.items():
            seconds = median(times[name])
            _record(
                s,
                kind="train",
                op=name,
                n=length,
                mode="train",
                seconds=seconds,
                batch=batch,
                tokens_per_s=batch * length / seconds,
                params=model.num_parameters(),
            )


@torch.no_grad()
def bench_decode(s: Settings, device: torch.device):
    models = {}
    for name, cfg in lm_configs(s).items():
        torch.manual_seed(0)
        models[name] = WaveFieldLM(cfg).to(device).eval()
    for context in s.decode_contexts:
        prompt = torch.randint(0, s.vocab_size, (1, context), device=device)
        token = prompt[:, -1:]
        for name, model in models.items():
            _, state = model.prefill(prompt, reserve=s.decode_steps + 1)  # room for every step: a KV cache is written in place
            _, state = model(token, state=state, return_state=True)  # warm-up
            state_mb = state_bytes(state) / 2**20
            # each timed step continues from the last, as generation does (a KV cache grows in place;
            # a branch from an older state would copy it): the context grows by decode_steps tokens
            states = [state]
            times = [time_call(lambda: states.append(model(token, state=states[-1], return_state=True)[1]), device) for _ in range(s.decode_steps)]
            _record(s, kind="decode", op=name, n=context, mode="decode", seconds=median(times), state_mb=state_mb)


@torch.no_grad()
def bench_long(s: Settings, device: torch.device):
    """One forward pass of the small wave LM over s.long_length tokens. Its vocabulary is 256
    (bytes): with a vocabulary of V the logits alone take N * V * 4 bytes (32 GiB at 1M tokens
    and V = 8192), whatever the architecture."""
    cfg = lm_configs(s, vocab_size=256)["wave-lm"]
    torch.manual_seed(0)
    model = WaveFieldLM(cfg).to(device).eval()
    ids = torch.randint(0, 256, (1, s.long_length), device=device)
    seconds = []
    peak = peak_extra_mb(lambda: seconds.append(time_call(lambda: model(ids), device)), device)
    _record(s, kind="long", op="wave-lm", n=s.long_length, mode="forward", seconds=seconds[0], peak_mb=peak, params=model.num_parameters(), vocab_size=256)


def environment(s: Settings, device: torch.device) -> dict:
    return {**machine(device), "d_model": s.d_model, "n_heads": s.n_heads, "batch": s.batch}


def machine(device: torch.device) -> dict:
    """What a benchmark ran on: torch, device, threads, CPU, GPU, load average."""
    env = {
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        env["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    return env


def run_speed(s: Settings, out_dir, json_path=None) -> dict:
    """Run the selected parts; write JSON, markdown and plots into out_dir. Returns the results."""
    device = torch.device(s.device)
    if s.threads:
        torch.set_num_threads(s.threads)
    env = environment(s, device)
    steps = {"mixer": bench_mixers, "train": bench_train, "decode": bench_decode, "long": bench_long}
    for part in s.parts:
        steps[part](s, device)
    env["load_average_after"] = environment(s, device).get("load_average")
    results = {"environment": env, "records": s.records}
    from .report import write_plots, write_report, write_results

    write_results(results, out_dir, json_path, "speed", write_report, write_plots)
    return results
