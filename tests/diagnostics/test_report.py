"""`wavefield diagnose` end to end: every output written, bad input refused, and the HTML report
working in a real headless Chromium (skipped where Chromium and its driver are absent)."""

import io
import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from wavefield import WaveFieldConfig, WaveFieldLM
from wavefield.cli import main
from wavefield.data.tokenizer import train_bpe
from wavefield.diagnostics import head_physics, head_table, kernel_energy
from wavefield.diagnostics.report import diagnose
from wavefield.diagnostics.sources import encode_prompt

PROMPT = "Ham.\nHere's the commission: read it at more leisure.\nBut wilt thou hear now how I did proceed?"


@pytest.fixture(scope="module")
def report(trained_run, tmp_path_factory):
    run, model, _ = trained_run
    out = tmp_path_factory.mktemp("report")
    assert main(["diagnose", str(run), "--out", str(out / "diag"), "--prompt", PROMPT, "--json", str(out / "all.json")]) == 0
    return out / "diag", json.loads((out / "all.json").read_text()), model


def test_every_output_is_written(report):
    out, data, model = report
    assert json.loads((out / "diagnostics.json").read_text()) == data
    assert data["prompt"]["ids"] == list(PROMPT.encode())
    assert "bytes" in data["prompt"]["tokenizer"]  # said so: no tokenizer in this folder
    assert data["path_agreement"]["passed"] and data["causality"]["passed"]
    assert len(data["causality"]["rows"]) == len(PROMPT)
    assert [r["class"] for r in data["heads"]] == [r["class"] for r in head_table(head_physics(model))]
    moved = [r["reach_moved"] for r in data["heads"]]
    assert "reach_moved</th>" in (out / "report.html").read_text() and f"from {min(moved):.3g}x to {max(moved):.3g}x" in (out / "report.html").read_text()
    assert [h["step"] for h in data["history"]] == [0, 16, 32, 48]  # the validation records of metrics.jsonl
    N = len(PROMPT)
    assert torch.tensor(data["effective_attention"]["maps"]).shape == (2, N, N)
    assert torch.tensor(data["field_amplitude"]).shape == (2, 4, N)
    assert torch.tensor(data["field_energy"]).shape == (2, N)
    for name in data["figures"]:
        with Image.open(out / name) as im:
            assert im.width > 300 and im.height > 150
    assert set(data["figures"]) >= {
        "heads.png",
        "head_history.png",
        "energy.png",
        "causality.png",
        "field_amplitude.png",
        "impulse_response.png",
        "effective_attention.png",
        "field.gif",
    }
    with Image.open(out / "field.gif") as gif:
        assert gif.n_frames == min(N, 64)
        gif.seek(1)
        early = gif.convert("RGB").tobytes()
        gif.seek(gif.n_frames - 1)
        assert gif.convert("RGB").tobytes() != early  # the field builds up


def test_html_is_self_contained(report):
    html = (report[0] / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html, re.I)
    assert "<script src" not in html and "@import" not in html
    assert html.count("data:image/png;base64,") == 7 and html.count("data:image/gif;base64,") == 1


def test_several_checkpoint_folders(trained_run, tmp_path):
    run, _, _ = trained_run
    assert main(["diagnose", str(run / "checkpoints"), "--out", str(tmp_path / "d"), "--prompt", "Is't possible?"]) == 0
    data = json.loads((tmp_path / "d" / "diagnostics.json").read_text())
    assert data["model"]["checkpoints"] == [str(run / "checkpoints" / f"step-{s:04d}") for s in (0, 16, 32, 48)]
    from_folders = [h for h in data["history"] if "checkpoints" in h["source"]]
    assert [h["step"] for h in from_folders] == [0, 16, 32, 48]
    assert from_folders[0]["heads"] != from_folders[-1]["heads"]  # the heads moved in training


def test_a_run_folder_is_read_from_its_checkpoint_not_from_what_a_killed_save_left(trained_run, tmp_path):
    from wavefield.diagnostics.sources import checkpoint_dirs

    run, _, _ = trained_run
    folder = tmp_path / "run"
    shutil.copytree(run / "checkpoints" / "step-0016", folder / "checkpoint")
    for leftover in (".checkpoint.tmp-a", ".checkpoint.tmp-z"):  # an interrupted save's copies (checkpoint.py)
        shutil.copytree(run / "checkpoints" / "step-0048", folder / leftover)
    assert checkpoint_dirs([folder]) == [folder / "checkpoint"]
    (folder / "checkpoint").rename(folder / ".checkpoint.old")  # a kill between the save's two renames
    assert checkpoint_dirs([folder]) == [folder / ".checkpoint.old"]


def test_a_damaged_metrics_file_and_extreme_heads_do_not_stop_diagnose(trained_run, tmp_path, capsys):
    """metrics.jsonl lines with a bad byte or a step that is not a number are skipped; a head
    whose omega has underflowed to 0 has an infinite period; weights with NaN are one line."""
    run, model, _ = trained_run
    folder = tmp_path / "run"
    shutil.copytree(run / "checkpoints" / "step-0016", folder / "checkpoint")
    heads = [{**h, "omega": [0.0] * len(h["omega"])} for h in head_physics(model)]  # every head's omega underflowed
    lines = [json.dumps({"step": 5, "heads": heads}).encode(), b'{"step": "abc", "heads": []}', b'{"step": null}', b"\xff\xfe{"]
    (folder / "metrics.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    assert main(["diagnose", str(folder), "--out", str(tmp_path / "d"), "--prompt", "Is't possible?"]) == 0
    history = json.loads((tmp_path / "d" / "diagnostics.json").read_text())["history"]
    assert [h["step"] for h in history if h["source"].endswith("metrics.jsonl")] == [5], history
    weights = folder / "checkpoint" / "model.safetensors"
    tensors = load_file(weights)
    tensors["embed.weight"][0, 0] = float("nan")
    save_file(tensors, weights)
    capsys.readouterr()
    assert main(["diagnose", str(folder), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not finite" in err, err


def test_a_transformer_gets_the_audit_and_its_attention_map(tmp_path):
    torch.manual_seed(0)
    cfg = WaveFieldConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, layer_types=["attention"] * 2)
    WaveFieldLM(cfg).save_pretrained(tmp_path / "tf")
    assert main(["diagnose", str(tmp_path / "tf"), "--prompt", "Is't possible?"]) == 0
    data = json.loads((tmp_path / "tf" / "diagnostics" / "diagnostics.json").read_text())
    assert data["heads"] == [] and data["causality"]["passed"]
    assert data["figures"] == ["causality.png", "effective_attention.png"]
    maps = torch.tensor(data["effective_attention"]["maps"])
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, len("Is't possible?")), rtol=1e-5, atol=1e-5)


def _refused(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("wavefield diagnose: error:") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_bad_input_is_refused_without_touching_files(trained_run, tmp_path, capsys):
    run, _, _ = trained_run
    assert "not a folder" in _refused(capsys, ["diagnose", str(tmp_path / "missing")])
    assert "no saved wavefield model" in _refused(capsys, ["diagnose", str(tmp_path)])
    assert "prompt is empty" in _refused(capsys, ["diagnose", str(run), "--out", str(tmp_path / "o"), "--prompt", "  "])
    mine = tmp_path / "notes.json"
    mine.write_text('{"my": "notes"}')
    assert "refusing to overwrite" in _refused(capsys, ["diagnose", str(run), "--out", str(tmp_path / "o"), "--json", str(mine)])
    assert mine.read_text() == '{"my": "notes"}'
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "report.html").write_text("my page")
    assert "not written by wavefield diagnose" in _refused(capsys, ["diagnose", str(run), "--out", str(folder)])
    assert (folder / "report.html").read_text() == "my page" and sorted(p.name for p in folder.iterdir()) == ["report.html"]


def test_prompt_uses_the_run_tokenizer(tmp_path):
    tok = train_bpe([PROMPT] * 4, vocab_size=300)
    tok.save(tmp_path)
    ids, pieces, how = encode_prompt(tmp_path, "read it at more leisure", 300)
    assert ids == tok.encode("read it at more leisure") and len(ids) < len("read it at more leisure")
    assert "".join(pieces) == "read it at more leisure" and "tokenizer.json" in how
    with pytest.raises(ValueError, match="beyond the model's vocab_size"):
        encode_prompt(tmp_path, "read it", 3)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("Chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1300,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def test_report_opens_in_chromium(report, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    out, data, _ = report
    browser.get((out / "report.html").as_uri())
    assert browser.title == "wavefield diagnostics"
    widths = browser.execute_script("return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) == 8 and min(widths) > 300  # every inline figure decoded
    canvas = lambda: browser.execute_script("return document.getElementById('kernel-canvas').toDataURL()")  # noqa: E731
    text = lambda id: browser.find_element(By.ID, id).text  # noqa: E731
    value = lambda id: float(browser.find_element(By.ID, id).get_attribute("value"))  # noqa: E731

    # a head of the model as the starting point: its numbers arrive on the sliders
    head = max(data["heads"], key=lambda r: r["q_factor"])
    Select(browser.find_element(By.ID, "preset")).select_by_index(1 + data["heads"].index(head))
    assert value("omega") == pytest.approx(head["omega"], abs=1e-3)
    assert 10 ** value("alpha") == pytest.approx(head["alpha"], rel=0.03)
    assert text("readout-class") == head["class"]

    # moving a slider redraws the kernel, and the page's physics agrees with the library's
    before, energy_before = canvas(), text("readout-energy")
    browser.find_element(By.ID, "omega").send_keys(Keys.ARROW_LEFT * 40)
    browser.find_element(By.ID, "alpha").send_keys(Keys.ARROW_LEFT * 30)
    assert canvas() != before and text("readout-energy") != energy_before
    omega, alpha, phi = value("omega"), 10 ** value("alpha"), value("phi")
    expected = kernel_energy(*(torch.tensor([v], dtype=torch.float64) for v in (omega, alpha, phi))).item()
    assert float(text("readout-energy").split()[-1]) == pytest.approx(expected, rel=1e-5)
    if omega / (2 * alpha) > 3:  # a ringing head: its spectrum peaks at its own frequency
        assert float(text("readout-peak").split()[-1]) == pytest.approx(omega, abs=0.05)
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]

    # the screenshot shows the explorer with its kernel drawn
    browser.execute_script("document.getElementById('explorer').scrollIntoView()")
    shot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    rect = browser.execute_script(
        "const r = document.getElementById('kernel-canvas').getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom, devicePixelRatio]"
    )
    box = [round(v * rect[4]) for v in rect[:4]]
    assert box[3] <= shot.height, "the kernel canvas is not inside the screenshot"
    drawn = np.asarray(shot.crop(box)).astype(int)
    blue = (np.abs(drawn - [31, 119, 180]).max(-1) < 40).sum()  # the curve's colour, #1f77b4
    assert blue > 300, f"only {blue} pixels of the kernel curve in the screenshot"
    assert len(np.unique(np.asarray(shot).reshape(-1, 3), axis=0)) > 50  # a rendered page, not a blank one


def test_outer_layers_are_diagnosed_and_mamba2_layers_refused(tmp_path, capsys):
    """A mamba2 layer has no decomposition: no silent figures. Outer deposits have one."""
    model = WaveFieldLM(WaveFieldConfig(vocab_size=300, d_model=16, n_layers=2, n_heads=2, layer_types=["wave-outer", "wave"], wave_deposit="outer"))
    model.save_pretrained(tmp_path / "outer")
    assert main(["diagnose", str(tmp_path / "outer"), "--out", str(tmp_path / "outer-report")]) == 0
    report = json.loads((tmp_path / "outer-report" / "diagnostics.json").read_text())
    assert len(report["field_energy"]) == 2 and len(report["effective_attention"]["maps"]) == 2
    WaveFieldLM(WaveFieldConfig(vocab_size=300, d_model=16, n_layers=2, n_heads=2, layer_types=["wave", "mamba2"], ssm_state=8)).save_pretrained(
        tmp_path / "ssm"
    )
    assert main(["diagnose", str(tmp_path / "ssm"), "--out", str(tmp_path / "report")]) == 2
    assert "this model has mamba2 layers" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_a_normalised_read_out_is_diagnosed_and_a_short_fft_fails_the_verdict(tmp_path):
    """wave_norm=True decomposes too (the norm is a scale of the read). The report's verdict on
    the FFT path comes from the path-agreement check: at FFT length N (circular) it fails."""
    torch.manual_seed(0)
    WaveFieldLM(WaveFieldConfig(vocab_size=256, d_model=16, n_layers=1, n_heads=2, wave_norm=True)).save_pretrained(tmp_path / "norm")
    prompt = "Is't possible?"
    assert main(["diagnose", str(tmp_path / "norm"), "--prompt", prompt]) == 0
    report = diagnose([tmp_path / "norm"], out=tmp_path / "short", prompt=prompt, fft_size=len(prompt))
    assert not report["path_agreement"]["passed"] and report["causality"]["passed"]
    html = (tmp_path / "short" / "report.html").read_text()
    assert re.search(r"Path agreement:[^<]*<b class=\"fail\">FAIL</b>", html)
