"""Shared fixtures. No test makes a network call outside loopback: the hub is
switched off here, before anything imports transformers or huggingface_hub."""
from __future__ import annotations

import time

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path
from typing import Iterator, Sequence

import pytest

from llm.base import ChatModel, GenerationParams, Message

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"


@pytest.fixture(scope="session")
def corpus() -> Path:
    """``../shared/corpus`` (real documents); tests that need it skip, loudly, without it."""
    if not CORPUS.is_dir():
        pytest.skip(f"real corpus not found at {CORPUS}: these tests need ../shared/corpus beside the checkout")
    return CORPUS


def uploaded(paths: Sequence[str | Path]) -> list[str]:
    """Copy each file into Gradio's upload folder the way the file picker does
    (``<upload folder>/<random hex>/<name>``) and return the copies' paths: the page's
    ingest handler accepts only files Gradio itself received (issue 16, item 1)."""
    import shutil
    import uuid

    import gradio as gr

    folder = Path(gr.utils.get_upload_folder())
    copies = []
    for path in paths:
        target = folder / uuid.uuid4().hex / Path(path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
        copies.append(str(target))
    return copies


class FakeChatModel(ChatModel):
    """A scripted chat model: answers with a fixed reply, word by word, and
    records every conversation it was given (``self.calls``)."""

    name = "fake"

    def __init__(self, reply: str = "This is a scripted answer.", fail_after: int | None = None,
                 delay: float = 0.0):
        self.reply = reply
        self.fail_after = fail_after
        self.delay = delay  # seconds before each word after the first (a paced model)
        self.calls: list[tuple[list[Message], GenerationParams]] = []

    def stream(self, messages: Sequence[Message], params: GenerationParams) -> Iterator[str]:
        self.calls.append((list(messages), params))
        for i, word in enumerate(self.reply.split(" ")):
            if self.fail_after is not None and i >= self.fail_after:
                raise RuntimeError("scripted failure")
            if i and self.delay:
                time.sleep(self.delay)
            yield word if i == 0 else " " + word


@pytest.fixture
def fake_model() -> FakeChatModel:
    return FakeChatModel()


@pytest.fixture(scope="session")
def embedder():
    """The real bundled all-MiniLM-L6-v2 embedding model, loaded once per session."""
    from .rag_fixtures import bundled_embedder

    return bundled_embedder()


@pytest.fixture
def server(tmp_path):
    """Start the real server: ``server("--flag", ...)`` -> :class:`tests.server_utils.Server`
    (call ``.wait()`` for it to come up); every one started is stopped afterwards."""
    from .server_utils import Server

    started = []

    def start(*args: str, script: str = "run.py", env: dict | None = None) -> Server:
        srv = Server(tmp_path, *args, script=script, env=env)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        if srv.proc.poll() is None:
            srv.stop()


@pytest.fixture(scope="module", params=["faiss", "milvus"])
def vector_store(request):
    """The vector-store backend (:class:`tests.rag_fixtures.StoreBackend`): each test that
    takes it runs on FAISS and on Milvus Lite (in process; skipped where ``milvus-lite`` is
    missing). Module-scoped, so a module's knowledge bases built once serve all its tests on
    one backend before the next."""
    from .rag_fixtures import StoreBackend

    if request.param == "milvus":
        pytest.importorskip("milvus_lite", reason="pip install milvus-lite (a dependency)")
    return StoreBackend(request.param)
