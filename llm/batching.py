"""Many concurrent chats on one model: transformers' continuous batching.

Plain ``model.generate`` serves one request at a time (:class:`~llm.hf.HFChatModel`
holds a lock).  :class:`BatchedHFChatModel` instead hands every request to
transformers' continuous-batching manager (``model.init_continuous_batching``,
transformers >= 5): a background loop that puts the running requests' next
tokens into one forward pass per step, with a paged KV cache sized from what the
server needs (:mod:`llm.kv_budget`) or, when asked, from a share of the device's
memory.  Each request keeps its own sampling parameters (the manager's
per-request logits processors), its own stop strings and max_new_tokens, and
streams its own tokens; the model's repetition penalty, which transformers'
manager lacks, is added per request (:mod:`llm.batch_processors`).  With
``plain_when_alone`` (``--batching auto`` on a CPU) a request that finds no other
running is served by plain ``generate`` on the same weights, and moves into the
manager at its next token when another comes; the manager's loop then runs only while
requests are batched.

Why the library and not a scheduler of ours: it streams per request
(``streaming=True``), cancels per request, and takes per-request temperature,
top_k and top_p, which is everything the page and the API need.  What it does
not route well to threads is the output of many requests at once
(``request_id_iter`` re-queues other requests' results; ``register_result_handler``
needs an asyncio loop), so the manager's output router is replaced by
:class:`_QueueRouter`, which puts each output straight on its request's own queue
from the generation loop: no router thread, one thread hand-off per token.  A
reader that falls behind takes every output waiting for it at once and sends the
newest (each carries all the request's tokens so far), so under load the stream
carries several tokens per piece instead of queueing one wake-up per token.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from typing import Any, Iterator

import torch
from transformers import GenerationConfig
from transformers.generation.continuous_batching.continuous_api import OutputRouter

from llm import batch_processors
from llm.base import Generation, GenerationError, GenerationParams
from llm.hf import HFChatModel, IncrementalDecoder, StopStrings, finish_reason_of
from llm.kv_budget import KVBudget, device_memory, kv_cache_budget

logger = logging.getLogger(__name__)

#: Manager-level sampling values. Per-request values replace them, but transformers only
#: builds a per-request processor for a parameter whose manager value is "active"
#: (temperature != 1, top_k set, top_p < 1): see cb_logits_processors.py.
_BASE_SAMPLING = dict(do_sample=True, temperature=0.7, top_k=50, top_p=0.95)


#: Seconds between a waiting reader's checks that the generation loop is still alive.
_HEALTH_CHECK_S = 0.5

#: With ``plain_when_alone``: seconds the generation loop stays up after its last batched request.
#: A restart builds the batch processor and its KV cache again, which adds ~60 ms to the first token
#: of the request that starts a burst (demo model, 2-core CPU; 10-20 ms with the loop running), so
#: a few seconds keep steady traffic from restarting it while a lone chat afterwards runs unthrottled.
IDLE_STOP_S = 5.0


class _QueueRouter(OutputRouter):
    """transformers' ``OutputRouter`` that delivers each request's outputs to its own
    ``queue.Queue`` (``queues[request_id]``), in the generation loop's thread.

    Outputs of a request with no queue (cancelled, already gone) went to the manager's shared
    ``output_queue``, which nothing reads: :meth:`deliver` drops them instead so it cannot grow.
    ``last_delivery`` tells a request still waiting for a free part of the KV cache that the
    loop is busy with others, not hung.
    """

    def __init__(self, queues: dict[str, queue.Queue]):
        super().__init__()
        self._queues = queues
        self.last_delivery = time.monotonic()  # when the loop last produced an output, for any request

    def deliver(self, output: Any) -> None:
        self.last_delivery = time.monotonic()
        q = self._queues.get(output.request_id)  # a dict read: atomic under the GIL
        if q is not None:
            q.put(output)

    def deliver_batch(self, outputs: list[Any]) -> None:
        for output in outputs:
            self.deliver(output)


class _PlainRun:
    """The lone request served by plain ``generate``: ``handover`` asks it to move to the manager,
    ``released`` says it has (or has ended), so a newcomer may go in."""

    def __init__(self) -> None:
        self.handover = threading.Event()
        self.released = threading.Event()


class BatchedHFChatModel(HFChatModel):
    """An :class:`HFChatModel` whose requests share forward passes (continuous batching).

    Args:
        model, tokenizer, name, use_template, chat_template, is_demo, stream_timeout:
            as for :class:`HFChatModel`.
        max_memory_percent: None (the default) sizes the paged KV cache from what the server
            needs, ``max_sequences`` full contexts (:func:`llm.kv_budget.kv_cache_budget`);
            a share (0-1] of the device's memory instead hands the sizing to transformers
            (``ContinuousBatchingConfig.max_memory_percent``: of free GPU memory, or of the
            total RAM on a CPU), as ``--kv-cache-memory`` asks.
        max_sequences: requests that may run at once (``--max-queue``), for the budget.
        max_batch_tokens: most tokens (prefill + decode) in one forward pass; None: 256 on
            a CPU, transformers' 8192 on a GPU.
        compile_level: 0 (eager) to 3: transformers' default torch.compile configs for the
            prefill and decode paths (``--compile`` uses 1); higher = faster, longer warm-up.
        plain_when_alone: serve a request that finds no other running with plain ``generate``
            (:class:`HFChatModel`'s path) on the same weights; when a second comes, the first
            moves into the manager at its next token and both go on batched (``--batching auto``
            on a CPU).  Why: on a CPU the manager's per-step scheduling makes one stream alone
            slower than ``generate`` (4% with SmolLM2-135M, 18% with the demo model), while 8
            streams batched give 3.6x one plain stream with SmolLM2 (docs/benchmarks.md,
            "Batching by default?").  Only where batching kept the model's attention (``sdpa`` or
            flash, which ``generate`` also runs); ignored, with all requests batched, after a
            switch to ``paged|eager``.  The manager's generation loop then runs only while
            requests are batched: started by the first, stopped :data:`IDLE_STOP_S` seconds after
            the last (a live loop thread's OpenMP threads slowed a lone plain stream by 10-20%).

    Greedy requests use top_k=1 (the most likely token, exactly greedy decoding);
    ``top_k=0`` ("no top-k filter") becomes the vocabulary size.  The model's
    ``generation_config.repetition_penalty`` (Qwen2.5: 1.05) applies to every request, as
    with ``generate``; while it is on, CUDA graphs and async batching are off
    (:mod:`llm.batch_processors`).

    Attributes:
        kv_budget: the :class:`~llm.kv_budget.KVBudget` used, or None with ``max_memory_percent``.
        plain_when_alone: whether lone requests use plain ``generate`` (see the argument).
        served: requests so far, ``{"plain": n, "batched": n, "handed over": n}`` (started plain or
            batched; plain ones moved to the manager when another came).
        loop_starts: times the manager's generation loop was started (1 without ``plain_when_alone``).

    Raises:
        RuntimeError: when the manager cannot start (the loader then falls back to
            one-at-a-time generation).
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_memory_percent: float | None = None,
                 max_sequences: int = 64, max_batch_tokens: int | None = None, compile_level: int = 0,
                 plain_when_alone: bool = False, **kwargs: Any):
        super().__init__(model, tokenizer, **kwargs)
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        if max_memory_percent is not None and not 0 < max_memory_percent <= 1:
            raise ValueError(f"max_memory_percent must be in (0, 1], got {max_memory_percent}")
        eos = getattr(model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        self._eos = eos
        # Start from the model's own generation_config (e.g. Qwen2.5's repetition_penalty 1.05), as generate does.
        config = GenerationConfig.from_dict(model.generation_config.to_dict())
        # transformers' manager would drop its own penalty processor: ours is installed below instead.
        penalty = getattr(config, "repetition_penalty", None)
        config.repetition_penalty = None
        config.update(**_BASE_SAMPLING, eos_token_id=eos,
                      pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
        text_config = model.config.get_text_config()
        self.kv_budget: KVBudget | None = None
        if max_memory_percent is None:
            self.kv_budget = kv_cache_budget(
                text_config, model.dtype.itemsize, context_length=self.context_length, sequences=max_sequences,
                device_type=model.device.type, memory_bytes=device_memory(model.device),
                max_batch_tokens=max_batch_tokens,
                needs_mask="flash" not in str(getattr(text_config, "_attn_implementation", "")))
            sizing = dict(num_blocks=self.kv_budget.num_blocks, max_batch_tokens=self.kv_budget.max_batch_tokens,
                          max_memory_percent=0.9)  # only transformers' footprint check reads the share then
        else:
            sizing = dict(max_memory_percent=max_memory_percent, max_batch_tokens=max_batch_tokens)
        if penalty not in (None, 1.0):
            sizing.update(use_cuda_graph=False, use_async_batching=False)
        cb_config = ContinuousBatchingConfig(per_request_processors=True, default_compile_level=compile_level,
                                             **sizing)
        self._vocab = int(text_config.vocab_size)
        self._manager = model.init_continuous_batching(generation_config=config, continuous_batching_config=cb_config)
        if penalty not in (None, 1.0):
            batch_processors.install(self._manager, float(penalty))
        if model.device.type == "cpu":  # a data-dependent branch: not inside CUDA graphs, no GPU sync per step
            batch_processors.speed_up_sampling(self._manager)
        attention = str(model.config._attn_implementation)
        self.plain_when_alone = plain_when_alone and (attention == "sdpa" or "flash" in attention)
        self._dispatch = threading.Lock()  # one decision at a time: plain alone, or batched
        self._plain: _PlainRun | None = None  # the request now served alone by plain generate
        self.served = {"plain": 0, "batched": 0, "handed over": 0}
        self._queues: dict[str, queue.Queue] = {}
        self._manager.output_router = _QueueRouter(self._queues)  # before start(): the loop reads it then
        self._closed = threading.Event()
        # With plain_when_alone the loop runs only while requests are batched: a live loop thread
        # keeps its OpenMP threads, and with more of them than cores every thread, the lone
        # request's too, spins for only 100 turns before sleeping (libgomp's throttled spin count),
        # which made one plain stream 10-20% slower (docs/benchmarks.md, "Streaming text per token").
        self._stop_timer: threading.Timer | None = None  # stops the idle loop (plain_when_alone only)
        self._stopped: threading.Event | None = None  # set once a stop in progress has finished
        self.loop_starts = 0  # times the generation loop was started
        if not self.plain_when_alone:
            self._start_loop()

    def _start_loop(self) -> None:
        """Start the manager's generation loop thread (which builds its batch processor and KV cache)."""
        with torch.inference_mode():  # the loop runs in the inference mode start() is called in
            self._manager.start()
        self.loop_starts += 1

    def _loop_needed(self) -> None:
        """A request is about to be submitted to the manager (caller holds ``_dispatch``; no plain
        ``generate`` runs any more): cancel an idle stop and start the loop if it is not running.
        Called only then, so that the loop's start (it builds its batch processor and KV cache)
        does not run beside the plain run's last forward passes on the 2 cores."""
        if not self.plain_when_alone:
            return
        if self._stop_timer is not None:
            self._stop_timer.cancel()
            self._stop_timer = None
        if self._stopped is not None:  # a stop is under way (it does not take _dispatch): let it end
            self._stopped.wait(60)
            self._stopped = None
        if not self._manager.is_running():
            self._start_loop()

    def _loop_maybe_idle(self) -> None:
        """A batched request ended (caller holds ``_dispatch``): with none left, stop the loop
        after :data:`IDLE_STOP_S` seconds unless another comes meanwhile."""
        if not self.plain_when_alone or self._queues or self._closed.is_set() or self._stop_timer is not None:
            return
        timer = threading.Timer(IDLE_STOP_S, self._stop_if_idle)
        timer.daemon = True
        self._stop_timer = timer
        timer.start()

    def _stop_if_idle(self) -> None:
        """The idle timer's end: stop the loop unless a request came meanwhile.  The stop takes
        ~0.45 s (transformers' loop winding down) and runs outside ``_dispatch``, so a lone
        request meanwhile is not held up; a request that needs the loop waits for it to end."""
        with self._dispatch:
            if self._stop_timer is not threading.current_thread() or self._queues or self._closed.is_set():
                return
            self._stop_timer = None
            if not self._manager.is_running():
                return
            stopped = self._stopped = threading.Event()
        try:
            # a fresh batch processor and KV cache at the next start (reusing a kept one is not
            # relied on: transformers resets it, and that path is not tested here)
            self._manager.stop(block=True, timeout=30)
        finally:
            stopped.set()

    @classmethod
    def wrap(cls, chat: HFChatModel, **kwargs: Any) -> "BatchedHFChatModel":
        """The same loaded model and tokenizer as ``chat``, served with continuous batching.

        Args:
            chat: a loaded :class:`HFChatModel` (see :func:`llm.loader.load_chat_model`).
            kwargs: ``max_memory_percent``, ``max_sequences``, ``max_batch_tokens``, ``compile_level``,
                ``plain_when_alone`` (see the class).
        """
        return cls(chat.model, chat.tokenizer, name=chat.name, use_template=chat.use_template,
                   chat_template=chat.chat_template, is_demo=chat.is_demo, stream_timeout=chat.stream_timeout,
                   **kwargs)

    # ------------------------------------------------------------------ one request
    def _loop_error(self) -> BaseException | None:
        """Why the generation loop is no longer running, or None while it runs."""
        fatal = self._manager.background_thread_status.fatal_error
        if fatal is not None:
            return fatal
        if self._closed.is_set() or not self._manager.is_running():
            return RuntimeError("the batching loop stopped")
        return None

    def _next_output(self, q: queue.Queue) -> Any:
        """The newest output waiting on ``q`` (blocking until one comes).

        Raises:
            GenerationError: the generation loop produced nothing, for any request, within
                ``stream_timeout`` seconds (a request waiting for room in the KV cache while others
                run waits on), the loop stopped, or the output carries an error.
        """
        router = self._manager.output_router
        since = time.monotonic()
        while True:
            try:
                item = q.get(timeout=min(_HEALTH_CHECK_S, self.stream_timeout))
                break
            except queue.Empty:
                error = self._loop_error()
                if error is not None:
                    raise GenerationError(f"generation with {self.name!r} failed: {error!r}") from error
                # waiting in the manager's queue while it serves others is not a hang
                if time.monotonic() - max(since, router.last_delivery) >= self.stream_timeout:
                    raise GenerationError(f"{self.name!r} produced no token within {self.stream_timeout} s") from None
        while not item.error and not item.is_finished():
            try:
                item = q.get_nowait()  # fell behind: the newest output holds every token so far
            except queue.Empty:
                break
        if item.error:
            raise GenerationError(f"generation with {self.name!r} failed: {item.error}")
        return item

    def _request_kwargs(self, params: GenerationParams) -> dict[str, Any]:
        if params.greedy:
            return {"top_k": 1, "top_p": 1.0}  # top-p 1 filters nothing: skipped on a CPU
        return {"temperature": float(params.temperature), "top_k": int(params.top_k or self._vocab),
                "top_p": float(params.top_p)}

    def _generate(self, input_ids: list[int], params: GenerationParams, max_new_tokens: int,
                  gen: Generation) -> Iterator[str]:
        """Yield the request's text as its tokens arrive (see :meth:`HFChatModel.stream`).

        With ``plain_when_alone``, a request that finds no other running is served by plain
        ``generate``; when another comes, the lone one is handed over to the manager at its next
        token (its prompt and tokens so far become the manager's prompt: one more prefill), and
        the newcomer waits for that before it joins, so the two never run side by side.
        """
        rid = f"chat-{uuid.uuid4().hex}"
        q: queue.Queue = queue.Queue()
        with self._dispatch:
            plain = self.plain_when_alone and self._plain is None and not self._queues
            running = self._plain
            if plain:
                running = self._plain = _PlainRun()
            else:
                self._queues[rid] = q  # from here on a newcomer sees this request running
                if running is not None:
                    running.handover.set()
            self.served["plain" if plain else "batched"] += 1
        if not plain:
            if running is not None:
                running.released.wait(self.stream_timeout)
            yield from self._generate_batched(rid, q, input_ids, params, max_new_tokens, gen)
            return
        try:
            rest = yield from super()._generate(input_ids, params, max_new_tokens, gen, handover=running.handover)
            if rest is None:
                return  # answered alone
            generated, stop = rest
            with self._dispatch:
                self._queues[rid] = q
                self._plain = None
                self.served["handed over"] += 1
            yield from self._generate_batched(rid, q, input_ids, params, max_new_tokens, gen,
                                              generated=generated, stop=stop, submitted=running.released)
        finally:
            with self._dispatch:
                self._plain = None
            running.released.set()

    def _generate_batched(self, rid: str, q: queue.Queue, input_ids: list[int], params: GenerationParams,
                          max_new_tokens: int, gen: Generation, *, generated: list[int] | None = None,
                          stop: StopStrings | None = None, submitted: threading.Event | None = None
                          ) -> Iterator[str]:
        """Submit the request (already registered under ``rid`` with queue ``q``), then yield its text
        as its tokens arrive; sets ``gen``'s ``completion_tokens`` and ``finish_reason`` from the
        manager's tokens.

        ``generated`` (tokens the answer already has, from a handed-over plain run, whose text was
        yielded but for what ``stop`` holds back) go in with the prompt; ``max_new_tokens`` counts
        them.  ``submitted`` is set once the request is in the manager (if submitting fails, the
        caller's ``finally`` sets it).
        """
        generated = list(generated or ())
        stop = stop if stop is not None else StopStrings(params.stop)
        finished = False
        try:
            with self._dispatch:  # only now, once a plain run has handed over (see _loop_needed)
                self._loop_needed()
            accepted = self._manager.add_request(input_ids + generated, request_id=rid,
                                                 max_new_tokens=max_new_tokens - len(generated), streaming=True,
                                                 eos_token_id=self._eos, **self._request_kwargs(params))
            if submitted is not None:
                submitted.set()
            if accepted is None:
                raise GenerationError(f"{self.name!r} is not accepting requests (the batching loop stopped)")
            decoder = IncrementalDecoder(self.tokenizer, generated)  # their text was yielded or held back
            done = 0  # the manager's tokens decoded so far
            while True:
                item = self._next_output(q)
                finished = item.is_finished()
                tokens = item.generated_tokens  # all of this request's tokens so far
                ready = stop.feed(decoder.step(tokens[done:], final=finished), final=finished)
                done = len(tokens)
                gen.completion_tokens = len(generated) + done
                if stop.stopped or finished:
                    last = tokens[-1] if tokens else (generated[-1] if generated else None)
                    gen.finish_reason = finish_reason_of(gen.completion_tokens, None if last is None else int(last),
                                                         self.eos_token_ids(), max_new_tokens, stop.stopped)
                if ready:
                    yield ready
                if stop.stopped or finished:
                    return
        finally:
            if not finished:
                self._manager.cancel_request(rid)
            with self._dispatch:
                self._queues.pop(rid, None)
                self._loop_maybe_idle()

    def close(self) -> None:
        """Stop the batching loop (idempotent); a request still waiting fails within
        half a second with a :class:`GenerationError`."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._dispatch:
            if self._stop_timer is not None:
                self._stop_timer.cancel()
                self._stop_timer = None
            stopping = self._stopped
        if stopping is not None:
            stopping.wait(60)
        if self._manager.is_running():
            self._manager.stop(block=True, timeout=30)
