"""The body-read timeout is for the body only: once the whole body is in, a long
answer (a queued or slow stream) is not cut with 408 while it waits for the client."""
from __future__ import annotations

import asyncio

from webui.limits import BodyLimitMiddleware


def _run(read_timeout: float, gap: float, body_parts: list[bytes]) -> list[str]:
    """An app that reads the body, then waits for the disconnect as a streaming response does;
    the client sends ``body_parts`` then, ``gap`` seconds later, disconnects."""
    events: list[str] = []
    incoming: asyncio.Queue = asyncio.Queue()

    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        events.append((await receive())["type"])  # the streaming response's disconnect listener
        await send({"type": "http.response.body", "body": b"done"})

    async def send(message):
        events.append(message["type"])

    async def client():
        for i, part in enumerate(body_parts):
            await incoming.put({"type": "http.request", "body": part, "more_body": i < len(body_parts) - 1})
        await asyncio.sleep(gap)
        await incoming.put({"type": "http.disconnect"})

    async def main():
        middleware = BodyLimitMiddleware(app, max_bytes=1000, read_timeout=read_timeout)
        feeder = asyncio.create_task(client())
        try:
            await middleware({"type": "http", "path": "/", "headers": []}, incoming.get, send)
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion
            events.append(f"raised {type(exc).__name__}: {exc}")
        await feeder

    asyncio.run(main())
    return events


def test_an_answer_longer_than_the_body_timeout_is_not_cut():
    events = _run(read_timeout=0.05, gap=0.3, body_parts=[b'{"prompt":', b' "q"}'])
    assert events == ["http.response.start", "http.disconnect", "http.response.body"], events


def test_a_stalled_body_still_gets_408():
    events: list[str] = []
    incoming: asyncio.Queue = asyncio.Queue()

    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass

    async def send(message):
        events.append(message.get("status", message["type"]))

    async def main():
        await incoming.put({"type": "http.request", "body": b"{", "more_body": True})  # and nothing more
        await BodyLimitMiddleware(app, max_bytes=1000, read_timeout=0.05)(
            {"type": "http", "path": "/", "headers": []}, incoming.get, send)

    asyncio.run(main())
    assert events[0] == 408, events
