"""Hugging Face transformers integration: a config, a model and a cache class over the native model.

    WaveFieldHFConfig     a PretrainedConfig (model_type "wavefield") holding exactly the fields of
                          WaveFieldConfig; to_wavefield() / from_wavefield() convert both ways
    WaveFieldForCausalLM  PreTrainedModel + GenerationMixin around one WaveFieldLM (self.model):
                          the same modules and weights serve both APIs
    WaveFieldCache        the native per-layer state list (wave field + conv state, or KV cache)
                          in the object generate() passes from step to step

Tensor names: the HF model's are the native ones with the prefix "model." (native
"blocks.0.mixer.in_proj.weight" is "model.blocks.0.mixer.in_proj.weight"); that is the only mapping.
Layer types take transformers' names in the HF config's `layer_types` ("wave" and "wave-outer"
are "linear_attention", its name for recurrent layers, "attention" is "full_attention"):
transformers checks them against its list. The native names are kept beside them, in
`wavefield_layer_types`. The peers of the quality benchmark ("conv-attention", "mamba2") are not
covered yet, so a model with them is refused: a UserError before anything is written.

Importing this module registers the classes with AutoConfig and AutoModelForCausalLM.
`import wavefield` does it lazily, when transformers is imported (see wavefield/__init__.py),
so the core package neither needs transformers nor pays for importing it.
"""

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .config import WaveFieldConfig, check_type
from .errors import MissingError, UserError

HF_EXTRA = "pip install -e '.[hf]'"

try:
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast
    from transformers.modeling_outputs import CausalLMOutputWithPast
    from transformers.utils import logging
except ImportError as e:  # tests/hf/test_export.py runs a process without transformers
    raise MissingError(f"the Hugging Face integration needs transformers and friends: {HF_EXTRA} ({e})") from None

from .data.tokenizer import EOS, Tokenizer  # noqa: E402
from .io import safetensors_os_errors  # noqa: E402
from .model import WaveFieldLM, check_weights_header, meta_layout  # noqa: E402
from .ops.loss import IGNORE_INDEX  # noqa: E402

MODEL_TYPE = "wavefield"
# transformers' names for our layer types (its config checks layer_types against its own list)
HF_LAYER_NAMES = {"wave": "linear_attention", "wave-outer": "linear_attention", "attention": "full_attention"}
# an HF config written before wavefield_layer_types existed: its layer_types read back this way
NATIVE_LAYER_NAMES = {"linear_attention": "wave", "full_attention": "attention"}


class WaveFieldHFConfig(PretrainedConfig):
    """WaveFieldConfig's fields, as a transformers config. Values are checked by WaveFieldConfig,
    so a bad one raises the same UserError (a ValueError) as the native config."""

    model_type = MODEL_TYPE
    attribute_map = {"hidden_size": "d_model", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads"}

    def __init__(self, **kwargs):
        fields = dataclasses.fields(WaveFieldConfig)
        native = {f.name: kwargs.pop(f.name) for f in fields if f.name in kwargs}
        for alias, name in self.attribute_map.items():  # hidden_size and the like: the field under transformers' name
            if alias in kwargs and native.setdefault(name, kwargs[alias]) != kwargs.pop(alias):
                raise UserError(f"config fields {alias} and {name} differ")
        for f in fields:  # the types config.json must hold, as WaveFieldConfig.from_dict checks them
            if f.name in native:
                check_type(f.name, native[f.name], f.default)
        wavefield_layer_types = kwargs.pop("wavefield_layer_types", None)
        hf_names = native.get("layer_types")
        if wavefield_layer_types is not None:
            if not isinstance(wavefield_layer_types, list) or not all(isinstance(t, str) for t in wavefield_layer_types):
                raise UserError(f"config field wavefield_layer_types must be a list of strings, got {json.dumps(wavefield_layer_types)[:40]}")
            native["layer_types"] = wavefield_layer_types
        elif native.get("layer_types") is not None:
            native["layer_types"] = [NATIVE_LAYER_NAMES.get(t, t) for t in native["layer_types"]]
        for name, value in dataclasses.asdict(WaveFieldConfig(**native)).items():
            setattr(self, name, value)
        unnamed = sorted(set(self.layer_types) - set(HF_LAYER_NAMES))
        if unnamed:
            raise UserError(
                f"layers of type {', '.join(map(repr, unnamed))} have no Hugging Face form: the transformers integration "
                f"(export, the Auto classes) covers {', '.join(list(HF_LAYER_NAMES)[:-1])} and {list(HF_LAYER_NAMES)[-1]} layers only"
            )
        self.wavefield_layer_types = list(self.layer_types)
        self.layer_types = [HF_LAYER_NAMES[t] for t in self.layer_types]
        if wavefield_layer_types is not None and hf_names is not None and hf_names != self.layer_types:
            raise UserError(f"config fields layer_types {hf_names} and wavefield_layer_types {wavefield_layer_types} describe different layers")
        use_cache = kwargs.pop("use_cache", True)  # transformers would take it for a generation parameter and drop it
        kwargs.setdefault("tie_word_embeddings", True)  # the output head is the embedding
        super().__init__(**kwargs)
        self.use_cache = use_cache

    def to_wavefield(self) -> WaveFieldConfig:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(WaveFieldConfig)}
        values["layer_types"] = list(self.wavefield_layer_types)
        return WaveFieldConfig(**values)

    @classmethod
    def from_wavefield(cls, cfg: WaveFieldConfig, **kwargs) -> "WaveFieldHFConfig":
        return cls(**dataclasses.asdict(cfg), **kwargs)


class WaveFieldCache:
    """What generate() carries from one step to the next: the native state list (one entry per
    layer: {"field", "conv"} for a wave layer, the KV cache for an attention layer) and the
    number of positions seen, padding included (the length of the attention mask so far).

    A forward call with this cache continues from it and updates it in place, as transformers'
    own caches do. Wave layers keep a constant size whatever the length."""

    is_compileable = False  # generate() asks: no static shapes, no torch.compile of the decode step
    is_croppable = False  # a recurrent state cannot be rolled back (no assisted decoding)

    def __init__(self, states: list | None = None, seen_tokens: int = 0):
        self.states = states
        self.seen_tokens = seen_tokens

    def __repr__(self):
        return f"WaveFieldCache(layers={len(self.states) if self.states else 0}, seen_tokens={self.seen_tokens})"

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def update(self, states: list, new_tokens: int):
        self.states = list(states)
        self.seen_tokens += new_tokens

    def _select(self, index: torch.Tensor):
        """Keep the batch rows `index` (in that order, repeats allowed) of every layer's state."""
        if self.states is not None:
            self.states = [_select_rows(s, index) for s in self.states]

    def reorder_cache(self, beam_idx: torch.LongTensor):
        """Beam search: row i of the new state is row beam_idx[i] of the old one."""
        self._select(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor):
        self._select(indices)

    def batch_repeat_interleave(self, repeats: int):
        if self.states is not None:
            batch = _batch_size(self.states)
            self._select(torch.arange(batch).repeat_interleave(repeats))


def _select_rows(state, index):
    """One layer's state dict with every tensor's batch rows `index`. An attention layer's KV
    buffer is dropped: the selected k, v are no view of it, so the next call starts a new one."""
    if state is None:
        return None
    out = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.index_select(0, index.to(value.device))
        elif key != "buffer":
            out[key] = value
    return out


def _batch_size(states) -> int:
    for state in states:
        for value in (state or {}).values():
            if isinstance(value, torch.Tensor):
                return value.shape[0]
    raise ValueError("the cache holds no state yet")


class WaveFieldPreTrainedModel(PreTrainedModel):
    config_class = WaveFieldHFConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules = ["Block"]
    _is_stateful = True  # generate() refuses assisted decoding, which would need to roll the state back

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate() must not make a DynamicCache: the first forward returns a WaveFieldCache

    def _init_weights(self, module):
        """Nothing: WaveFieldLM's constructor initialises its weights (the same as native training
        starts from), and from_pretrained loads every tensor (a missing one is an error)."""

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' from_pretrained, except that a tensor missing from the folder is an
        error (transformers would warn and leave it uninitialised)."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        missing = sorted(info.get("missing_keys") or [])
        if missing:
            raise UserError(
                f"{args[0] if args else 'the folder'} lacks {len(missing)} of the model's tensors ({missing[0]}, ...): not a complete wavefield export"
            )
        return (model, info) if want_info else model


class WaveFieldForCausalLM(WaveFieldPreTrainedModel, GenerationMixin):
    """A WaveFieldLM (self.model) behind transformers' causal-LM interface.

    forward(input_ids, attention_mask, past_key_values, use_cache, labels, logits_to_keep) returns
    a CausalLMOutputWithPast. With labels (unshifted, -100 ignored, as transformers has them; a
    padding position predicts nothing, not even the first real token after left padding) the
    loss is the native blocked cross-entropy, computed without materialising the logits, so the
    output's logits are None then: call without labels for logits."""

    accepts_loss_kwargs = False  # the loss is a mean: Trainer scales it for gradient accumulation

    def __init__(self, config: WaveFieldHFConfig, model: WaveFieldLM | None = None):
        super().__init__(config)
        self.model = model if model is not None else WaveFieldLM(config.to_wavefield())
        self.post_init()

    @classmethod
    def from_wavefield(cls, model: WaveFieldLM, **config_kwargs) -> "WaveFieldForCausalLM":
        """Wrap a native model: the HF model shares its modules (nothing is copied)."""
        hf = cls(WaveFieldHFConfig.from_wavefield(model.config, **config_kwargs), model=model)
        return hf.to(next(model.parameters()).device).train(model.training)

    def get_input_embeddings(self):
        return self.model.embed

    def set_input_embeddings(self, value):
        self.model.embed = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: WaveFieldCache | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        inputs_embeds: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,  # position_ids, output_attentions, ...: the model has no use for them
    ):
        if inputs_embeds is not None:
            raise ValueError("WaveFieldForCausalLM takes input_ids, not inputs_embeds")
        if input_ids is None:
            raise ValueError("WaveFieldForCausalLM needs input_ids (batch, seq_len)")
        if past_key_values is not None and not isinstance(past_key_values, WaveFieldCache):
            raise ValueError(f"past_key_values must be a WaveFieldCache (as a previous call returned), got {type(past_key_values).__name__}")
        mask = {} if attention_mask is None else {"attention_mask": attention_mask}
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if labels is not None:
            if past_key_values is not None:
                raise ValueError("labels and past_key_values exclude each other: the loss is computed over a whole sequence")
            if labels.shape != input_ids.shape:
                raise ValueError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(labels.shape)}")
            targets = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE_INDEX)], dim=1)  # next-token ids
            if attention_mask is not None:  # a padding position's logits are don't-care: it predicts nothing
                targets = targets.masked_fill(attention_mask[:, -input_ids.shape[1] :] == 0, IGNORE_INDEX)
            output = CausalLMOutputWithPast(loss=self.model(input_ids, targets=targets, **mask))
        else:
            positions = _logits_positions(logits_to_keep, input_ids)
            cache = None
            if use_cache or past_key_values is not None:
                cache = past_key_values if past_key_values is not None else WaveFieldCache()
                logits, state = self.model(input_ids, state=cache.states, return_state=True, logits_at=positions, **mask)
                cache.update(state, input_ids.shape[1])
            else:
                logits = self.model(input_ids, logits_at=positions, **mask)
            output = CausalLMOutputWithPast(logits=logits, past_key_values=cache)
        return output if return_dict is not False else output.to_tuple()


def _logits_positions(logits_to_keep, input_ids):
    """transformers' logits_to_keep (an int k: the last k positions, 0 all; or a 1-D tensor of
    positions, the same for every row) -> the native logits_at (an int, or positions (B, K))."""
    if isinstance(logits_to_keep, torch.Tensor):
        if logits_to_keep.dim() != 1:
            raise ValueError(f"logits_to_keep as a tensor must be 1-D positions, got shape {tuple(logits_to_keep.shape)}")
        return logits_to_keep.to(input_ids.device, torch.int64).expand(input_ids.shape[0], -1)
    if not isinstance(logits_to_keep, int) or isinstance(logits_to_keep, bool) or logits_to_keep < 0:
        raise ValueError(f"logits_to_keep must be an int >= 0 (the last k positions, 0 all) or a 1-D tensor of positions, got {logits_to_keep!r}")
    return logits_to_keep


# ---------------------------------------------------------------- tokenizer and export


def hf_tokenizer(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """Our tokenizer (any kind: bpe, gpt2, bytes) as a transformers fast tokenizer over the same
    tokenizer.json, with <|endoftext|> as its eos and pad token. It pads on the left, as
    generating from a padded batch needs (lm-eval sets the side it wants itself)."""
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer.hf, eos_token=EOS, pad_token=EOS, padding_side="left")


def export_hf(path, out_dir) -> Path:
    """Write a run folder or checkpoint (or a saved model folder with its tokenizer.json) as a
    Hugging Face folder: config.json (model_type "wavefield"), model.safetensors,
    generation_config.json and the tokenizer files AutoTokenizer loads.

    out_dir must not exist or be an empty folder: nothing is overwritten. The folder is written
    beside it under a temporary name and renamed into place when complete."""
    from .checkpoint import load_checkpoint

    out = Path(out_dir).resolve()  # "." has no parent to write beside and no name to rename to
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder; nothing was written (choose another --out)")
    model, tokenizer, _ = load_checkpoint(path)
    hf = WaveFieldForCausalLM.from_wavefield(model, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.eos_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    bar = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # no "Writing model shards" bar for one file
    try:
        with safetensors_os_errors(out / "model.safetensors"):
            hf.save_pretrained(tmp)
        hf_tokenizer(tokenizer).save_pretrained(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; an export is an ordinary folder
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if bar:
            logging.enable_progress_bar()
    return out


def load_hf(path, dtype=None) -> tuple["WaveFieldForCausalLM", PreTrainedTokenizerFast]:
    """An exported folder -> (model in eval mode, tokenizer), with errors that say what is wrong."""
    from transformers import AutoTokenizer

    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise MissingError(f"{path} is not a Hugging Face model folder (no config.json)")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise UserError(f"{config_file} is not a valid config: {e}") from None
    if model_type != MODEL_TYPE:
        raise UserError(f"{path} holds a model of type {model_type!r}, not {MODEL_TYPE!r} (export one with `wavefield export`)")
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise MissingError(f"{path} has no tokenizer (tokenizer.json); `wavefield export` writes one")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 (the tokenizers library raises plain Exceptions for a file it cannot parse)
        raise UserError(f"{path}: the tokenizer cannot be read ({type(e).__name__}: {str(e)[:200]})") from None
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise MissingError(f"{path} has no model.safetensors; `wavefield export` writes one")
    config = WaveFieldHFConfig.from_pretrained(path)  # its values checked (a UserError)
    check_weights_header(weights, meta_layout(lambda: WaveFieldForCausalLM(config)))  # before anything is read
    model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype).eval()
    return model, tokenizer


def register():
    """Make AutoConfig / AutoModelForCausalLM (and so pipeline and lm-eval) know model_type "wavefield"."""
    AutoConfig.register(MODEL_TYPE, WaveFieldHFConfig, exist_ok=True)
    AutoModelForCausalLM.register(WaveFieldHFConfig, WaveFieldForCausalLM, exist_ok=True)


register()
