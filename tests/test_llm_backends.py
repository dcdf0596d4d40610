"""Backends are registered (llm.backends), not chosen by if/else: ``--llm-backend``'s
choices and each backend's flags come from the registry, and a new backend is one
``Backend`` object."""
from __future__ import annotations

import pytest

from llm import backends
from llm.base import GenerationParams
from llm.backends import Backend, Flag, get_backend, load_chat_model_for
from webui.settings import build_parser, parse_settings

from .conftest import FakeChatModel


def _choices(flag: str) -> list[str]:
    [action] = [a for a in build_parser()._actions if flag in a.option_strings]
    return list(action.choices)


def test_the_builtin_backends_are_the_choices():
    assert list(backends.backends()) == ["transformers", "openai"]
    assert _choices("--llm-backend") == ["transformers", "openai"]
    assert "--llm-base-url" in {o for f in get_backend("openai").flags for o in ("--" + f.name,)}


def test_a_backend_checks_its_own_flags(capsys):
    with pytest.raises(SystemExit):
        parse_settings(["--llm-backend", "openai"])
    assert "--llm-base-url" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_settings(["--kv-cache-memory", "2"])
    assert "--kv-cache-memory" in capsys.readouterr().err


def test_a_new_backend_is_one_registration(monkeypatch: pytest.MonkeyPatch):
    made = []

    def load(settings):
        made.append(settings.backend_options)
        return FakeChatModel("from the new backend")

    fake = Backend("fake", "a scripted model", load, flags=(Flag("fake-speed", dict(type=int, default=1)),))
    monkeypatch.setattr(backends, "_REGISTRY", {**backends.backends(), "fake": fake})
    assert "fake" in _choices("--llm-backend")
    settings = parse_settings(["--llm-backend", "fake", "--fake-speed", "3"])
    model = load_chat_model_for(settings)
    assert made == [{"fake_speed": 3}] and model.chat([{"role": "user", "content": "q"}], GenerationParams()) \
        == "from the new backend"


def test_an_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="transformers, openai"):
        get_backend("llama.cpp")
