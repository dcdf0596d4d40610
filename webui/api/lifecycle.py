"""The one lifecycle of a generation request, whatever its protocol (PAI-EAS over HTTP or
WebSocket, OpenAI):

1. admission: a place at the :class:`~webui.api.admission.AdmissionGate` (503 with
   ``Retry-After`` when ``--max-queue`` requests are in flight);
2. the protocol's ``begin`` runs off the event loop (retrieval, prompt fitting, starting the
   model) and gives a :class:`Round`; what it raises becomes an API error by
   :data:`~webui.api.errors.ERROR_TABLE`;
3. the answer is streamed (:func:`frames`: the text that arrived since the previous frame, at
   most one frame per ``--stream-interval-ms``) or collected (:func:`collect`);
4. a client that goes away stops the generation at once (a closed stream, a disconnected
   HTTP request, a WebSocket closed mid-answer: :func:`unless_gone`);
5. the finished round is exported (``--export-history-path``), off the event loop, before the
   last frame or the reply goes out; an unfinished round never is;
6. a failure after the status went out is reported in-band, as the protocol's last frames.

A protocol brings only its :class:`Encoder` (the frames and the reply on its wire) and the
``begin`` that starts its generation.
"""
from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Coroutine, Generic, Iterator, TypeVar

from fastapi import Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from llm.base import Generation

from ..services import ChatService
from .admission import AdmissionGate
from .errors import ApiError, api_errors, generation_failed
from .protocol import Source, Usage
from .streaming import GatedStreamingResponse, close_iterator, coalesced_text

F = TypeVar("F")
T = TypeVar("T")
log = logging.getLogger(__name__)

#: What a non-streamed request whose client went away gets (nobody reads it; 499 as nginx logs it).
CLIENT_GONE = Response(status_code=499)


@dataclass
class Round:
    """One question being answered, as a protocol's ``begin`` returns it.

    Attributes:
        pieces: the answer's text pieces, a blocking iterator: the model's ``generation``, or
            a chain in front of it (a notice), or canned text.
        generation: the model's :class:`~llm.base.Generation` behind ``pieces`` (its
            ``finish_reason`` and ``usage`` once ``pieces`` ran out); None when the model is
            not called.
        channel: the export's channel (``pai``, ``websocket``, ``openai``).
        prompt: the user's question, as exported.
        history: the earlier rounds as ``(user, assistant)`` pairs, as exported.
        system_prompt: the request's system prompt (None: the server's).
        sources: the retrieved chunks the answer draws on; None when nothing was retrieved.
    """

    pieces: Iterator[str]
    generation: Generation | None
    channel: str
    prompt: str
    history: list[tuple[str, str]]
    system_prompt: str | None = None
    sources: list[Source] | None = None

    def close(self) -> None:
        """Stop the generation (idempotent)."""
        close_iterator(self.pieces)
        close_iterator(self.generation)  # the same, when ``pieces`` is a chain in front of it

    def finish_reason(self) -> str:
        """How the model stopped, on the wire: ``length`` (cut at ``max_new_tokens``) or ``stop``."""
        return "length" if self.generation is not None and self.generation.finish_reason == "length" else "stop"

    def usage(self) -> Usage | None:
        """The model's own token counts (:meth:`llm.base.Generation.usage`); None when unknown."""
        usage = self.generation.usage() if self.generation is not None else None
        if usage is None:
            return None
        return Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                     total_tokens=usage.total_tokens)

    def export(self, service: ChatService, answer: str) -> None:
        """Record the finished round (:meth:`ChatService.record_round`; blocking: it fsyncs)
        with the model's ``finish_reason`` and ``usage``, and the sources when there are any."""
        extra: dict[str, Any] = {}
        if self.sources is not None:
            extra["sources"] = [s.model_dump() for s in self.sources]
        if self.generation is not None:
            usage = self.generation.usage()
            extra["finish_reason"] = self.generation.finish_reason
            extra["usage"] = None if usage is None else {"prompt_tokens": usage.prompt_tokens,
                                                         "completion_tokens": usage.completion_tokens}
        service.record_round(self.channel, self.prompt, answer, self.history, self.system_prompt, **extra)

    def text(self) -> Iterator[str]:
        """``pieces``, closing the round when they run out or when the iterator is closed
        (in the thread that reads it, see :func:`~webui.api.streaming.ready_batches`)."""
        try:
            yield from self.pieces
        finally:
            self.close()


class Encoder(ABC, Generic[F]):
    """How one protocol puts an answer on its wire. A frame (``F``) is what it sends at once:
    a reply dict, a server-sent event. Make one per request: it may keep state (what was sent)."""

    #: ``Content-Type`` and extra headers of a streamed HTTP reply.
    media_type = "text/plain; charset=utf-8"
    headers: dict[str, str] = {}

    def opening(self, round: Round) -> list[F]:
        """Frames sent before any text (none by default)."""
        return []

    @abstractmethod
    def delta(self, round: Round, text: str, answer: str) -> F:
        """The frame for ``text``, what the model added since the previous frame (``answer``:
        the whole answer so far)."""

    @abstractmethod
    def closing(self, round: Round, answer: str) -> list[F]:
        """The last frames of a finished answer (``finish_reason``, ``usage``, an end marker)."""

    @abstractmethod
    def failure(self, round: Round, error: ApiError) -> list[F]:
        """The last frames of an answer that failed midway (``error.message`` says how)."""

    @abstractmethod
    def reply(self, round: Round, answer: str) -> Any:
        """The whole reply of a non-streamed request: a JSON-able dict or pydantic model."""

    def wire(self, frame: F) -> str | bytes:
        """A frame as a streamed HTTP reply sends it (the frame itself by default)."""
        return frame  # type: ignore[return-value]


async def start(service: ChatService, gate: AdmissionGate, begin: Callable[[], Round],
                **fields: str) -> tuple[Round, Callable[[], None]]:
    """Admit a request and start its generation in a worker thread.

    Args:
        begin: starts the generation (blocking: retrieval, tokenising, the model's prefill).
        fields: this protocol's field names for :func:`~webui.api.errors.api_errors`' roles.

    Returns:
        The round and ``finish``, to call once the answer is sent, however it ends (finished,
        failed, client gone, never read): it stops the generation if it still runs and gives
        the admission place back.

    Raises:
        ApiError: 503 when the queue is full; what ``begin`` raised, mapped by the error table
            (500 ``server_error`` when no row maps it).
    """
    release = gate.enter()
    try:
        with api_errors(**fields):
            round = await run_in_threadpool(begin)
    except ApiError:
        release()
        raise
    except Exception as exc:  # no row of the error table: the model or the service failed
        release()
        raise generation_failed(exc) from None
    except BaseException:
        release()
        raise

    def finish() -> None:
        try:
            round.close()  # a no-op unless nobody read the answer (the reader closes it)
        except Exception:  # noqa: BLE001 - giving the place back must not be stopped
            log.exception("could not stop a generation")
        finally:
            release()

    return round, finish


async def frames(service: ChatService, round: Round, encoder: Encoder[F]) -> AsyncIterator[F]:
    """The streamed answer as the encoder's frames: the opening frames, one frame per batch of
    text (the pieces that arrived together, at most one per ``--stream-interval-ms``, the first at
    once), then the round is exported and the closing frames follow. A failure midway ends the
    stream with the encoder's failure frames (the round is not exported). Closing this iterator
    (the client went away) stops the generation; call the round's ``finish`` (:func:`start`)
    once it is closed."""
    for frame in encoder.opening(round):
        yield frame
    answer = ""
    try:
        async with aclosing(coalesced_text(round.text(), service.settings.stream_interval)) as texts:
            async for text in texts:
                answer += text
                yield encoder.delta(round, text, answer)
        await run_in_threadpool(round.export, service, answer)  # the export's fsync: off the event loop
    except Exception as exc:  # noqa: BLE001 - the status is sent already: report in-band
        for frame in encoder.failure(round, generation_failed(exc)):
            yield frame
        return
    for frame in encoder.closing(round, answer):
        yield frame


async def collect(service: ChatService, round: Round,
                  gone: Callable[[], Awaitable[bool]] | None = None) -> str | None:
    """The whole answer of a non-streamed request, generated in a worker thread, then exported.

    Args:
        gone: tells whether the client went away (e.g. ``Request.is_disconnected``), asked after
            each batch of text.

    Returns:
        The answer; None when the client went away: the generation is stopped at once and the
        round is not exported.

    Raises:
        ApiError: 500 when the model fails (:func:`~webui.api.errors.generation_failed`).
    """
    text: list[str] = []
    try:
        async with aclosing(coalesced_text(round.text(), service.settings.stream_interval)) as stream:
            async for piece in stream:
                text.append(piece)
                if gone is not None and await gone():
                    log.info("client went away: stopped generating after %d character(s)", sum(map(len, text)))
                    return None
    except Exception as exc:  # noqa: BLE001 - the model failed
        raise generation_failed(exc) from None
    answer = "".join(text)
    await run_in_threadpool(round.export, service, answer)  # the export's fsync: off the event loop
    return answer


async def _wired(frames: AsyncIterator[F], encoder: Encoder[F]) -> AsyncIterator[str | bytes]:
    async with aclosing(frames) as each:  # closing this closes ``frames`` (stops the model)
        async for frame in each:
            yield encoder.wire(frame)


async def serve_http(request: Request, begin: Callable[[], Round], encoder: Encoder, *, stream: bool,
                     **fields: str) -> Any:
    """The whole lifecycle of one HTTP generation request: admit it, start it (:func:`start`),
    then a streamed reply (the encoder's frames, :func:`frames`) or the whole reply
    (:meth:`Encoder.reply`, after :func:`collect`; :data:`CLIENT_GONE` when the client left).
    The admission place is held until the reply is sent, however it ends.

    Raises:
        ApiError: see :func:`start`; 500 when a non-streamed generation fails.
    """
    service: ChatService = request.app.state.service
    round, finish = await start(service, request.app.state.gate, begin, **fields)
    try:
        if stream:
            response = GatedStreamingResponse(_wired(frames(service, round, encoder), encoder), finish,
                                              media_type=encoder.media_type, headers=encoder.headers)
            finish = None  # the response finishes the round when it ends
            return response
        answer = await collect(service, round, request.is_disconnected)
        return CLIENT_GONE if answer is None else encoder.reply(round, answer)
    finally:
        if finish is not None:
            finish()


async def unless_gone(work: Coroutine[Any, Any, T], gone: asyncio.Future) -> T | None:
    """Run ``work`` (sending an answer) unless the client goes away first (``gone`` finishes,
    e.g. the task reading a WebSocket's frames): then ``work`` is cancelled, which stops the
    generation, and None is returned."""
    task = asyncio.ensure_future(work)
    await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        return task.result()
    log.info("client went away mid-answer: generation stopped")
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping; the client is gone
        pass
    return None
