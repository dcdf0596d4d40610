"""Flags -> Settings: PAI-EAS flag names, both spellings, range checks."""
from __future__ import annotations

from pathlib import Path

import pytest

from webui.settings import Settings, parse_settings


def test_defaults_bind_localhost_port_8000():
    s = parse_settings([])
    assert s.host == "127.0.0.1"
    assert s.port == 8000
    assert s.model_path is None
    assert s.cpu is False


@pytest.mark.parametrize("flag, attr, value, expected", [
    ("--max_round", "max_round", "2", 2),
    ("--max-round", "max_round", "3", 3),
    ("--top_k", "top_k", "7", 7),
    ("--top-k", "top_k", "8", 8),
    ("--top_p", "top_p", "0.5", 0.5),
    ("--max-new-tokens", "max_new_tokens", "64", 64),
    ("--max_new_tokens", "max_new_tokens", "65", 65),
    ("--model-path", "model_path", "/models/qwen", "/models/qwen"),
    ("--model_path", "model_path", "/models/qwen", "/models/qwen"),
    ("--export-history-path", "export_history_path", "/tmp/h", "/tmp/h"),
    ("--export-interval", "export_interval", "60", 60),
    ("--log-level", "log_level", "debug", "DEBUG"),
    ("--knowledge-dir", "knowledge_dir", "/tmp/kb", Path("/tmp/kb")),
    ("--model-type", "model_type", "llama2", "llama2"),
    ("--precision", "precision", "bf16", "bf16"),
])
def test_every_pai_eas_flag_in_both_spellings(flag, attr, value, expected):
    s = parse_settings([f"{flag}={value}"])
    assert getattr(s, attr) == expected


@pytest.mark.parametrize("flag", ["--cpu", "--api-only", "--no-api", "--no-template", "--no_template", "--api_only"])
def test_boolean_flags(flag):
    s = parse_settings([flag])
    assert getattr(s, flag.lstrip("-").replace("-", "_")) is True


@pytest.mark.parametrize("argv, needle", [
    (["--top_p=1.5"], "--top_p must be in (0, 1]"),
    (["--temperature=-1"], "--temperature must be >= 0"),
    (["--port=0"], "--port must be in 1..65535"),
    (["--chunk-size=100", "--chunk-overlap=100"], "--chunk-overlap (100) must be >= 0 and below --chunk-size (100)"),
    (["--api-only", "--no-api"], "exclude each other"),
    (["--precision=int3"], "invalid choice"),
    (["--auth-file=/nonexistent/users.json"], "create it with 'python -m webui users add NAME --auth-file"),
])
def test_bad_values_exit_with_a_message_naming_the_flag(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_settings(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_api_token_and_upload_limit_flags():
    s = parse_settings(["--api-token=s3cret", "--max_upload_mb=5"])
    assert s.api_token == "s3cret" and s.max_upload_mb == 5


def test_generation_params_from_settings():
    p = Settings(temperature=0, top_k=5).generation_params(max_new_tokens=9)
    assert p.greedy and p.top_k == 5 and p.max_new_tokens == 9
