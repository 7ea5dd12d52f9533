"""Bad command-line input is refused before any model is loaded, with a message that says why."""

import json
import urllib.error

import numpy as np
import pytest
import torch

import dhsa.models
from dhsa.cli import main

gguf = pytest.importorskip("gguf")
pytest.importorskip("transformers")


@pytest.fixture
def no_load(monkeypatch):
    """Fail the test if a model load is attempted."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(dhsa.models, "load_model", refuse)


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompt.txt"
    path.write_text("Hello there.", encoding="utf-8")
    return path


@pytest.fixture
def haystack(tmp_path):
    path = tmp_path / "essays.json"
    path.write_text(json.dumps({"text": "One sentence here. Another one there. " * 50}))
    return path


def tiny_gguf(path, context=1024):
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(context)
    writer.add_tensor("weight", np.arange(4096, dtype=np.float32).reshape(64, 64))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def generate(model, prompt, *extra):
    return main(["generate", "--model", str(model), "--prompt-file", str(prompt), *extra])


def niah(model, haystack, *extra):
    args = ["niah", "--model", str(model), "--haystack", str(haystack), "--no-progress"]
    return main(args + ["--out", str(haystack.parent / "n.jsonl"), *extra])


def test_unknown_model_key_lists_the_known_keys(no_load, prompt_file, capsys):
    assert generate("nosuchmodel", prompt_file) == 2
    err = capsys.readouterr().err
    assert "unknown model 'nosuchmodel'" in err
    assert all(key in err for key in dhsa.models.MODEL_SPECS)


def test_hub_id_when_offline_is_a_clear_error_at_once(monkeypatch, prompt_file, capsys):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(
        "transformers.AutoTokenizer.from_pretrained",
        lambda *a, **k: pytest.fail("transformers was asked to download"),
    )
    assert generate("some-owner/some-model-not-cached", prompt_file) == 2
    err = capsys.readouterr().err
    assert "cannot load Hub model 'some-owner/some-model-not-cached'" in err
    assert "is not reachable" in err and "smollm2" in err


def test_gguf_files_are_checked_before_loading(no_load, tmp_path, haystack, capsys):
    good = tiny_gguf(tmp_path / "tiny.gguf")
    assert dhsa.models.context_length(str(good)) == 1024
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[:-100])
    assert niah(truncated, haystack) == 2
    assert f"{truncated} is truncated" in capsys.readouterr().err
    foreign = tmp_path / "foreign.gguf"
    foreign.write_bytes(b"PK\x03\x04" + bytes(200))
    assert niah(foreign, haystack) == 2
    assert "is not a GGUF file: it starts with b'PK\\x03\\x04'" in capsys.readouterr().err
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(good.read_bytes()[:12])
    assert niah(header_only, haystack) == 2
    assert f"{header_only} is truncated or damaged" in capsys.readouterr().err


def test_lengths_past_the_declared_context_are_refused(no_load, tmp_path, haystack, capsys):
    model = tiny_gguf(tmp_path / "tiny.gguf", context=1024)
    assert niah(model, haystack, "--lengths", "512,2k") == 2
    assert "length 2048 exceeds the context of" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "dense,foo"], "unknown method 'foo'"),
        (["--budgets", "0"], "bad budget '0'"),
        (["--budgets", "100"], "budget=100 is smaller than the fixed part"),
        (["--device", "tpu"], "bad --device 'tpu': use cpu or cuda"),
        (["--device", "meta"], "--device must be cpu or cuda, got 'meta'"),
    ],
)
def test_niah_options_are_checked_before_loading(
    no_load, tmp_path, haystack, capsys, extra, message
):
    model = tiny_gguf(tmp_path / "tiny.gguf")
    assert niah(model, haystack, "--lengths", "512", *extra) == 2
    assert message in capsys.readouterr().err


def test_generate_checks_method_and_device_before_loading(no_load, tmp_path, prompt_file, capsys):
    model = tiny_gguf(tmp_path / "tiny.gguf")
    assert generate(model, prompt_file, "--method", "foo") == 2
    assert "unknown method 'foo'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert generate(model, prompt_file, "--device", "cuda") == 2
        assert "--device cuda requested but CUDA is not available" in capsys.readouterr().err
