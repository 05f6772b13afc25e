"""WaveFieldConfig: the one description of a model, saved as config.json beside its weights."""

import dataclasses
import json
import math
from dataclasses import dataclass

from .errors import UserError
from .layers.wave import IMPLEMENTATIONS, RECOMPUTE, field_implementation

# "conv-attention" is attention with the wave layer's short conv on q, k, v (kernel short_conv);
# "mamba2" a Mamba-2 style selective state-space mixer (layers.mamba2); "wave-outer" a wave layer
# with the outer-product deposit of layers.wave.OUTER_LAYER (the recall layer), whatever the wave_* fields say
LAYER_TYPES = ("wave", "wave-outer", "attention", "conv-attention", "mamba2")
LAYER_LETTERS = {"wave": "W", "wave-outer": "O", "attention": "A", "conv-attention": "C", "mamba2": "M"}  # for tables: W O W
FEATURE_MAPS = ("identity", "silu", "elu1")
WAVE_PATHS = ("auto", "fft", "chunked", "recurrent")
WAVE_DEPOSITS = ("channel", "outer")
CONFIG_VERSION = 1


def default_layer_types(n_layers: int) -> list[str]:
    """The default architecture: wave layers, alternately "wave" (per-channel deposits) and
    "wave-outer" (the recall design, outer-product deposits), the last layer "wave": W O W for
    three layers, O W for two. Measured against the other orders in docs/quality.md ("One default")."""
    return ["wave-outer" if (n_layers - 1 - i) % 2 else "wave" for i in range(n_layers)]


# Upper bounds, so that a hostile or mistyped config (d_model 10^9, n_layers 10^6) is refused
# before anything is allocated; they are far above any model this library trains:
MAX_PARAMETERS = 10**11  # 100B parameters (400 GB of float32 weights), from estimated_parameters()
MAX_LAYERS = 1024
MAX_SIZES = {
    "vocab_size": 2**31 - 1,
    "d_model": 2**16,
    "n_heads": 2**16,
    "short_conv": 1024,
    "chunk_size": 2**16,
    "ssm_state": 4096,
    "mlp_ratio": 64,
    "reach_max": 1e12,
    "rope_base": 1e12,
    "init_std": 10.0,
    "norm_eps": 1.0,
}


@dataclass
class WaveFieldConfig:
    vocab_size: int = 8192
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0  # 0: blocks without an MLP (mixer only, as in recall benchmarks)
    # per layer one of LAYER_TYPES; None means default_layer_types(n_layers)
    layer_types: list[str] | None = None
    # wave, conv-attention and mamba2 layers: kernel size of the short causal depthwise conv on
    # q, k, v (on x, B, C in mamba2); 0 turns it off (conv-attention layers need >= 1)
    short_conv: int = 4
    # "wave layers" below are both kinds, "wave" and "wave-outer"; the fields that say "wave"
    # layers do not touch "wave-outer" ones, which take layers.wave.OUTER_LAYER instead
    # "wave" layers: feature map f in u = f(k) * v and f(q) * y
    feature_map: str = "identity"
    # wave layers: the reach 1/alpha of the heads at initialisation is log-spaced over
    # [reach_min, reach_max] tokens, interleaved across layers ("wave-outer": reach_min >= 16)
    reach_min: float = 1.0
    reach_max: float = 1024.0
    # "wave" layers: initial frequencies are omega_scale * pi / (1 + reach), in (0, 1]
    omega_scale: float = 1.0
    # wave layers: "auto" takes the recurrence for a few tokens (decoding), chunked otherwise
    wave_path: str = "auto"
    # wave and mamba2 layers: tokens per chunk of the chunked paths
    chunk_size: int = 64
    # wave layers: the chunked path runs its input in tiles of about tile_size tokens
    # (projections included), so a forward pass's extra memory does not grow with the length
    tile_size: int = 2048
    # wave layers, the memory policy of training: what backward recomputes instead of keeping:
    # "none", nothing; "field", the stage between the two projections; "tile", the whole tile
    recompute: str = "field"
    # "wave" layers: the field stage as one fused op ("fused": channel deposits without wave_norm,
    # recompute "field" or "tile") or composed from autograd ops ("reference", any option);
    # "auto" takes the fused op where it can
    wave_implementation: str = "auto"
    # "wave" layers: "channel" deposits f(k) * v (a d-vector field per head); "outer" deposits the
    # outer product f(k) v^T (a d x d field per head, read with f(q)); for "outer" the "fft" path
    # is the quadratic whole-sequence form and "auto" takes the chunked one
    wave_deposit: str = "channel"
    # "wave" layers: RMS-normalise each head's read-out before the gate
    wave_norm: bool = False
    # wave layers: scale the read by sigmoid(g), g a fourth projection of the input
    wave_gate: bool = True
    # wave layers: keep omega, alpha, phi at their initial values (no gradient; an ablation)
    freeze_physics: bool = False
    # mamba2 layers: state size per head (d_state: the length of B and C)
    ssm_state: int = 64
    # attention layers: rotary position base
    rope_base: float = 10000.0
    dropout: float = 0.0
    norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self):
        if not 1 <= self.n_layers <= MAX_LAYERS:  # first: layer_types below is a list of n_layers entries
            raise UserError(f"n_layers must be between 1 and {MAX_LAYERS}, got {self.n_layers}")
        if self.layer_types is None:
            self.layer_types = default_layer_types(self.n_layers)
        self.layer_types = list(self.layer_types)
        checks = [
            (self.vocab_size >= 1, f"vocab_size must be >= 1, got {self.vocab_size}"),
            (self.d_model >= 1, f"d_model must be >= 1, got {self.d_model}"),
            (self.n_heads >= 1, f"n_heads must be >= 1, got {self.n_heads}"),
            (self.d_model % max(self.n_heads, 1) == 0, f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"),
            (self.mlp_ratio >= 0, f"mlp_ratio must be >= 0, got {self.mlp_ratio}"),
            (len(self.layer_types) == self.n_layers, f"layer_types has {len(self.layer_types)} entries but n_layers is {self.n_layers}"),
            (all(t in LAYER_TYPES for t in self.layer_types), f"layer_types entries must be one of {LAYER_TYPES}, got {self.layer_types}"),
            (self.short_conv >= 0, f"short_conv must be >= 0, got {self.short_conv}"),
            (self.feature_map in FEATURE_MAPS, f"feature_map must be one of {FEATURE_MAPS}, got {self.feature_map!r}"),
            (0 < self.reach_min <= self.reach_max, f"need 0 < reach_min <= reach_max, got {self.reach_min}, {self.reach_max}"),
            (0 < self.omega_scale <= 1, f"omega_scale must be in (0, 1], got {self.omega_scale}"),
            (self.wave_path in WAVE_PATHS, f"wave_path must be one of {WAVE_PATHS}, got {self.wave_path!r}"),
            (self.chunk_size >= 1, f"chunk_size must be >= 1, got {self.chunk_size}"),
            (self.ssm_state >= 1, f"ssm_state must be >= 1, got {self.ssm_state}"),
            (self.wave_deposit in WAVE_DEPOSITS, f"wave_deposit must be one of {WAVE_DEPOSITS}, got {self.wave_deposit!r}"),
            (self.tile_size >= 1, f"tile_size must be >= 1, got {self.tile_size}"),
            (self.recompute in RECOMPUTE, f"recompute must be one of {RECOMPUTE}, got {self.recompute!r}"),
            (self.wave_implementation in IMPLEMENTATIONS, f"wave_implementation must be one of {IMPLEMENTATIONS}, got {self.wave_implementation!r}"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
        ]
        checks += self._bounds()
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        if "wave" in self.layer_types:  # "wave-outer" layers take "auto" (their deposits have no fused op)
            try:
                field_implementation(self.wave_implementation, self.wave_deposit, self.wave_norm, self.recompute)
            except ValueError as e:
                raise UserError(f"wave_implementation: {e}") from None
        if {"attention", "conv-attention"} & set(self.layer_types) and (self.d_model // self.n_heads) % 2:
            raise UserError(f"attention layers need an even head size for rotary positions, got {self.d_model // self.n_heads}")
        if "conv-attention" in self.layer_types and self.short_conv < 1:
            raise UserError("conv-attention layers need short_conv >= 1 (with 0 they are plain attention: use the layer type 'attention')")

    def _bounds(self) -> list:
        """(ok, message) for the upper bounds (MAX_SIZES, MAX_PARAMETERS) and the positive floats;
        NaN fails every comparison, so it is refused here too."""
        n = estimated_parameters(self)
        return [
            *((getattr(self, k) <= v, f"{k} must be <= {v:g}, got {getattr(self, k)}") for k, v in MAX_SIZES.items()),
            (self.rope_base > 0, f"rope_base must be > 0, got {self.rope_base}"),
            (self.norm_eps > 0, f"norm_eps must be > 0, got {self.norm_eps}"),
            (self.init_std >= 0, f"init_std must be >= 0, got {self.init_std}"),
            (n <= MAX_PARAMETERS, f"this config describes about {n:.3g} parameters, more than the {MAX_PARAMETERS:.0e} this wavefield builds"),
        ]

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return {"config_version": CONFIG_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "WaveFieldConfig":
        """A config from parsed config.json; a value of the wrong type (a string, a list, null,
        a boolean or a float for an integer, NaN or infinity) is a UserError naming the field."""
        if not isinstance(data, dict):
            raise UserError(f"a config must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("config_version", None)
        if version != CONFIG_VERSION:
            raise UserError(f"config version {version!r} is not supported (this wavefield reads version {CONFIG_VERSION})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown config fields: {', '.join(unknown)}")
        for f in dataclasses.fields(cls):
            if f.name in data:
                check_type(f.name, data[f.name], f.default)
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def check_type(name: str, value, default):
    """Refuse a config value whose JSON type differs from the field's (the default's type)."""
    if name == "layer_types":
        ok = value is None or (isinstance(value, list) and all(isinstance(t, str) for t in value))
        expected = "a list of strings"
    elif isinstance(default, bool):
        ok, expected = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        expected = "a finite number"
    else:
        ok, expected = isinstance(value, str), "a string"
    if not ok:
        raise UserError(f"config field {name} must be {expected}, got {json.dumps(value)[:40]}")


def estimated_parameters(cfg: WaveFieldConfig) -> float:
    """An upper bound on the parameter count, from the sizes alone (no tensor is made): the
    embedding, and per layer at most 6 d x d projections, a short conv over 3d channels (weights
    and bias), norms and per-head numbers, plus an MLP of 3 * mlp_ratio d x d. A mamba2 layer
    (inner width 2d, S = ssm_state) has 6 d x d and 2 S d projection weights, a conv over 2d + 2S
    channels, a norm and 3 numbers per head."""
    d, K, S, H = cfg.d_model, cfg.short_conv, cfg.ssm_state, cfg.n_heads
    mixer = 6 * d * d + 3 * (K + 1) * d + 16 * d
    if "mamba2" in cfg.layer_types:
        mixer = max(mixer, 6 * d * d + (2 * S + H) * d + (2 * d + 2 * S) * (K + 1) + 2 * d + 3 * H)
    return cfg.vocab_size * d + cfg.n_layers * (mixer + 3 * cfg.mlp_ratio * d * d)
