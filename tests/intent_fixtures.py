"""A stand-in chat server on a free loopback port for the intent evaluation tests.

It implements just the two protocols :mod:`llm.intent.predict` speaks, in front of
any :class:`llm.base.ChatModel` (the fine-tuned demo model, or a scripted fake):

* PAI-EAS ChatLLM: ``POST /`` ``{"prompt", "system_prompt", "history", "temperature",
  "max_new_tokens", "use_stream_chat"}`` -> ``{"response", "history"}``;
* OpenAI: ``GET /v1/models``, ``POST /v1/chat/completions``;
* ``POST /echo`` answers ``{"echo": body}`` (JSON in neither protocol).

Every request body is recorded in ``server.requests``.  With ``token`` set, a
request without ``Authorization: <token>`` (PAI) or ``Bearer <token>`` (OpenAI) gets 401.
"""
from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

from llm.base import ChatModel, GenerationParams

MODEL_NAME = "intent-standin"


def _params(temperature: float, max_new_tokens: int) -> GenerationParams:
    if temperature == 0:
        return GenerationParams(max_new_tokens=max_new_tokens, do_sample=False)
    return GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature)


class StandInServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, model: ChatModel, token: str | None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.model = model
        self.token = token
        self.requests: list[tuple[str, dict]] = []
        self.lock = threading.Lock()  # one generation at a time, like the real server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: StandInServer

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self, bearer: bool) -> bool:
        token = self.server.token
        if token is None:
            return True
        return self.headers.get("Authorization", "") == (f"Bearer {token}" if bearer else token)

    def do_GET(self) -> None:
        if self.path != "/v1/models":
            return self._send(404, {"error": "not found"})
        if not self._authorised(bearer=True):
            return self._send(401, {"error": "invalid token"})
        self._send(200, {"object": "list", "data": [{"id": MODEL_NAME, "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        self.server.requests.append((self.path, body))
        if self.path == "/":
            if not self._authorised(bearer=False):
                return self._send(401, {"error": "invalid token"})
            messages = [{"role": "system", "content": body.get("system_prompt", "")}]
            for user, assistant in body.get("history", []):
                messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
            messages.append({"role": "user", "content": body["prompt"]})
            with self.server.lock:
                answer = self.server.model.chat(messages, _params(body.get("temperature", 0.7),
                                                                  body.get("max_new_tokens", 64)))
            history = body.get("history", []) + [[body["prompt"], answer]]
            return self._send(200, {"response": answer, "history": history})
        if self.path == "/v1/chat/completions":
            if not self._authorised(bearer=True):
                return self._send(401, {"error": "invalid token"})
            if body.get("model") != MODEL_NAME:
                return self._send(404, {"error": f"model {body.get('model')!r} not found"})
            with self.server.lock:
                answer = self.server.model.chat(body["messages"], _params(body.get("temperature", 1.0),
                                                                          body.get("max_tokens", 64)))
            return self._send(200, {"object": "chat.completion", "model": MODEL_NAME, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]})
        if self.path == "/echo":  # a JSON endpoint that is neither protocol
            return self._send(200, {"echo": body})
        self._send(404, {"error": "not found"})


@contextmanager
def stand_in_server(model: ChatModel, token: str | None = None) -> Iterator[StandInServer]:
    """Serve ``model`` on a free 127.0.0.1 port for the duration of the ``with`` block."""
    server = StandInServer(model, token)
    thread = threading.Thread(target=server.serve_forever, name="intent-standin", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
