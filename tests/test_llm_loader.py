"""llm/loader.py: --model-path handling, the demo fallback, templates, device and dtype."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from llm import DEFAULT_MODEL_PATH, GenerationParams, ModelLoadError, build_demo_model, build_messages, load_chat_model
from llm import loader
from llm.templates import PLAIN_TEMPLATE, template_for

HISTORY = [("first question", "first answer")]


@pytest.fixture(scope="module")
def demo_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_model(tmp_path_factory.getbasetemp() / "llm-demo-model")


@pytest.fixture(scope="module")
def untemplated_path(demo_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the demo model whose tokenizer has no chat template (like a base model)."""
    path = tmp_path_factory.mktemp("untemplated") / "model"
    shutil.copytree(demo_path, path)
    (path / "chat_template.jinja").unlink()
    config = json.loads((path / "tokenizer_config.json").read_text())
    assert "chat_template" not in config
    return path


def test_missing_local_path_names_the_path(tmp_path: Path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError) as info:
        load_chat_model(str(missing), cpu=True)
    assert str(missing) in str(info.value) and "config.json" in str(info.value)


def test_folder_without_a_model_is_a_load_error(tmp_path: Path):
    (tmp_path / "README.md").write_text("not a model")
    with pytest.raises(ModelLoadError) as info:
        load_chat_model(str(tmp_path), cpu=True)
    assert str(tmp_path) in str(info.value)
    assert info.value.__cause__ is not None


def test_uncached_hub_id_fails_fast_offline():
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # set by conftest
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-model"):
        load_chat_model("no-such-org/no-such-model", cpu=True)


def test_no_model_path_falls_back_to_the_demo(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="llm.loader")
    model = load_chat_model(None, cpu=True, demo_dir=tmp_path / "demo")
    assert model.is_demo and model.name == "demo"
    assert (tmp_path / "demo" / "model.safetensors").is_file()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "llm.loader"]
    assert any("demo" in r.getMessage().lower() and "--model-path" in r.getMessage() for r in warnings)
    assert DEFAULT_MODEL_PATH in warnings[0].getMessage()
    assert model.chat(build_messages("hi"), GenerationParams(max_new_tokens=5, do_sample=False))


def test_explicit_demo_path_is_not_flagged_as_demo(demo_path: Path):
    model = load_chat_model(str(demo_path), cpu=True)
    assert model.name == str(demo_path) and not model.is_demo
    assert model.model.device.type == "cpu" and not model.model.training
    assert model.model.dtype == torch.float32


def test_no_template_renders_raw_text(demo_path: Path):
    model = load_chat_model(str(demo_path), cpu=True, use_template=False)
    prompt = model.render_prompt(build_messages("new question", HISTORY, system_prompt="SYSTEM"))
    assert prompt == "first question\nfirst answer\nnew question"
    assert "<|im_start|>" not in prompt
    assert model.chat(build_messages("hi"), GenerationParams(max_new_tokens=5, do_sample=False))


def test_tokenizer_without_template_uses_model_type(untemplated_path: Path):
    model = load_chat_model(str(untemplated_path), cpu=True, model_type="llama2")
    prompt = model.render_prompt(build_messages("question", system_prompt="SYSTEM"))
    assert prompt == "[INST] <<SYS>>\nSYSTEM\n<</SYS>>\n\nquestion [/INST]"
    assert model.chat(build_messages("question"), GenerationParams(max_new_tokens=5, do_sample=False))


def test_tokenizer_without_template_guesses_from_config(untemplated_path: Path):
    model = load_chat_model(str(untemplated_path), cpu=True)  # config.model_type == "qwen2" -> chatml
    assert model.chat_template == template_for("chatml")
    assert model.render_prompt(build_messages("q")) == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"


def test_unknown_family_falls_back_to_plain(untemplated_path: Path, caplog: pytest.LogCaptureFixture):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(untemplated_path)
    assert not tokenizer.chat_template
    caplog.set_level(logging.WARNING, logger="llm.loader")
    assert loader.pick_template(tokenizer, SimpleNamespace(model_type="gpt2"), None) == PLAIN_TEMPLATE
    assert any("plain" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    llama = SimpleNamespace(model_type="llama")
    assert loader.pick_template(tokenizer, llama, None) == template_for("llama2")  # no <|start_header_id|>


def test_own_template_wins_over_model_type(demo_path: Path):
    model = load_chat_model(str(demo_path), cpu=True, model_type="llama2")
    assert model.chat_template is None
    assert "<|im_start|>" in model.render_prompt(build_messages("q"))


def test_unknown_model_type_or_precision_is_rejected(demo_path: Path):
    with pytest.raises(ValueError, match="llama2"):
        load_chat_model(str(demo_path), cpu=True, model_type="gpt5")
    with pytest.raises(ValueError, match="bf16"):
        load_chat_model(str(demo_path), cpu=True, precision="int3")


def test_resolve_dtype(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    assert loader.resolve_dtype("auto", "cpu") == torch.float32
    assert loader.resolve_dtype("fp32", "cuda") == torch.float32
    assert loader.resolve_dtype("BF16", "cpu") == torch.bfloat16
    assert loader.resolve_dtype("fp16", "cuda") == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert loader.resolve_dtype("auto", "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert loader.resolve_dtype("auto", "cuda") == torch.float16
    caplog.set_level(logging.WARNING, logger="llm.loader")
    assert loader.resolve_dtype("fp16", "cpu") == torch.float16
    assert any("fp16" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError) as info:
        loader.resolve_dtype("fp8", "cpu")
    assert all(name in str(info.value) for name in ("auto", "fp32", "fp16", "bf16"))


def test_resolve_device(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    assert loader.resolve_device(cpu=True) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert loader.resolve_device(cpu=False) == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    caplog.set_level(logging.WARNING, logger="llm.loader")
    assert loader.resolve_device(cpu=False) == "cpu"
    assert any("GPU" in r.getMessage() for r in caplog.records)


def test_bf16_load_generates(demo_path: Path):
    model = load_chat_model(str(demo_path), cpu=True, precision="bf16")
    assert model.model.dtype == torch.bfloat16
    assert model.chat(build_messages("你好"), GenerationParams(max_new_tokens=5, do_sample=False))


def test_cached_default_model_loads_offline(demo_path: Path, tmp_path: Path):
    """No --model-path and DEFAULT_MODEL_PATH in the HF cache: it loads (no demo), without network.

    Runs in a subprocess because huggingface_hub reads HF_HOME when it is imported."""
    import subprocess
    import sys

    repo = tmp_path / "hf" / "hub" / ("models--" + DEFAULT_MODEL_PATH.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(demo_path, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = (
        "from llm import load_chat_model\n"
        f"m = load_chat_model(None, cpu=True, demo_dir={str(tmp_path / 'demo')!r})\n"
        "print(m.name, m.is_demo)\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [DEFAULT_MODEL_PATH, "False"]
    assert not (tmp_path / "demo").exists()
