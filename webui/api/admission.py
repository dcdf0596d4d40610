"""Admission: how many generation requests (:class:`AdmissionGate`) and retrieval jobs
(:class:`WorkLimiter`) the server takes at once, refusing the rest with 503 and
``Retry-After``; and the FastAPI dependencies that read the app's state."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from fastapi import Request

from ..services import ChatService
from .errors import ApiError

#: Seconds a client refused by a full queue is told to wait (``Retry-After``).
RETRY_AFTER_S = 5


class AdmissionGate:
    """At most ``limit`` generation requests in flight (running or waiting for the
    model) per server; one more is refused at once with 503 and ``Retry-After``
    rather than piling up (``--max-queue``).  Thread-safe.

    Args:
        limit: most requests admitted at once (>= 1).
        retry_after: seconds suggested to a refused client.
    """

    def __init__(self, limit: int, retry_after: int = RETRY_AFTER_S):
        if limit < 1:
            raise ValueError(f"the queue limit must be >= 1, got {limit}")
        self.limit = limit
        self.retry_after = retry_after
        self.active = 0
        self.refused = 0
        self._lock = threading.Lock()

    def enter(self) -> Callable[[], None]:
        """Take a place; returns the function that gives it back (idempotent).

        Raises:
            ApiError: 503 ``server_busy`` with ``Retry-After`` when ``limit`` requests are in flight.
        """
        with self._lock:
            if self.active >= self.limit:
                self.refused += 1
                raise ApiError(503, f"the server is busy: {self.limit} generation requests are already queued or "
                                    f"running (--max-queue); retry in {self.retry_after} s",
                               type="server_error", code="server_busy",
                               headers={"Retry-After": str(self.retry_after)})
            self.active += 1
        released = threading.Event()

        def leave() -> None:
            with self._lock:
                if not released.is_set():
                    released.set()
                    self.active -= 1

        return leave

    def stats(self) -> dict[str, int]:
        """``{"active", "max_queue", "refused"}`` for ``/health``."""
        with self._lock:
            return {"active": self.active, "max_queue": self.limit, "refused": self.refused}


class WorkLimiter:
    """At most ``running`` retrieval jobs (searches, uploads being embedded) run at once,
    at most ``waiting`` more wait for a turn; beyond that 503 with ``Retry-After``. Keeps
    many search or upload clients (jieba and the embedder hold the GIL) from starving
    generation. Thread-safe; :meth:`slot` blocks, so call it from a worker thread.

    Args:
        running: jobs at once (>= 1).
        waiting: most jobs admitted beyond ``running`` (>= 1), as ``--max-queue``.
    """

    def __init__(self, running: int, waiting: int):
        if running < 1:
            raise ValueError(f"running must be >= 1, got {running}")
        self.gate = AdmissionGate(running + waiting)
        self._turns = threading.BoundedSemaphore(running)

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Wait for a turn and hold it.

        Raises:
            ApiError: 503 ``server_busy`` when ``running + waiting`` jobs are in already.
        """
        leave = self.gate.enter()
        try:
            with self._turns:
                yield
        finally:
            leave()


def get_service(request: Request) -> ChatService:
    """FastAPI dependency: the :class:`ChatService` built at start-up (``app.state.service``)."""
    return request.app.state.service


def get_gate(request: Request) -> AdmissionGate:
    """FastAPI dependency: the app's generation :class:`AdmissionGate` (``app.state.gate``)."""
    return request.app.state.gate


def get_limiter(request: Request) -> WorkLimiter:
    """FastAPI dependency: the app's retrieval :class:`WorkLimiter` (``app.state.retrieval``)."""
    return request.app.state.retrieval
