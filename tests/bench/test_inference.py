"""`wavefield bench inference` end to end at tiny sizes. No timing is asserted: only that every
part runs and writes well-formed records, a report and plots, and what does not depend on the
machine (state sizes, FLOP counts, skips)."""

import json

import pytest

from wavefield.bench.inference import kv_bytes, model_gflops
from wavefield.bench.inference_report import _dense_table, repeat_ratios, summarise, targets
from wavefield.bench.report import _fmt
from wavefield.cli import main
from wavefield.config import WaveFieldConfig


def test_bench_inference_quick_writes_records_report_and_plots(tmp_path):
    out = tmp_path / "inference"
    assert main(["bench", "inference", "--quick", "--threads", "1", "--out", str(out)]) == 0
    results = json.loads((out / "inference.json").read_text())
    records, models = results["records"], results["environment"]["models"]
    assert set(models) == {"wave", "transformer", "hybrid", "mamba2"}
    counts = [m["parameters"] for m in models.values()]
    assert max(counts) / min(counts) < 1.05  # matched in parameters
    context = {(r["model"], r["context"]): r for r in records if r["kind"] == "context"}
    assert set(context) == {(m, n) for m in [*models, "transformer (one pass)"] for n in (64, 256)}
    for r in context.values():
        assert 0 < r["prefill_s"] <= r["ttft_s"] <= r["total_s"] and r["peak_mb"] >= r["weights_mb"]
    # the wave model's state does not grow with the prompt; a KV cache holds every position read
    assert context["wave", 64]["state_mb"] == context["wave", 256]["state_mb"]
    assert context["mamba2", 64]["state_mb"] == context["mamba2", 256]["state_mb"]
    for n in (64, 256):
        cfg = WaveFieldConfig(**{**dict(vocab_size=256), **results["settings"]["model"], "layer_types": models["transformer"]["layer_types"]})
        assert context["transformer", n]["state_mb"] == kv_bytes(cfg, n - 1) / 2**20  # the prompt but its last token, before decoding
    batch = [r for r in records if r["kind"] == "batch"]
    assert {(r["model"], r["batch"]) for r in batch} == {(m, b) for m in models for b in (1, 3)}
    assert all(r["real_tokens"] <= r["batch"] * r["context"] for r in batch)
    flops = {r["model"]: r for r in records if r["kind"] == "flops"}
    assert flops["transformer"]["prefill_gflops"] > flops["hybrid"]["prefill_gflops"] > flops["wave"]["prefill_gflops"]
    dense = {r["model"]: r for r in records if r["kind"] == "dense"}
    assert set(dense) == set(models) and all(0 < r["piece_dense_s"] and 0 < r["step_dense_s"] for r in dense.values())
    document = {r["model"]: r for r in records if r["kind"] == "document"}
    assert set(document) == set(models) and all(r["same_tokens"] for r in document.values())  # the state answers as reading again does
    assert document["wave"]["file_mb"] < document["transformer"]["file_mb"]  # 200 positions of keys and values against a constant field
    assert not list(out.glob("tmp*"))  # the state files are removed
    report = (out / "inference.md").read_text()
    assert "- wave: layers O W O W," in report  # the default architecture, one letter per layer type
    assert "Ratios to the wave model" in report and "Batched decoding" in report and "Operations at 256 tokens" in report and "read once" in report
    assert "Where the time goes: the dense projections alone" in report
    assert (out / "inference_context.png").stat().st_size > 0 and (out / "inference_batch.png").stat().st_size > 0


def test_calls_over_the_budget_are_skipped_and_recorded(tmp_path):
    out = tmp_path / "inference"
    argv = ["bench", "inference", "--quick", "--threads", "1", "--parts", "context", "--contexts", "64,4096", "--max-seconds", "1e-9", "--out", str(out)]
    assert main(argv) == 0
    records = json.loads((out / "inference.json").read_text())["records"]
    assert all(not r["skipped"] for r in records if r["context"] == 64)  # nothing measured yet to predict from
    assert all(r["skipped"] and r["predicted_s"] > 1e-9 for r in records if r["context"] == 4096)
    assert "Skipped" in (out / "inference.md").read_text()


def test_one_pass_prompts_are_not_predicted_to_need_a_mask(tmp_path):
    from wavefield.bench.inference import InferenceSettings, _predict

    cfg = WaveFieldConfig(d_model=256, n_layers=5, n_heads=8, layer_types=["attention"] * 5)
    one_pass = _predict(InferenceSettings(), "context", "t", 65536, cfg, 1, None)[1]
    chunked = _predict(InferenceSettings(), "context", "t", 65536, cfg, 1, 256)[1]
    whole = _predict(InferenceSettings(), "context", "t", 65536, cfg, 1, 65536)[1]  # one piece: the one pass
    padded = _predict(InferenceSettings(), "batch", "t", 65536, cfg, 1, 256)[1]
    elsewhere = _predict(InferenceSettings(device="cuda"), "context", "t", 65536, cfg, 1, 256)[1]
    kv = kv_bytes(cfg, 65536) / 1e9  # 0.67 GB: causal SDPA in one pass needs activations O(N D) beside it, no (N, N) scores
    assert kv < one_pass == whole < 3 * kv and kv < chunked < 1.1 * kv  # on CPU, later pieces build no mask either
    assert padded == elsewhere == pytest.approx(chunked + 4 * 256 * 65536 / 1e9)  # a float mask of a piece's queries over every key


def test_operation_counts_follow_the_architecture():
    wave = WaveFieldConfig(d_model=64, n_layers=2, n_heads=4)
    attention = WaveFieldConfig(d_model=64, n_layers=2, n_heads=4, layer_types=["attention"] * 2)
    assert model_gflops(wave, 4096)["decode_gflops"] == model_gflops(wave, 64)["decode_gflops"]  # O(1) per token
    growth = model_gflops(attention, 4096)["decode_gflops"] - model_gflops(attention, 2048)["decode_gflops"]
    assert growth == pytest.approx(2 * 4 * 2048 * 64 / 1e9)  # q k^T and p v over 2048 more keys, two layers
    ratio = model_gflops(attention, 32768)["prefill_gflops"] / model_gflops(wave, 32768)["prefill_gflops"]
    assert ratio > 4 * model_gflops(attention, 1024)["prefill_gflops"] / model_gflops(wave, 1024)["prefill_gflops"]  # quadratic against linear
    mamba = [WaveFieldConfig(d_model=64, n_layers=2, n_heads=4, layer_types=["mamba2"] * 2, ssm_state=s) for s in (16, 64)]
    assert model_gflops(mamba[0], 4096)["prefill_gflops"] < model_gflops(mamba[1], 4096)["prefill_gflops"]  # the config's state size counts
    channel, outer, outer_type = (
        WaveFieldConfig(d_model=64, n_layers=2, n_heads=4, layer_types=[t] * 2, wave_deposit=w)
        for t, w in (("wave", "channel"), ("wave", "outer"), ("wave-outer", "channel"))
    )
    assert model_gflops(outer, 4096) == model_gflops(outer_type, 4096) != model_gflops(channel, 4096)  # a "wave" layer with outer deposits counts as one


def test_targets_are_read_from_the_records():
    def rec(kind, model, context, batch=1, **values):
        return dict(kind=kind, model=model, context=context, batch=batch, skipped=False, new_tokens=256, **values)

    records = [
        rec("context", "wave", 65536, total_s=10.0, peak_mb=40.0, decode_s_per_token=0.011),
        rec("context", "transformer", 65536, total_s=150.0, peak_mb=800.0, decode_s_per_token=0.2),
        rec("context", "wave", 1024, total_s=1.0, peak_mb=30.0, decode_s_per_token=0.010),
        rec("batch", "wave", 8192, 16, decode_tokens_per_s=900.0),
        rec("batch", "transformer", 8192, 16, decode_tokens_per_s=100.0),
    ]
    found = {name: (value, met) for name, value, met in targets(records)}
    assert len(found) == 4
    time, memory, flat, batched = found.values()
    assert time == (15.0, False) and memory == (20.0, True) and flat[1] and batched == (9.0, False)
    # each model's best figure, named: the wave model read in one pass is faster and heavier
    records.append(rec("context", "wave (one pass)", 65536, total_s=6.0, peak_mb=400.0, decode_s_per_token=0.011))
    records.append(rec("context", "transformer (one pass)", 65536, total_s=120.0, peak_mb=1600.0, decode_s_per_token=0.2))
    found = {name: (value, met) for name, value, met in targets(records)}
    assert found["64K prompt + 256 tokens: total time, transformer (one pass) / wave (one pass) >= 20"] == (20.0, True)
    assert found["64K prompt + 256 tokens: peak memory, transformer / wave >= 17.4"] == (20.0, True)
    assert found["wave decode per token at 64K / at 1K <= 1.2"][0] == pytest.approx(1.1)  # the chunked read's decoding
    # the floor of the dense part: 256 pieces of 25 ms and 256 steps of 2 ms = 6.912 s, against the transformer's best 120 s
    records.append(rec("dense", "wave", 256, piece_s=0.04, piece_dense_s=0.025, step_s=0.004, step_dense_s=0.002))
    (section,) = _dense_table(records)
    assert "| wave | 40 | 25 (62%) | 4 | 2 (50%) |" in section
    assert f"in {_fmt(6.912)} s ({_fmt(6.0)} s measured): {_fmt(120 / 6.912)}x faster than transformer (one pass) ({_fmt(20.0)}x measured)" in section


@pytest.mark.parametrize(
    "flags, phrase",
    [
        (["--contexts", "99999999999"], "contexts must lie in"),
        (["--batches", "100000"], "batch sizes must lie in"),
        (["--max-seconds", "nan"], "must be > 0"),
        (["--new-tokens", "0"], "must be > 0"),
        (["--new-tokens", "1"], "new tokens must lie in [2"),
        (["--models", "gpt"], "is not one of"),
        (["--models", "wave", "--one-pass", "transformer"], "--one-pass names transformer, not among the models measured (wave)"),
        (["--contexts", "1"], "contexts must lie in"),
        (["--repeats", "101"], "repeats must lie in [1, 100]"),
        (["--repeats", "0"], "must be > 0"),
    ],
)
def test_bad_flags_are_one_line(flags, phrase, tmp_path, capsys):
    assert main(["bench", "inference", "--quick", "--out", str(tmp_path / "x"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and phrase in err, err
    assert not (tmp_path / "x").exists()


def test_one_pass_measures_the_models_it_names(tmp_path):
    out = tmp_path / "inference"
    assert main(["bench", "inference", "--quick", "--threads", "1", "--parts", "context", "--models", "wave", "--one-pass", "wave", "--out", str(out)]) == 0
    records = json.loads((out / "inference.json").read_text())["records"]
    assert {(r["model"], r["prefill_chunk"]) for r in records} == {("wave", 48), ("wave (one pass)", None)}


def test_repeats_take_turns_and_the_report_gives_medians(tmp_path):
    out = tmp_path / "inference"
    argv = ["bench", "inference", "--quick", "--threads", "1", "--parts", "context,batch", "--models", "wave,transformer", "--contexts", "64"]
    assert main([*argv, "--batches", "3", "--repeats", "3", "--out", str(out)]) == 0
    records = json.loads((out / "inference.json").read_text())["records"]
    context = [(r["model"], r["repeat"]) for r in records if r["kind"] == "context"]
    models = ["wave", "transformer", "transformer (one pass)"]
    assert context == [(m, i) for i in range(3) for m in models]  # the models take turns, run after run
    assert sorted((r["model"], r["repeat"]) for r in records if r["kind"] == "batch") == sorted((m, i) for m in models[:2] for i in range(3))
    report = (out / "inference.md").read_text()
    assert report.count("| 64 | wave |") == 1 and report.count("| 64 | 3 | wave |") == 1  # one row per measurement: the medians


def test_summarise_takes_the_median_of_each_figure_and_lists_every_run():
    def rec(model, repeat, total, peak=50.0, context=65536):
        return dict(
            kind="context",
            model=model,
            context=context,
            batch=1,
            skipped=False,
            new_tokens=256,
            repeat=repeat,
            total_s=total,
            prefill_s=total - 1,
            ttft_s=total - 1,
            decode_s_per_token=0.004,
            decode_tokens_per_s=250.0,
            peak_mb=peak,
        )

    records = [rec("wave", 0, 10.0, 38), rec("transformer", 0, 150.0, 800), rec("wave", 1, 12.0, 36), rec("transformer", 1, 160.0, 810)]
    records += [rec("wave", 2, 11.0, 37), rec("transformer", 2, 140.0, 790), rec("wave", 0, 1.0, context=1024)]
    merged = {(r["model"], r["context"]): r for r in summarise(records)}
    wave, transformer = merged["wave", 65536], merged["transformer", 65536]
    assert (wave["total_s"], wave["peak_mb"], wave["repeats"], wave["total_s_runs"]) == (11.0, 37, 3, [10.0, 12.0, 11.0])
    assert (transformer["total_s"], transformer["prefill_s"]) == (150.0, 149.0)
    assert merged["wave", 1024] is records[-1]  # one run: unchanged
    assert summarise(summarise(records)) == summarise(records)
    time = next(value for name, value, _ in targets(records) if "total time" in name)
    assert time == pytest.approx(150 / 11)  # median against median, not the best run of each
    assert repeat_ratios(records) == pytest.approx([15.0, 160 / 12, 140 / 11])


def test_the_dense_parts_decoding_steps_write_into_the_reserved_cache(monkeypatch):
    """Each timed step continues from the last one's state: no step copies or grows the KV cache."""
    import torch

    import wavefield.layers.attention as attention
    from wavefield.bench.inference import DENSE_REPEATS, _dense
    from wavefield.model import WaveFieldLM

    model = WaveFieldLM(WaveFieldConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, layer_types=["attention", "wave"])).eval()
    grown, grow = [], attention._grow
    monkeypatch.setattr(attention, "_grow", lambda state, *a: grown.append(state is None) or grow(state, *a))
    with torch.no_grad():
        record = _dense(model, torch.randint(0, 64, (1, 33)), torch.device("cpu"))
    assert record["step_s"] > 0
    # the timed first pieces make caches of their own; the prefill before the steps reserves room for all of them
    assert len(grown) == DENSE_REPEATS + 1 and all(grown)
