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
manager lacks, is added per request (:mod:`llm.batch_penalty`).

Why the library and not a scheduler of ours: it streams per request
(``streaming=True``), cancels per request, and takes per-request temperature,
top_k and top_p, which is everything the page and the API need.  What it does
not route well is the output of many requests at once (``request_id_iter``
re-queues other requests' results), so one router thread here drains the
manager's results and hands each to its request's own queue.
"""
from __future__ import annotations

import logging
import queue
import threading
import uuid
from typing import Any, Iterator

from transformers import GenerationConfig

from llm import batch_penalty
from llm.base import Generation, GenerationError, GenerationParams
from llm.hf import HFChatModel, StopStrings, finish_reason_of
from llm.kv_budget import KVBudget, device_memory, kv_cache_budget

logger = logging.getLogger(__name__)

#: Manager-level sampling values. Per-request values replace them, but transformers only
#: builds a per-request processor for a parameter whose manager value is "active"
#: (temperature != 1, top_k set, top_p < 1): see cb_logits_processors.py.
_BASE_SAMPLING = dict(do_sample=True, temperature=0.7, top_k=50, top_p=0.95)


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

    Greedy requests use top_k=1 (the most likely token, exactly greedy decoding);
    ``top_k=0`` ("no top-k filter") becomes the vocabulary size.  The model's
    ``generation_config.repetition_penalty`` (Qwen2.5: 1.05) applies to every request, as
    with ``generate``; while it is on, CUDA graphs and async batching are off
    (:mod:`llm.batch_penalty`).

    Attributes:
        kv_budget: the :class:`~llm.kv_budget.KVBudget` used, or None with ``max_memory_percent``.

    Raises:
        RuntimeError: when the manager cannot start (the loader then falls back to
            one-at-a-time generation).
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_memory_percent: float | None = None,
                 max_sequences: int = 64, max_batch_tokens: int | None = None, compile_level: int = 0,
                 **kwargs: Any):
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
            batch_penalty.install(self._manager, float(penalty))
        self._manager.start()
        self._queues: dict[str, queue.Queue] = {}
        self._queues_lock = threading.Lock()
        self._closed = threading.Event()
        self._router = threading.Thread(target=self._route, name="llm-batch-router", daemon=True)
        self._router.start()

    @classmethod
    def wrap(cls, chat: HFChatModel, **kwargs: Any) -> "BatchedHFChatModel":
        """The same loaded model and tokenizer as ``chat``, served with continuous batching.

        Args:
            chat: a loaded :class:`HFChatModel` (see :func:`llm.loader.load_chat_model`).
            kwargs: ``max_memory_percent``, ``max_sequences``, ``max_batch_tokens``, ``compile_level``
                (see the class).
        """
        return cls(chat.model, chat.tokenizer, name=chat.name, use_template=chat.use_template,
                   chat_template=chat.chat_template, is_demo=chat.is_demo, stream_timeout=chat.stream_timeout,
                   **kwargs)

    # ------------------------------------------------------------------ router thread
    def _route(self) -> None:
        """Drain the manager's results into each request's queue until closed; on a
        fatal error in the generation loop, fail every waiting request."""
        status = self._manager.background_thread_status
        while not self._closed.is_set():
            result = self._manager.get_result(timeout=0.1)
            if result is None:
                if status.fatal_error is not None or not self._manager.is_running():
                    self._fail_all(status.fatal_error or RuntimeError("the batching loop stopped"))
                    if self._closed.wait(0.1):
                        return
                continue
            with self._queues_lock:
                q = self._queues.get(result.request_id)
            if q is not None:
                q.put(result)

    def _fail_all(self, error: BaseException) -> None:
        with self._queues_lock:
            waiting = list(self._queues.values())
        for q in waiting:
            q.put(error)

    # ------------------------------------------------------------------ one request
    def _request_kwargs(self, params: GenerationParams) -> dict[str, Any]:
        if params.greedy:
            return {"top_k": 1}
        return {"temperature": float(params.temperature), "top_k": int(params.top_k or self._vocab),
                "top_p": float(params.top_p)}

    def _generate(self, input_ids: list[int], params: GenerationParams, max_new_tokens: int,
                  gen: Generation) -> Iterator[str]:
        """Submit the request, then yield its text as its tokens arrive (see :meth:`HFChatModel.stream`);
        sets ``gen``'s ``completion_tokens`` and ``finish_reason`` from the manager's tokens."""
        rid = f"chat-{uuid.uuid4().hex}"
        q: queue.Queue = queue.Queue()
        with self._queues_lock:
            self._queues[rid] = q
        finished = False
        try:
            submitted = self._manager.add_request(input_ids, request_id=rid, max_new_tokens=max_new_tokens,
                                                  streaming=True, eos_token_id=self._eos,
                                                  **self._request_kwargs(params))
            if submitted is None:
                raise GenerationError(f"{self.name!r} is not accepting requests (the batching loop stopped)")
            sent = ""  # text already yielded or held back, decoded from all tokens so far
            stop = StopStrings(params.stop)
            while True:
                try:
                    item = q.get(timeout=self.stream_timeout)
                except queue.Empty:
                    raise GenerationError(f"{self.name!r} produced no token within {self.stream_timeout} s") from None
                if isinstance(item, BaseException):
                    raise GenerationError(f"generation with {self.name!r} failed: {item!r}") from item
                if item.error:
                    raise GenerationError(f"generation with {self.name!r} failed: {item.error}")
                finished = item.is_finished()
                tokens = item.generated_tokens
                gen.completion_tokens = len(tokens)
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                if not finished and text.endswith("\ufffd"):
                    continue  # a character split across tokens: wait for the rest
                ready = stop.feed(text[len(sent):], final=finished)
                sent = text
                if stop.stopped or finished:
                    gen.finish_reason = finish_reason_of(len(tokens), int(tokens[-1]) if tokens else None,
                                                         self.eos_token_ids(), max_new_tokens, stop.stopped)
                if ready:
                    yield ready
                if stop.stopped or finished:
                    return
        finally:
            if not finished:
                self._manager.cancel_request(rid)
            with self._queues_lock:
                self._queues.pop(rid, None)

    def close(self) -> None:
        """Stop the batching loop and the router thread (idempotent)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._manager.stop(block=True, timeout=30)
        self._router.join(5)
