"""WaveFieldLM: token embedding, pre-norm residual blocks (mixer + MLP), final norm, and an
output head tied to the embedding. Each block's mixer is a wave-field layer or, for the
transformer baseline and hybrids, causal softmax attention (config.layer_types); the peers
of the quality benchmark add attention with the short conv ("conv-attention") and a Mamba-2
style state-space mixer ("mamba2").

The state of a model is a list with one entry per layer (a wave field, a KV cache, an SSM
state), so
`model(ids, state=state, return_state=True)` continues a sequence exactly where it stopped
and `generate` decodes one token at a time from that state.

Padded batches: `attention_mask` (B, N), 1 at real tokens (Hugging Face's convention), makes
every masked token influence nothing. A wave layer deposits nothing there and its short conv
reads zeros there; an attention layer masks those keys and counts positions over real tokens
only (a conv-attention layer also zeroes its conv inputs there); a mamba2 layer zeroes its conv
inputs and its dt there. Left padding is exact: each sample gets the logits (and the state) it
gets alone.
"""

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .config import WaveFieldConfig
from .errors import MissingError, UserError
from .io import save_safetensors, write_text_atomic
from .layers import CausalSelfAttention, Mamba2Mixer, WaveFieldAttention
from .layers.wave import outer_layer_options
from .ops import linear_cross_entropy

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few hundred bytes
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")  # safetensors' names of the dtypes a float parameter loads from
PREFILL_CHUNK = 256  # generate reads a prompt in pieces of this many tokens (prefill): 256 keeps the activations of a small model to a few MB


def meta_layout(build) -> dict:
    """{name: (shape, dtype)} of the tensors of the module `build()` makes, laid out on the meta
    device (no memory): what a weights file must hold for it (check_weights_header)."""
    with torch.device("meta"):
        return {k: (tuple(v.shape), v.dtype) for k, v in build().state_dict().items()}


def check_weights_header(file: Path, expected: dict):
    """Refuse a safetensors file whose tensors (read from its header only) are not exactly
    `expected` {name: (shape, dtype)}: a missing, extra or reshaped tensor, or an integer
    tensor where the model has floats (any floating dtype loads: it is cast)."""
    try:
        with safe_open(str(file), framework="pt") as f:
            found = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise UserError(f"{file} cannot be read (truncated or corrupt?): {e}") from None
    missing, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    if missing or extra:
        raise UserError(
            f"{file} does not match its config: "
            + "; ".join(
                f"{what} tensors {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                for what, names in (("missing", missing), ("unexpected", extra))
                if names
            )
        )
    for name, (shape, dtype) in expected.items():
        if found[name][0] != shape:
            raise UserError(f"{file} does not match its config: {name} has shape {list(found[name][0])}, the config needs {list(shape)}")
        if dtype.is_floating_point and found[name][1] not in FLOAT_DTYPES:
            raise UserError(f"{file}: {name} has dtype {found[name][1]}, expected a floating-point type")


def physical_parameters(module: nn.Module) -> list[nn.Parameter]:
    """omega, alpha, phi (unconstrained) of every wave layer in `module`: what weight decay
    skips and what trains at its own learning rate (train.param_groups)."""
    return [p for m in module.modules() if isinstance(m, WaveFieldAttention) for p in m.physical_parameters()]


class MLP(nn.Module):
    def __init__(self, d_model: int, hidden: int, dropout: float):
        super().__init__()
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    def __init__(self, cfg: WaveFieldConfig, layer_index: int):
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        kind = cfg.layer_types[layer_index]
        if kind in ("wave", "wave-outer"):
            if kind == "wave":
                options = dict(
                    deposit=cfg.wave_deposit,
                    feature_map=cfg.feature_map,
                    norm=cfg.wave_norm,
                    omega_scale=cfg.omega_scale,
                    reach_min=cfg.reach_min,
                    implementation=cfg.wave_implementation,
                )
            else:
                options = outer_layer_options(cfg.reach_min, cfg.reach_max)
            self.mixer = WaveFieldAttention(
                cfg.d_model,
                cfg.n_heads,
                short_conv=cfg.short_conv,
                reach_max=cfg.reach_max,
                path=cfg.wave_path,
                chunk_size=cfg.chunk_size,
                layer_index=layer_index,
                n_layers=cfg.n_layers,
                gate=cfg.wave_gate,
                tile_size=cfg.tile_size,
                recompute=cfg.recompute,
                **options,
            )
            for p in self.mixer.physical_parameters():
                p.requires_grad_(not cfg.freeze_physics)
        elif kind == "mamba2":
            self.mixer = Mamba2Mixer(cfg.d_model, cfg.n_heads, cfg.ssm_state, cfg.short_conv, chunk_size=cfg.chunk_size, norm_eps=cfg.norm_eps)
        else:  # "attention", or "conv-attention": the same with the short conv on q, k, v
            conv = cfg.short_conv if kind == "conv-attention" else 0
            self.mixer = CausalSelfAttention(cfg.d_model, cfg.n_heads, cfg.rope_base, cfg.dropout, short_conv=conv)
        hidden = int(cfg.mlp_ratio * cfg.d_model)
        self.norm2 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps) if hidden else None
        self.mlp = MLP(cfg.d_model, hidden, cfg.dropout) if hidden else None
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, state=None, return_state: bool = False, mask=None):
        """(x, state) -> (x, new state); the new state is None unless asked for (training never
        needs it). mask (B, N) bool marks the real tokens (None: all are); it reaches the mixer
        only when given, so a mixer without padding support still runs unpadded batches."""
        padding = {"mask": mask} if mask is not None else {}
        h = self.mixer(self.norm1(x), state=state, return_state=return_state, **padding)
        h, state = h if return_state else (h, None)
        x = x + self.drop(h)
        return (x + self.mlp(self.norm2(x)) if self.mlp is not None else x), state


class WaveFieldLM(nn.Module):
    def __init__(self, cfg: WaveFieldConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # residual outputs scaled down with depth (GPT-2)
            if name.endswith(("out_proj.weight", "down.weight")):
                nn.init.normal_(p, std=cfg.init_std / (2 * cfg.n_layers) ** 0.5)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.init_std)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check_inputs(self, input_ids, state):
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype in (torch.bool,) or input_ids.is_floating_point() or input_ids.is_complex():
            raise ValueError(f"input_ids must be an integer tensor, got {getattr(input_ids, 'dtype', type(input_ids).__name__)}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, seq_len), got {tuple(input_ids.shape)}")
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got [{input_ids.min().item()}, {input_ids.max().item()}]")
        if state is not None and (not isinstance(state, (list, tuple)) or len(state) != len(self.blocks)):
            raise ValueError(f"state must be a list with one entry per layer ({len(self.blocks)}), as returned with return_state=True")

    def _past(self, state, batch_size: int):
        """How many tokens the state has seen, where it tells: an attention layer's KV cache (a
        wave layer's state keeps no count). None for a model of wave layers only."""
        for block, s in zip(self.blocks, state):
            if isinstance(block.mixer, CausalSelfAttention) and s is not None:
                block.mixer.check_state(s, batch_size)
                return s["k"].shape[2]
        return None

    def _check_mask(self, attention_mask, input_ids, state):
        """attention_mask as given -> (B, N) bool for this call's tokens, or None where every one is real."""
        B, N = input_ids.shape
        if attention_mask is None:
            return None
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.is_floating_point() or attention_mask.is_complex():
            raise UserError(
                f"attention_mask must be a bool or integer tensor of 0/1 (1 = a real token), got "
                f"{getattr(attention_mask, 'dtype', type(attention_mask).__name__)}"
            )
        # after a state, also the whole mask so far: (B, past + N), or any width > N where the state keeps no count
        past = self._past(state, B) if state is not None else 0
        width = attention_mask.shape[1] if attention_mask.dim() == 2 and attention_mask.shape[0] == B else None
        whole = state is not None and width is not None and (width == past + N if past is not None else width > N)
        if width != N and not whole:
            expected = f"(batch, seq_len) = {(B, N)}"
            if state is not None:
                expected += f" or (batch, past + seq_len) = {(B, past + N)}" if past is not None else " or (batch, past + seq_len)"
            raise UserError(f"attention_mask must have shape {expected}, got {tuple(attention_mask.shape)}")
        if attention_mask.dtype != torch.bool and ((attention_mask != 0) & (attention_mask != 1)).any():
            raise UserError(
                f"attention_mask must hold only 0 and 1 (1 = a real token), got values in [{attention_mask.min().item()}, {attention_mask.max().item()}]"
            )
        mask = attention_mask[:, width - N :].to(input_ids.device, torch.bool)  # (B, N): this call's tokens
        return None if mask.all() else mask

    @staticmethod
    def _check_positions(positions, input_ids, targets):
        B, N = input_ids.shape
        if targets is not None:
            raise ValueError("logits_at and targets exclude each other: targets return the loss, not logits")
        if isinstance(positions, int) and not isinstance(positions, bool):
            if positions < 0:
                raise ValueError(f"logits_at as an int is how many last positions get logits (0: all), >= 0; got {positions}")
            return
        if not isinstance(positions, torch.Tensor) or positions.dtype != torch.int64 or positions.dim() != 2 or positions.shape[0] != B:
            raise ValueError(
                f"logits_at must be an int (the last k positions) or an int64 tensor of positions (batch {B}, K), got "
                f"{getattr(positions, 'dtype', type(positions).__name__)} of shape {tuple(getattr(positions, 'shape', ()))}"
            )
        if positions.numel() and (positions.min() < 0 or positions.max() >= N):
            raise ValueError(f"logits_at positions must lie in [0, {N}), got [{positions.min().item()}, {positions.max().item()}]")

    def forward(self, input_ids, state=None, return_state: bool = False, targets=None, logits_at=None, attention_mask=None):
        """input_ids (B, N) -> logits (B, N, vocab) float; with return_state, (logits, state).

        With targets (B, N) (next-token ids, IGNORE_INDEX where nothing is predicted) the result
        is instead the mean cross-entropy, computed without materialising the logits
        (ops.linear_cross_entropy): this is how training calls the model.
        With logits_at, positions (B, K) int64 in [0, N), the output head runs at those
        positions only and the logits are (B, K, vocab) (bench recall scores its answers so);
        an int k means the last k positions (B, min(k, N), vocab), 0 all of them (Hugging
        Face's logits_to_keep).

        attention_mask (B, N) of 0/1, bool or any integer dtype, 1 at real tokens: masked
        tokens influence nothing. Continuing from a state it may also be the whole mask so far,
        (B, past + N), as Hugging Face passes it; only its last N columns are read, the state
        carrying what the earlier ones did. past is checked against an attention layer's KV
        cache; a state of wave layers only keeps no count, so there any width > N is taken for
        the whole mask. Left padding is exact, in the prompt and after it (each sample gets the
        logits it gets alone); right padding is exact at the real positions; masked tokens
        between real ones are exact for attention layers, not for wave layers (their field
        keeps decaying over them) nor for layers with a short conv (conv-attention, mamba2: it
        reads zeros there). A masked position's own logits are don't-care."""
        self._check_inputs(input_ids, state)
        mask = self._check_mask(attention_mask, input_ids, state)  # (B, N) bool, or None: no padding
        if targets is not None and (return_state or targets.shape != input_ids.shape):
            raise ValueError(f"targets must have the shape of input_ids {tuple(input_ids.shape)} and come without return_state")
        if logits_at is not None:
            self._check_positions(logits_at, input_ids, targets)
        x = self.drop(self.embed(input_ids))  # (B, N, D)
        state = list(state) if state is not None else [None] * len(self.blocks)
        if input_ids.shape[1] > 0:
            for i, block in enumerate(self.blocks):
                x, state[i] = block(x, state[i], return_state, mask)
        if targets is not None:
            return linear_cross_entropy(self.norm(x), self.embed.weight, targets)
        if isinstance(logits_at, int):
            x = x[:, max(x.shape[1] - logits_at, 0) :] if logits_at else x  # (B, min(k, N), D)
        elif logits_at is not None:
            x = x.gather(1, logits_at[..., None].expand(-1, -1, x.shape[-1]))  # (B, K, D)
        logits = F.linear(self.norm(x), self.embed.weight)  # (B, N or K, vocab), tied to the embedding
        return (logits, state) if return_state else logits

    def _token_ids(self, name: str, ids, many: bool = False) -> list[int]:
        """pad_token_id (an int) or, with many, eos_token_id (an int or a list of ints) -> a list of token ids."""
        values = list(ids) if many and isinstance(ids, (list, tuple)) else [ids]
        V = self.config.vocab_size
        if not values or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < V for t in values):
            raise UserError(f"{name} must be a token id in [0, {V})" + (" or a list of them" if many else "") + f", got {ids!r}")
        return values

    @torch.no_grad()
    def prefill(self, input_ids, state=None, chunk_size: int | None = PREFILL_CHUNK, reserve: int = 0, attention_mask=None):
        """Read a prompt (B, N), continuing from `state` (None: a new sequence) -> (logits
        (B, vocab) at its last position, the state after it): what generation starts from, and
        a document's state to keep (wavefield.states).

        The prompt runs in pieces of `chunk_size` tokens (None: one pass), each continuing from
        the state the earlier ones left, which is exact (the tests hold every layer to it); so
        beyond the weights and the state, memory is one piece's activations, not the prompt's.
        Only the last position gets logits. `reserve`: every KV cache gets room for that many
        later tokens up front (generate passes max_new_tokens), so decoding writes in place and
        the cache never doubles. attention_mask as in forward."""
        self._check_inputs(input_ids, state)
        B, N = input_ids.shape
        if N == 0:
            raise UserError("prefill needs at least one token")
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
            raise UserError(f"chunk_size must be None or an integer >= 1, got {chunk_size!r}")
        if isinstance(reserve, bool) or not isinstance(reserve, int) or reserve < 0:
            raise UserError(f"reserve must be an integer >= 0, got {reserve!r}")
        mask = self._check_mask(attention_mask, input_ids, state)  # (B, N) bool, or None
        if state is not None and mask is not None and not all(isinstance(b.mixer, CausalSelfAttention) and b.mixer.conv is None for b in self.blocks):
            raise UserError(
                "padded prompts after a state put padding between the state's tokens and the prompt's, which only attention "
                "layers without a short conv skip exactly: give prompts of equal length (wavefield.states.expand_state) or "
                "answer them one at a time"
            )
        state = list(state) if state is not None else [None] * len(self.blocks)
        for i, block in enumerate(self.blocks):
            if isinstance(block.mixer, CausalSelfAttention):
                if state[i] is not None:
                    block.mixer.check_state(state[i], B)
                state[i] = block.mixer.reserve(state[i], B, N + reserve, masked=mask is not None)
        chunk = chunk_size or N
        for start in range(0, N, chunk):
            piece = mask[:, start : start + chunk] if mask is not None else None
            logits, state = self(input_ids[:, start : start + chunk], state=state, return_state=True, logits_at=1, attention_mask=piece)
        return logits[:, -1], state

    @torch.no_grad()
    def stream(
        self,
        input_ids,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k=None,
        top_p=None,
        generator=None,
        attention_mask=None,
        eos_token_id=None,
        pad_token_id=None,
        state=None,
        prefill_chunk: int | None = PREFILL_CHUNK,
    ):
        """Yield the next tokens (B, 1) one by one, decoding from the recurrent state / KV cache.

        The prompt is read by prefill (in pieces of prefill_chunk tokens, its last position's
        logits only, room in every KV cache for max_new_tokens, at most the sequence's length
        again: beyond that a cache doubles as it grows), continuing from `state` when
        one is given: a document's state (wavefield.states) answers a prompt without reading
        the document again. attention_mask (B, N) of 0/1 marks the real tokens of left-padded
        prompts (each row's last token must be real); the new tokens are real. eos_token_id (an
        int or a list): a row that has produced one is finished, its later tokens are
        pad_token_id (default: the first eos id), and the stream ends once every row has finished."""
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError("generate needs a prompt of shape (batch, seq_len) with seq_len >= 1")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise UserError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        check_sampling(temperature, top_k, top_p)  # before the prompt is read, not at the first token
        eos = torch.tensor(self._token_ids("eos_token_id", eos_token_id, many=True), device=input_ids.device) if eos_token_id is not None else None
        pad = self._token_ids("pad_token_id", pad_token_id)[0] if pad_token_id is not None else (eos[0].item() if eos is not None else None)
        self._check_inputs(input_ids, state)
        mask = self._check_mask(attention_mask, input_ids, state)  # (B, N) bool, None without padding
        if mask is not None and not mask[:, -1].all():
            raise UserError("generate needs left-padded prompts: attention_mask[:, -1] must be 1 in every row")
        # room for the new tokens, up to as many again as the sequence so far: beyond that a cache doubles as it grows
        seen = input_ids.shape[1] + ((self._past(state, input_ids.shape[0]) or 0) if state is not None else 0)
        reserve = min(max_new_tokens, seen)
        logits, state = self.prefill(input_ids, state, prefill_chunk, reserve=reserve, attention_mask=mask)  # (B, vocab)
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for i in range(max_new_tokens):
            token = sample(logits.float(), temperature, top_k, top_p, generator)  # (B, 1)
            if eos is not None:  # a finished row's tokens are padding
                token = token.masked_fill(finished[:, None], pad)
                finished |= torch.isin(token[:, 0], eos)
            yield token
            if i + 1 == max_new_tokens or (eos is not None and finished.all()):
                return
            logits, state = self(token, state=state, return_state=True)
            logits = logits[:, -1]  # (B, vocab)

    @torch.no_grad()
    def generate(
        self,
        input_ids,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k=None,
        top_p=None,
        generator=None,
        attention_mask=None,
        eos_token_id=None,
        pad_token_id=None,
        state=None,
        prefill_chunk: int | None = PREFILL_CHUNK,
    ):
        """Prompt (B, N) -> prompt plus the sampled tokens (B, N + max_new_tokens), fewer when
        every row has produced eos_token_id before (see stream for the arguments)."""
        new = list(
            self.stream(input_ids, max_new_tokens, temperature, top_k, top_p, generator, attention_mask, eos_token_id, pad_token_id, state, prefill_chunk)
        )
        return torch.cat([input_ids, *new], dim=1)

    def save_pretrained(self, path):
        """Write config.json and model.safetensors into the folder `path`, each atomically."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_safetensors(tensors, path / WEIGHTS_NAME, metadata={"format": "pt"})
        write_text_atomic(path / CONFIG_NAME, self.config.to_json())

    @classmethod
    def from_pretrained(cls, path, map_location="cpu", dtype=None) -> "WaveFieldLM":
        """Load a folder written by save_pretrained, in eval mode (call .train() to fine-tune),
        on `map_location`, with floating-point weights cast to `dtype` when one is given.

        A hostile folder is refused before anything is allocated: config.json is checked for
        types and bounds (WaveFieldConfig.from_dict), then the model is laid out on the meta
        device (no memory) and every tensor's name, shape and dtype in the safetensors header
        must match it, so the weights file itself bounds what is allocated."""
        path = Path(path)
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            raise MissingError(f"{path} is not a saved wavefield model (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
        if (path / CONFIG_NAME).stat().st_size > MAX_CONFIG_BYTES:
            raise UserError(f"{path / CONFIG_NAME} is {(path / CONFIG_NAME).stat().st_size:,} bytes: not a wavefield config")
        try:
            cfg = WaveFieldConfig.from_dict(json.loads((path / CONFIG_NAME).read_text()))
        except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, a 5000-digit number, nested too deep; a bad field
            raise UserError(f"{path / CONFIG_NAME} is not a valid wavefield config: {e}") from None
        check_weights_header(path / WEIGHTS_NAME, meta_layout(lambda: cls(cfg)))
        try:
            tensors = load_file(str(path / WEIGHTS_NAME), device=str(map_location))
        except (SafetensorError, OSError) as e:
            raise UserError(f"{path / WEIGHTS_NAME} cannot be read (truncated or corrupt?): {e}") from None
        model = cls(cfg)
        model.load_state_dict(tensors)  # the header check made names and shapes match: a failure here is a bug
        return model.to(map_location, dtype=dtype).eval()


def check_sampling(temperature, top_k, top_p):
    """A ValueError (UserError) naming the allowed range of the first setting outside it."""
    if not temperature >= 0:  # NaN too
        raise UserError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and not (isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 1):
        raise UserError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"top_p must be None or lie in (0, 1], got {top_p!r}")


def sample(logits, temperature: float = 1.0, top_k=None, top_p=None, generator=None):
    """Pick the next token from logits (B, vocab): greedy at temperature 0, else sampled
    from the softmax restricted to the top_k tokens and to the smallest set of mass top_p."""
    check_sampling(temperature, top_k, top_p)
    if not torch.isfinite(logits).all():
        raise UserError("the model's logits are not finite (NaN or infinite): its weights or its state hold numbers out of range")
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    # the largest logit is 0 before the division, so a tiny temperature sends the rest to -inf
    # (never to inf); one below the dtype's smallest normal number divides as that number
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / max(temperature, torch.finfo(logits.dtype).tiny)
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_logits.softmax(dim=-1) >= top_p  # mass before this token already >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)
