"""Streaming a model's blocking iterator from async code without holding the event
loop (:func:`ready_batches`, :func:`coalesced_text`), and the streaming response that
stops the generation and gives the admission place back however it ends."""
from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from contextlib import aclosing
from typing import Any, AsyncIterator, Callable, Iterator, TypeVar

import anyio
from fastapi.responses import StreamingResponse

T = TypeVar("T")
log = logging.getLogger(__name__)


def close_iterator(it: Any) -> None:
    """Close a generator (or anything with ``close``); other iterators are left alone."""
    close = getattr(it, "close", None)
    if close is not None:
        close()


async def ready_batches(items: Iterator[T], min_interval: float = 0.0) -> AsyncIterator[list[T]]:
    """Iterate a blocking iterator from async code, yielding everything it produced since
    the previous yield as one list (never empty).

    One pump thread runs ``items`` and queues each item for the event loop, waking the
    loop only when no wake-up is already on its way; when the consumer is slower than the
    model (many streams, a busy CPU), the pieces that arrived meanwhile come together, so
    one network event (and one thread hop) carries several tokens instead of one per token.

    With ``min_interval`` (seconds) > 0, a batch is taken at most that often (the first
    at once): the server then does its per-event work (JSON, HTTP) once per interval
    rather than once per token, which on a busy CPU is time taken from generation.

    When the consumer stops early (the client went away and the response task is
    cancelled), the pump stops at the next item and closes the iterator in its own
    thread, which stops the model's generation; that wait is shielded from the
    cancellation, so it always completes. An exception raised by ``items`` is raised
    here after the items produced before it.
    """
    loop = asyncio.get_running_loop()
    ready: deque[T] = deque()  # appended by the pump thread, emptied on the loop (deque is thread-safe)
    wake = asyncio.Event()
    finished = asyncio.Event()
    stop = threading.Event()
    failure: list[BaseException] = []
    wake_pending = [False]  # a wake-up is on its way, or the consumer has yet to take `ready`

    def end(error: BaseException | None) -> None:  # on the loop
        if error is not None:
            failure.append(error)
        finished.set()
        wake.set()

    def pump() -> None:  # in the pump thread
        it = iter(items)
        error: BaseException | None = None
        try:
            for item in it:
                if stop.is_set():
                    break
                ready.append(item)
                if not wake_pending[0]:  # one loop wake-up per batch, not one per token
                    wake_pending[0] = True
                    loop.call_soon_threadsafe(wake.set)
        except RuntimeError as exc:
            if not loop.is_closed():
                error = exc
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            error = exc
        finally:
            try:
                close_iterator(it)
            except Exception:  # noqa: BLE001 - closing must not hide the outcome
                log.exception("could not close a stream")
            try:
                loop.call_soon_threadsafe(end, error)
            except RuntimeError:  # the event loop is closed (the server stopped): nobody is waiting
                pass

    threading.Thread(target=pump, name="stream-pump", daemon=True).start()
    try:
        while True:
            await wake.wait()
            wake.clear()
            wake_pending[0] = False  # before taking: an item appended from now on asks for a new wake-up
            if ready:
                batch = [ready.popleft() for _ in range(len(ready))]  # the pump may append meanwhile
                yield batch
                if min_interval > 0 and not finished.is_set():
                    await asyncio.sleep(min_interval)
            if finished.is_set() and not ready:
                if failure:
                    raise failure[0]
                return
    finally:
        stop.set()
        with anyio.CancelScope(shield=True):
            await finished.wait()


async def coalesced_text(pieces: Iterator[str], min_interval: float = 0.0) -> AsyncIterator[str]:
    """The text pieces of a blocking iterator (a model's stream), those that arrived
    together joined into one string (see :func:`ready_batches`)."""
    async with aclosing(ready_batches(pieces, min_interval)) as batches:
        async for batch in batches:
            yield "".join(batch)


class GatedStreamingResponse(StreamingResponse):
    """A streaming response that, however it ends (finished, client gone, error),
    closes its body iterator and then calls ``release`` (the round's ``finish``: the
    generation stopped, the admission place given back)."""

    def __init__(self, content: AsyncIterator[Any], release: Callable[[], None], **kwargs: Any):
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope, receive, send) -> None:  # noqa: D102 - Starlette's ASGI entry point
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                aclose = getattr(self.body_iterator, "aclose", None)
                if aclose is not None:
                    try:
                        await aclose()
                    except Exception:  # noqa: BLE001 - closing must not hide the original outcome
                        log.exception("could not close a streamed response")
            self._release()

