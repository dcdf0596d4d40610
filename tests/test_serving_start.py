"""The start path with the network blocked: the local caches are looked in first, the hub
is probed at most once, then left alone: no retry walls, a handful of warnings."""
from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from llm import hub

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture
def blocked_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Turn the hub back on (conftest switches it off) and block every non-loopback
    connection; returns the list of hosts something tried to reach."""
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "0")  # recorded, so the teardown restores the conftest's value
        monkeypatch.delenv(var)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    attempts: list[str] = []
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOOPBACK:
            attempts.append(str(host))
            raise socket.gaierror(socket.EAI_NONAME, "blocked by the test")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        if isinstance(address, tuple) and address[0] not in LOOPBACK:
            attempts.append(str(address[0]))
            raise OSError("network blocked by the test")
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


def test_a_cached_model_needs_no_network_call(blocked_network: list[str], tmp_path: Path):
    assert hub.settle_offline_mode([str(tmp_path)]) == "cached"
    assert blocked_network == []
    assert not hub.hub_offline(), "the hub is left as it was when nothing is missing"


def test_an_unreachable_hub_is_probed_once_then_switched_off(blocked_network: list[str],
                                                             caplog: pytest.LogCaptureFixture):
    from huggingface_hub import constants

    caplog.set_level(logging.WARNING, logger="llm.hub")
    assert hub.settle_offline_mode(["no-such-org/no-such-model", "other-org/other-model"]) == "unreachable"
    assert len(blocked_network) == 1, blocked_network
    assert hub.hub_offline() and constants.HF_HUB_OFFLINE
    [warning] = [r.getMessage() for r in caplog.records]
    assert "HF_HUB_OFFLINE" in warning and "no-such-org/no-such-model" in warning
    assert hub.settle_offline_mode(["no-such-org/no-such-model"]) == "offline"
    assert len(blocked_network) == 1, "decided once: no second probe"


def test_the_demo_start_makes_one_probe_and_no_retries(blocked_network: list[str], tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture):
    """The whole start path (model, embedding model, knowledge base) of ``python run.py`` with
    no model cache and no network: the demo model, at most five warnings, no hub retries."""
    from webui.settings import Settings
    from webui.webui_server import load_service

    caplog.set_level(logging.INFO)
    service = load_service(Settings(cpu=True, knowledge_dir=tmp_path / "kb", demo_dir=tmp_path / "demo"))
    assert service.model.is_demo
    assert blocked_network == ["huggingface.co"], "only the one probe"
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "Retrying" in m or "thrown while requesting" in m]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 <= len(warnings) <= 5, warnings
    assert not [r for r in caplog.records if r.exc_info], "no stack traces"
