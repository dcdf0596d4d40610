"""A transformers causal LM as a :class:`~llm.base.ChatModel`.

``model.generate`` runs in a background thread and hands its text to a
``TextIteratorStreamer`` (the transformers streaming recipe); :meth:`HFChatModel.stream`
turns that into an iterator that ends or raises, never hangs, and stops the
generation when it is closed early.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Generator, Iterator, Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from llm.base import ChatModel, Generation, GenerationError, GenerationParams, Message
from llm.budget import check_prompt_fits, clamp_max_new_tokens
from llm.templates import neutralize_special_tokens, special_token_texts

logger = logging.getLogger(__name__)

#: Name of the generation threads (tests look for them).
GENERATE_THREAD_NAME = "llm-generate"
_SANE_CONTEXT = 10_000_000  # tokenizer.model_max_length is 1e30 when unset


class _StopOnEvent(StoppingCriteria):
    """Stops ``generate`` at the next step once ``event`` is set; records, at every step,
    the sequence's length, last token and ids (``generate`` calls it after appending each token),
    from which the answer's token count and finish reason are read.

    ``handover`` (optional) stops it too, but only at a token boundary that is also a character
    boundary (the last tokens do not decode to a broken character), so that the answer can go on
    elsewhere from exactly these ids (:class:`llm.batching.BatchedHFChatModel`).
    """

    def __init__(self, event: threading.Event, handover: threading.Event | None = None, tokenizer: Any = None):
        self.event = event
        self.handover = handover
        self.tokenizer = tokenizer
        self.ids: torch.Tensor | None = None  # [length], prompt + generated so far
        self.handed_over = False

    @property
    def length(self) -> int:
        """Tokens in the sequence so far, prompt included (0 before the first step)."""
        return 0 if self.ids is None else int(self.ids.shape[0])

    @property
    def last(self) -> int | None:
        """The sequence's last token id (None before the first step); read on demand, so a
        GPU tensor is not synchronised on every step."""
        return None if self.ids is None else int(self.ids[-1])

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        """Return a ``(batch,)`` bool tensor, all True once the event (or the handover) is set."""
        self.ids = input_ids[0]
        stop = self.event.is_set()
        if not stop and self.handover is not None and self.handover.is_set():
            tail = self.tokenizer.decode(input_ids[0, -4:], skip_special_tokens=True)
            stop = self.handed_over = not tail.endswith("\ufffd")
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def finish_reason_of(generated: int, last_token: int | None, eos: set[int], max_new_tokens: int,
                     stopped_by_string: bool) -> str:
    """``"stop"`` for a stop string or an end-of-sequence last token, ``"length"`` when
    ``generated`` reached ``max_new_tokens``, else ``"stop"``."""
    if stopped_by_string or (generated and last_token in eos):
        return "stop"
    return "length" if generated >= max_new_tokens else "stop"


def _context_length(model: Any, tokenizer: Any) -> int:
    """``config.max_position_embeddings``, else ``tokenizer.model_max_length``, else 4096."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for value in (getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)):
        if isinstance(value, int) and 0 < value < _SANE_CONTEXT:
            return value
    return ChatModel.context_length


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is the start of a stop string (0 if none)."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


class StopStrings:
    """Cuts a streamed answer at the first of ``stops``; text that may be the start of a
    stop string is held back until the next piece shows whether it is one.

    ``feed(text)`` returns the text that can be yielded now; ``stopped`` turns True once
    a stop string was found (the stop string and anything after it are dropped).
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        self.pending = ""
        self.stopped = False

    def feed(self, text: str, final: bool = False) -> str:
        """Add ``text``; return what is safe to yield. ``final`` releases any held-back text."""
        self.pending += text
        if not self.stops:
            ready, self.pending = self.pending, ""
            return ready
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            ready, self.pending = self.pending[:cut], ""
            return ready
        keep = 0 if final else _held_back(self.pending, self.stops)
        ready, self.pending = self.pending[: len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        return ready


class IncrementalDecoder:
    """The text of a growing answer, a few tokens at a time, without decoding the whole answer again.

    Decoding every token so far at each new one costs O(n) per token: with Qwen2.5's tokenizer
    on this project's 2-core CPU, 20 µs a token over a 256-token answer and 278 µs over a
    4,096-token one, against 1.3 µs here at any length (``bench/detokenize.py``,
    docs/benchmarks.md); under batching that work holds the GIL the generation loop needs.  A fast
    tokenizer uses the tokenizers library's ``DecodeStream`` (its streaming detokenizer: text is
    returned once it is whole UTF-8, with the tokenizer's own spacing rules); any other
    tokenizer falls back to decoding everything and returning the difference.

    Args:
        tokenizer: a transformers tokenizer.
        context: token ids whose text was already handled (e.g. an answer's start produced
            elsewhere); the returned text starts after them.

    ``step(ids)`` returns the text the new ids add ("" while a character is split across
    tokens); ``step(ids, final=True)`` also returns what is still held back, as the replacement
    character transformers' ``decode`` gives an incomplete byte sequence.
    """

    def __init__(self, tokenizer: Any, context: Sequence[int] = ()):
        from tokenizers import Tokenizer
        from tokenizers.decoders import DecodeStream

        self._tokenizer = tokenizer
        self._backend = getattr(tokenizer, "_tokenizer", None)
        self._pending: list[int] = []  # ids whose text is not whole yet
        self._stream = None
        context = list(context)
        sent = tokenizer.decode(context, skip_special_tokens=True) if context else ""
        # a context that ends inside a character would be decoded again by DecodeStream
        if isinstance(self._backend, Tokenizer) and not sent.endswith("\ufffd"):
            self._stream = DecodeStream(ids=context or None, skip_special_tokens=True)
        else:
            self._ids, self._sent = context, sent

    def step(self, ids: Sequence[int], final: bool = False) -> str:
        """The text ``ids`` (the next tokens of the answer) add; see the class."""
        if self._stream is None:
            self._ids.extend(ids)
            text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
            if not final and text.endswith("\ufffd"):
                return ""
            piece, self._sent = text[len(self._sent):], text
            return piece
        piece = self._stream.step(self._backend, list(ids)) if ids else None
        if piece is None:
            self._pending.extend(ids)
            if final and self._pending:
                return self._tokenizer.decode(self._pending, skip_special_tokens=True)
            return ""
        self._pending = []
        return piece


class HFChatModel(ChatModel):
    """A transformers ``AutoModelForCausalLM`` + tokenizer as a chat model.

    One generation runs at a time per model (a lock; a second :meth:`stream`
    waits for the first to finish or be closed) -- batching concurrent requests
    is left for later.

    Args:
        model: a loaded causal LM (``PreTrainedModel`` with ``generate``), already
            on its device and in eval mode.
        tokenizer: its tokenizer.
        name: shown in the page, the logs and ``/v1/models``.
        use_template: render the conversation with a chat template (default);
            ``False`` is ``--no-template``: raw text, see :meth:`render_prompt`.
        chat_template: Jinja chat template used instead of the tokenizer's own
            (e.g. from :func:`llm.templates.template_for`).
        is_demo: True for the random-weight demo model.
        stream_timeout: seconds :meth:`stream` waits for the next piece of text
            before it gives up with :class:`GenerationError`.

    Raises:
        ValueError: ``use_template`` and neither the tokenizer nor ``chat_template``
            has a chat template.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        use_template: bool = True,
        chat_template: str | None = None,
        is_demo: bool = False,
        stream_timeout: float = 120.0,
    ):
        if use_template and chat_template is None and not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"the tokenizer of {name!r} has no chat template: pass chat_template= "
                "(see llm.templates.template_for) or use_template=False"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.use_template = use_template
        self._specials: list[str] | None = None  # special-token texts, read on first use
        self.chat_template = chat_template
        self.is_demo = is_demo
        self.stream_timeout = stream_timeout
        self.context_length = _context_length(model, tokenizer)
        self._lock = threading.Lock()

    def use_static_cache(self) -> None:
        """``--compile``: generate with a static KV cache, which transformers compiles with
        ``torch.compile`` on GPUs (``GenerativePreTrainedModel._valid_auto_compile_criteria``).
        On CPU it stays eager (a warning says so): the compile pays off on GPUs only."""
        self.model.generation_config.cache_implementation = "static"
        if self.model.device.type == "cpu":
            logger.warning("--compile: static KV cache set, but transformers compiles only on GPU; running eager")

    def render_prompt(self, messages: Sequence[Message]) -> str:
        """Render the conversation into the prompt text the model continues.

        With ``use_template``: the chat template (the ``chat_template`` override, else
        the tokenizer's) with ``add_generation_prompt=True``.  Without (``--no-template``):
        the texts of the past turns joined by newlines, then the last user prompt;
        the system prompt is left out, as a raw-text model has no place for it.

        Args:
            messages: the conversation, oldest first, ending with the user's turn.

        Returns:
            The prompt text, special tokens written out (e.g. ``<|im_start|>``). Special
            tokens typed inside a message are neutralised first
            (:func:`llm.templates.neutralize_special_tokens`).
        """
        if not self.use_template:
            return "\n".join(m["content"] for m in messages if m["role"] != "system")
        if self._specials is None:
            self._specials = special_token_texts(self.tokenizer)
        return self.tokenizer.apply_chat_template(
            [dict(m, content=neutralize_special_tokens(m["content"], self._specials)) for m in messages],
            chat_template=self.chat_template,
            add_generation_prompt=True,
            tokenize=False,
        )

    def _encode(self, text: str) -> list[int]:
        """Token ids of a rendered prompt; special tokens are added only to raw text (templates write their own)."""
        return self.tokenizer(text, add_special_tokens=not self.use_template)["input_ids"]

    def count_tokens(self, text: str) -> int:
        """Number of tokens in ``text`` (no special tokens added)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        """Number of tokens of the rendered prompt (chat template and special tokens included)."""
        return len(self._encode(self.render_prompt(messages)))

    def stream(self, messages: Sequence[Message], params: GenerationParams) -> Iterator[str]:
        """Yield the answer to ``messages`` as non-empty text pieces; see :meth:`ChatModel.stream`.

        The prompt is rendered and checked here, before the iterator is returned;
        ``max_new_tokens`` is cut to what fits in ``context_length``.  ``params.stop``
        strings end the answer (the stop string is not yielded) and stop generating.

        Raises:
            llm.budget.PromptTooLongError: (at once) the prompt has more than ``context_length - 1`` tokens.
            GenerationError: (from the iterator) ``generate`` failed (cause chained), or
                no text came within ``stream_timeout`` seconds.
        """
        input_ids = self._encode(self.render_prompt(messages))
        check_prompt_fits(len(input_ids), self.context_length, self.name)
        max_new_tokens = clamp_max_new_tokens(params.max_new_tokens, len(input_ids), self.context_length)
        gen = Generation(prompt_tokens=len(input_ids))
        return gen.run(self._generate(input_ids, params, max_new_tokens, gen))

    def eos_token_ids(self) -> set[int]:
        """The end-of-sequence token ids (the generation config's, else the tokenizer's)."""
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}

    def _generate_kwargs(self, input_ids: list[int], params: GenerationParams, max_new_tokens: int) -> dict[str, Any]:
        """``model.generate`` kwargs for one answer (streamer and stopping criteria added by the caller)."""
        ids = torch.tensor([input_ids], dtype=torch.long, device=self.model.device)
        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "max_new_tokens": max_new_tokens,
        }
        if params.greedy:  # no temperature/top_k/top_p: transformers warns they are unused
            kwargs["do_sample"] = False
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p)
        gen_config = getattr(self.model, "generation_config", None)
        eos = getattr(gen_config, "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
            kwargs["eos_token_id"] = eos
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = getattr(gen_config, "pad_token_id", None)
        if pad is None:
            pad = eos[0] if isinstance(eos, (list, tuple)) else eos
        kwargs["pad_token_id"] = pad
        if params.stop:
            # transformers' StopStringCriteria ends generate itself at a stop string, so the
            # generation thread never runs on while the consumer finds it in the text
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        return kwargs

    def _run(self, kwargs: dict[str, Any], streamer: TextIteratorStreamer, errors: list[BaseException]) -> None:
        """Thread target: ``generate``; on failure record it and end the streamer. Releases the lock."""
        try:
            with torch.inference_mode():
                self.model.generate(**kwargs, streamer=streamer)
        except BaseException as exc:  # noqa: BLE001 -- handed to the consumer, re-raised there
            errors.append(exc)
            if isinstance(exc, torch.OutOfMemoryError) and torch.cuda.is_available():
                # what the failed request had allocated goes back to the device for the next one
                torch.cuda.empty_cache()
            try:
                streamer.end()
            except Exception:  # the failure may come from the streamer's own decoding
                streamer.text_queue.put(streamer.stop_signal)
        finally:
            self._lock.release()

    def _generate(self, input_ids: list[int], params: GenerationParams, max_new_tokens: int,
                  gen: Generation, handover: threading.Event | None = None
                  ) -> Generator[str, None, "tuple[list[int], StopStrings] | None"]:
        """The pieces of the :class:`Generation` returned by :meth:`stream`; sets its
        ``completion_tokens`` and ``finish_reason`` before it ends.

        ``handover`` set stops the answer early, unfinished, at the next character boundary; the
        generator then returns the generated token ids so far and the :class:`StopStrings` holding
        any held-back text, for the answer to go on elsewhere; otherwise it returns None.
        """
        stop_event = threading.Event()
        errors: list[BaseException] = []
        streamer = TextIteratorStreamer(
            self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=self.stream_timeout
        )
        kwargs = self._generate_kwargs(input_ids, params, max_new_tokens)
        progress = _StopOnEvent(stop_event, handover, self.tokenizer)
        kwargs["stopping_criteria"] = StoppingCriteriaList([progress])
        thread = threading.Thread(
            target=self._run, args=(kwargs, streamer, errors), name=GENERATE_THREAD_NAME, daemon=True
        )
        self._lock.acquire()  # released by _run when generate returns
        try:
            thread.start()
        except BaseException:
            self._lock.release()
            raise
        stop = StopStrings(params.stop)
        try:
            while True:
                try:
                    piece = next(streamer)
                except StopIteration:
                    break
                except queue.Empty as exc:
                    raise GenerationError(
                        f"{self.name!r} produced no text within {self.stream_timeout} s"
                    ) from exc
                ready = stop.feed(piece)
                gen.completion_tokens = max(0, progress.length - len(input_ids))
                if stop.stopped:
                    gen.finish_reason = "stop"
                if ready:
                    yield ready
                if stop.stopped:
                    return
            if errors:
                raise GenerationError(f"generation with {self.name!r} failed: {errors[0]!r}") from errors[0]
            gen.completion_tokens = max(0, progress.length - len(input_ids))
            if (progress.handed_over and progress.last not in self.eos_token_ids()
                    and gen.completion_tokens < max_new_tokens):
                return progress.ids[len(input_ids):].tolist(), stop
            gen.finish_reason = finish_reason_of(gen.completion_tokens, progress.last, self.eos_token_ids(),
                                                 max_new_tokens, False)
            rest = stop.feed("", final=True)
            if rest:
                yield rest
        finally:
            stop_event.set()
            thread.join(self.stream_timeout)
            if thread.is_alive():
                logger.warning("the generate thread of %r did not stop within %s s", self.name, self.stream_timeout)
