"""The wave-field layer on its own: parametrisation, initial scales, state in / state out."""

import math

import pytest
import torch

from wavefield import WaveFieldAttention
from wavefield.layers.wave import ALPHA_MIN
from wavefield.ops import lower_toeplitz, reach


def test_parameters_stay_in_their_physical_ranges():
    layer = WaveFieldAttention(32, 4)
    with torch.no_grad():
        layer.omega_raw.copy_(torch.tensor([-1e4, -30.0, 30.0, 1e4]))
        layer.alpha_raw.copy_(torch.tensor([-1e4, -30.0, 0.0, 1e4]))
    assert ((layer.omega >= 0) & (layer.omega <= math.pi)).all()
    assert (layer.alpha >= ALPHA_MIN).all() and torch.isfinite(layer.alpha).all()


def test_initial_heads_span_local_to_long_range_and_differ_by_layer():
    layers = [WaveFieldAttention(64, 8, reach_min=1.0, reach_max=2048.0, layer_index=i, n_layers=4) for i in range(4)]
    reaches = torch.stack([reach(layer.alpha.detach()) for layer in layers])  # (layers, heads)
    assert reaches.min() < 2.0 and reaches.max() > 1000.0
    assert len({tuple(r.tolist()) for r in reaches}) == 4
    assert (reaches.flatten().sort().values.diff() > 0).all()  # one interleaved log grid, no repeats
    omega = torch.stack([layer.omega.detach() for layer in layers])
    assert (omega > 0).all() and (omega < math.pi).all()


@pytest.mark.parametrize("deposit", ["channel", "outer"])
def test_layer_state_continues_exactly(deposit):
    torch.manual_seed(0)
    layer = WaveFieldAttention(24, 3, short_conv=4, deposit=deposit, norm=True).eval()
    x = torch.randn(2, 50, 24)
    with torch.no_grad():
        full = layer(x)
        a, state = layer(x[:, :17], return_state=True)
        b, state = layer(x[:, 17:18], state=state, return_state=True)
        c, _ = layer(x[:, 18:], state=state, return_state=True)
    torch.testing.assert_close(torch.cat([a, b, c], 1), full, atol=1e-6, rtol=1e-5)


def test_tiled_chunked_layer_matches_the_fft_layer():
    """Long inputs run tile by tile (projections, short conv and field state carried across
    tiles): the result equals one FFT pass over the whole input, with and without a state."""
    torch.manual_seed(1)
    tiled = WaveFieldAttention(24, 3, short_conv=4, path="chunked", chunk_size=5, tile_size=13).eval()
    whole = WaveFieldAttention(24, 3, short_conv=4, path="fft").eval()
    whole.load_state_dict(tiled.state_dict())
    x = torch.randn(2, 100, 24)
    with torch.no_grad():
        torch.testing.assert_close(tiled(x), whole(x), atol=1e-6, rtol=1e-5)
        _, state = whole(x[:, :30], return_state=True)
        a, sa = tiled(x[:, 30:], state=state, return_state=True)
        b, sb = whole(x[:, 30:], state=state, return_state=True)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sa["field"], sb["field"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sa["conv"], sb["conv"])


@pytest.mark.parametrize("short_conv", [0, 4])
def test_short_sequences_are_grouped_by_sample_with_the_same_result(short_conv):
    """With sequences shorter than a tile, tiles are groups of samples (here 2, 2 and 1):
    outputs, states and gradients equal one pass over the whole batch."""
    torch.manual_seed(3)
    grouped = WaveFieldAttention(16, 2, short_conv=short_conv, tile_size=20)
    whole = WaveFieldAttention(16, 2, short_conv=short_conv, tile_size=1000)
    whole.load_state_dict(grouped.state_dict())
    x = torch.randn(5, 9, 16)
    with torch.no_grad():
        _, state = whole(torch.randn(5, 7, 16), return_state=True)
    results = []
    for layer in (grouped, whole):
        xg = x.clone().requires_grad_()
        out, new_state = layer(xg, state=state, return_state=True)
        (out.square().sum() + new_state["field"].abs().sum()).backward()
        results.append([out, *(v for v in new_state.values() if v is not None), xg.grad, *(p.grad for p in layer.parameters())])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("recompute", ["field", "tile"])
@pytest.mark.parametrize("deposit", ["channel", "outer"])
def test_recompute_gives_the_same_gradients(recompute, deposit):
    """What backward recomputes instead of keeping changes no gradient."""
    torch.manual_seed(2)
    plain = WaveFieldAttention(16, 2, tile_size=9, recompute="none", deposit=deposit, implementation="reference")
    lean = WaveFieldAttention(16, 2, tile_size=9, recompute=recompute, deposit=deposit)
    lean.load_state_dict(plain.state_dict())
    x = torch.randn(2, 40, 16)
    grads = []
    for layer in (plain, lean):
        xg = x.clone().requires_grad_()
        layer(xg).square().sum().backward()
        grads.append([xg.grad, *(p.grad for p in layer.parameters())])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("recompute", ["none", "field", "tile"])
def test_fused_and_reference_field_agree_under_every_recompute_policy(recompute, masked):
    """The fused op and its autograd composition, each under a memory policy, against the
    composition keeping everything: the same output, state and gradients, with and without a
    mask of padding (cut into tiles of 9). The fused op always recomputes the field in
    backward, so it refuses recompute="none"."""
    torch.manual_seed(5)
    base = WaveFieldAttention(16, 2, tile_size=9, recompute="none", implementation="reference")
    layers = [WaveFieldAttention(16, 2, tile_size=9, recompute=recompute, implementation="reference")]
    if recompute == "none":
        with pytest.raises(ValueError, match="fused field stage needs .* recompute 'field' or 'tile'"):
            WaveFieldAttention(16, 2, recompute=recompute, implementation="fused")
    else:
        layers.append(WaveFieldAttention(16, 2, tile_size=9, recompute=recompute, implementation="fused"))
    assert [layer.implementation for layer in layers] == ["reference", "fused"][: len(layers)]
    x = torch.randn(2, 40, 16)
    mask = torch.rand(2, 40) < 0.7 if masked else None
    runs = []
    for layer in [base, *layers]:
        layer.load_state_dict(base.state_dict())
        xg = x.clone().requires_grad_()
        out, state = layer(xg, return_state=True, mask=mask)
        (out.square().sum() + state["field"].abs().square().sum()).backward()
        runs.append([out, state["field"], state["conv"], xg.grad, *(p.grad for p in layer.parameters())])
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_auto_takes_the_fused_field_where_it_can_and_fused_is_refused_where_it_cannot():
    assert WaveFieldAttention(16, 2).implementation == "fused"
    assert WaveFieldAttention(16, 2, recompute="tile").implementation == "fused"
    assert WaveFieldAttention(16, 2, recompute="none").implementation == "reference"
    assert WaveFieldAttention(16, 2, deposit="outer").implementation == "reference"
    assert WaveFieldAttention(16, 2, norm=True).implementation == "reference"
    for options in [dict(deposit="outer"), dict(norm=True), dict(recompute="none")]:
        with pytest.raises(ValueError, match="fused field stage needs"):
            WaveFieldAttention(16, 2, implementation="fused", **options)
    with pytest.raises(ValueError, match="implementation must be one of"):
        WaveFieldAttention(16, 2, implementation="fast")
    with pytest.raises(ValueError, match="tile_size must be >= 1"):
        WaveFieldAttention(16, 2, tile_size=0)


def test_config_chooses_tile_size_recompute_and_implementation_and_saves_them(tmp_path):
    from wavefield import WaveFieldConfig, WaveFieldLM
    from wavefield.errors import UserError

    cfg = WaveFieldConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, tile_size=7, recompute="tile", wave_implementation="reference")
    model = WaveFieldLM(cfg)
    assert [(b.mixer.tile_size, b.mixer.recompute, b.mixer.implementation) for b in model.blocks] == [(7, "tile", "reference")] * 2
    model.save_pretrained(tmp_path)
    assert WaveFieldLM.from_pretrained(tmp_path).config == cfg
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("tile_size", "recompute", "wave_implementation")}
    assert WaveFieldConfig.from_dict(old) == WaveFieldConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2)  # a config saved before them
    assert [b.mixer.implementation for b in WaveFieldLM(WaveFieldConfig.from_dict(old)).blocks] == ["reference", "fused"]  # wave-outer, wave
    for bad, needle in [
        (dict(recompute="all"), "recompute must be one of"),
        (dict(tile_size=0), "tile_size must be >= 1"),
        (dict(wave_implementation="fast"), "wave_implementation must be one of"),
        (dict(wave_implementation="fused", wave_norm=True), "fused field stage needs"),
    ]:
        with pytest.raises(UserError, match=needle):
            WaveFieldConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, **bad)
    WaveFieldConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, layer_types=["attention"], wave_implementation="fused", wave_norm=True)


def test_outer_deposit_keeps_a_matrix_field_per_head():
    layer = WaveFieldAttention(24, 3, deposit="outer").eval()
    _, state = layer(torch.randn(2, 9, 24), return_state=True)
    assert state["field"].shape == (2, 3, 8, 8) and state["field"].is_complex()
    with pytest.raises(ValueError, match="wave field state .field. must be a complex tensor of shape"):
        layer(torch.randn(2, 1, 24), state={**state, "field": state["field"][..., 0]})
    with pytest.raises(ValueError, match="deposit must be one of"):
        WaveFieldAttention(24, 3, deposit="matrix")
    with pytest.raises(ValueError, match="recompute must be one of"):
        WaveFieldAttention(24, 3, recompute=True)
    with pytest.raises(ValueError, match=r"mask must be a bool tensor of shape \(2, 9\)"):
        layer(torch.randn(2, 9, 24), mask=torch.ones(2, 8, dtype=torch.bool))


def test_bfloat16_autocast_training_stays_close_to_float32():
    """Under autocast the projections run in bfloat16 and the propagation in float32: the output
    and the gradients (input, projections, physical parameters) stay within bfloat16 rounding."""
    torch.manual_seed(4)
    layer = WaveFieldAttention(32, 4, tile_size=16)
    x = torch.randn(2, 40, 32)
    runs = []
    for bf16 in (False, True):
        layer.zero_grad()
        xg = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = layer(xg)
        assert out.dtype == (torch.bfloat16 if bf16 else torch.float32)
        out.float().square().sum().backward()
        runs.append([out.float(), xg.grad, layer.in_proj.weight.grad.clone(), layer.conv.weight.grad.clone(), layer.omega_raw.grad.clone()])
    for low, ref in zip(runs[1], runs[0]):
        assert ((low - ref).norm() / ref.norm()).item() < 0.05


@pytest.mark.parametrize(
    "gate,norm,short_conv,feature_map,deposit",
    [
        (True, False, 4, "identity", "channel"),
        (False, False, 0, "silu", "channel"),
        (True, True, 3, "elu1", "channel"),
        (False, True, 4, "identity", "channel"),
        (True, True, 4, "elu1", "outer"),
        (False, False, 0, "silu", "outer"),
    ],
)
def test_decomposition_reproduces_the_forward(gate, norm, short_conv, feature_map, deposit):
    """out_proj(gate * read * Re(exp(i phi) field)) is the layer's output (for outer deposits the
    read contracts each head's d x d field, and equally weights times values); the wave is the
    kernel applied to the deposits; the field's last position is gain times the state forward carries out."""
    torch.manual_seed(5)
    layer = WaveFieldAttention(24, 3, short_conv=short_conv, feature_map=feature_map, gate=gate, norm=norm, chunk_size=8, deposit=deposit).eval()
    with torch.no_grad():
        layer.phi.normal_()
        x = torch.randn(2, 37, 24)
        out, state = layer(x, return_state=True)
        t = layer.decompose(x)
    B, N, D = x.shape
    C = 8 if deposit == "channel" else 64  # the field's channels per head
    assert t.deposits.shape == t.field.shape == (B, 3, C, N) and t.read.shape == t.gate.shape == (B, 3, 8, N) and t.kernel.shape == (3, N)
    wave = (torch.polar(torch.ones_like(layer.phi), layer.phi)[:, None, None] * t.field).real  # (B, H, C, N)
    torch.testing.assert_close(wave, torch.einsum("hts,bhds->bhdt", lower_toeplitz(t.kernel), t.deposits), atol=1e-5, rtol=1e-4)
    gain = -torch.expm1(-layer.alpha)[:, None]
    torch.testing.assert_close(t.field[..., -1], gain * state["field"].reshape(B, 3, C), atol=1e-5, rtol=1e-4)
    if deposit == "channel":
        z = t.gate * t.read * wave
    else:
        z = t.gate * torch.einsum("bhin,bhijn->bhjn", t.read, wave.view(B, 3, 8, 8, N))
        torch.testing.assert_close(z, t.gate * torch.einsum("bhts,bhds->bhdt", t.weights, t.values), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer.out_proj(z.reshape(B, D, N).mT), out, atol=1e-5, rtol=1e-4)


def test_initial_scales_are_what_the_layer_started_from():
    layer = WaveFieldAttention(16, 4, reach_min=16.0, reach_max=512.0, omega_scale=0.01, layer_index=1, n_layers=3)
    omega0, alpha0 = layer.initial_scales()
    torch.testing.assert_close(layer.omega.double(), omega0, rtol=1e-5, atol=0)
    torch.testing.assert_close(layer.alpha.double(), alpha0, rtol=1e-5, atol=0)
    assert (1 / alpha0).min() >= 16 and omega0.max() < 0.01 * math.pi / 16
    with torch.no_grad():
        layer.alpha_raw.add_(1.0)
    assert not torch.allclose(layer.alpha.double(), layer.initial_scales()[1])  # the initial values, not the current ones
