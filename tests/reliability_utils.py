"""Helpers for the reliability, fuzz, load and browser tests (not a test module itself).

* :func:`make_service` / :func:`make_client`: the real app in process around any
  chat model (a scripted fake or the real demo model) and the fast
  :class:`~tests.rag_fixtures.HashEmbedder`;
* :class:`InProcessServer`: that app served by a real uvicorn on a loopback port
  in a thread, for tests that need real TCP (client disconnects) *and* a hook
  into the model (counting its forward passes);
* :class:`BlockingModel`: a fake model whose answers wait for a signal, to fill
  the admission queue deterministically;
* builders for hostile uploads (a raw multipart body, a .docx zip bomb).
"""
from __future__ import annotations

import io
import threading
import time
import zipfile
from pathlib import Path
from typing import Iterator, Sequence

from fastapi.testclient import TestClient

from llm.base import ChatModel, GenerationParams, Message
from rag.registry import KnowledgeBaseRegistry
from webui.app import create_app
from webui.export import HistoryExporter
from webui.services import ChatService
from webui.settings import Settings

from .rag_fixtures import HashEmbedder
from .server_utils import free_port


def make_service(model: ChatModel, tmp: Path, embedder=None, **settings) -> ChatService:
    """A :class:`ChatService` over ``model`` with knowledge bases under ``tmp/knowledge``
    (and the export under ``settings["export_history_path"]`` when given)."""
    s = Settings(knowledge_dir=tmp / "knowledge", **settings)
    service = ChatService(model, KnowledgeBaseRegistry(s.knowledge_dir, embedder or HashEmbedder()), s)
    if s.export_history_path:
        service.exporter = HistoryExporter(s.export_history_path, s.export_interval)
    return service


def make_client(model: ChatModel, tmp: Path, embedder=None, **settings) -> TestClient:
    """The real app (API and page unless ``api_only``) in process, around ``model``.
    Server errors come back as 500 responses (not raised), as a client would see them."""
    return TestClient(create_app(make_service(model, tmp, embedder, **settings)), raise_server_exceptions=False)


class InProcessServer:
    """``create_app(service)`` under a real uvicorn on a free loopback port, in a thread.

    Use as a context manager; ``url`` is ``http://127.0.0.1:<port>``.
    """

    def __init__(self, service: ChatService):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(service)
        self._server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                                     log_level="warning", timeout_graceful_shutdown=1))
        self._thread = threading.Thread(target=self._server.run, name="uvicorn-test", daemon=True)

    def __enter__(self) -> "InProcessServer":
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise AssertionError("the in-process server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(30)


class BlockingModel(ChatModel):
    """A fake model that answers ``reply`` only once :attr:`release` is set
    (bounded: it gives up after ``timeout`` seconds), counting streams started."""

    name = "blocking"

    def __init__(self, reply: str = "done", timeout: float = 60):
        self.reply = reply
        self.timeout = timeout
        self.release = threading.Event()
        self.started = 0
        self._lock = threading.Lock()

    def stream(self, messages: Sequence[Message], params: GenerationParams) -> Iterator[str]:
        with self._lock:
            self.started += 1
        if not self.release.wait(self.timeout):
            raise RuntimeError("BlockingModel was never released")
        yield self.reply


def wait_until(condition, timeout: float = 30, what: str = "condition") -> None:
    """Poll ``condition()`` every 20 ms until true; AssertionError after ``timeout`` s
    (a bound on waiting, not a claim about speed)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def raw_multipart(parts: Sequence[tuple[bytes, bytes]], field: str = "files") -> tuple[bytes, str]:
    """A multipart body whose file names are sent byte for byte (NULs, slashes and
    all; httpx would percent-encode them). Returns (body, content type)."""
    boundary = b"chatllm-test-boundary-7f3a"
    out = io.BytesIO()
    for name, data in parts:
        out.write(b"--" + boundary + b"\r\n")
        out.write(b'Content-Disposition: form-data; name="' + field.encode() + b'"; filename="' + name + b'"\r\n')
        out.write(b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    out.write(b"--" + boundary + b"--\r\n")
    return out.getvalue(), f"multipart/form-data; boundary={boundary.decode()}"


def docx_zip_bomb(template: Path, expanded_mb: int = 50) -> bytes:
    """``template`` (a real .docx) with ``word/document.xml`` padded by ``expanded_mb``
    MB of empty paragraphs: a ~100 KB file that inflates ~500-fold."""
    pad = b"<w:p/>" * (expanded_mb * 1024 * 1024 // 6)
    out = io.BytesIO()
    with zipfile.ZipFile(template) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "word/document.xml":
                data = data.replace(b"</w:body>", pad + b"</w:body>")
            dst.writestr(item, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return out.getvalue()


def demo_model(tmp_path_factory):
    """The real tiny demo model (transformers, CPU), built once per session under the
    base temp folder (the same place tests/test_llm_stream.py builds it)."""
    from llm import build_demo_model, load_chat_model

    path = build_demo_model(tmp_path_factory.getbasetemp() / "llm-demo-model")
    return load_chat_model(str(path), cpu=True)
