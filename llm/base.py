"""The one interface every chat model of this project implements.

Modelled on simonw/llm's ``Model`` and its ``Response``: :meth:`ChatModel.generate`
returns a :class:`Generation`, an iterator of the answer's ``str`` pieces whose end
carries how it stopped (``finish_reason``) and the token counts (``usage``), both from
the model itself; capabilities are plain attributes.  The web
page, the API and the tests only ever talk to this interface, so a scripted fake
model (see ``tests/conftest.py``) can stand in for real weights.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal, Sequence, TypedDict


class Message(TypedDict):
    """One chat message in the OpenAI / transformers chat-template shape."""

    role: Literal["system", "user", "assistant"]
    content: str


#: Temperatures below this decode greedily: dividing logits by a smaller one (``1e-320``)
#: overflows to infinity and sampling fails; the answer would be the greedy one anyway.
GREEDY_BELOW_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings for one answer; they map onto ``model.generate`` kwargs.

    Attributes:
        max_new_tokens: most tokens generated for the answer (>= 1).
        temperature: softmax temperature (>= 0). 0 (or below :data:`GREEDY_BELOW_TEMPERATURE`)
            means greedy decoding.
        top_k: sample among the k most likely tokens (>= 0; 0 turns the filter off).
        top_p: nucleus sampling mass in (0, 1].
        do_sample: False forces greedy decoding whatever the temperature.
        stop: strings that end the answer; the stop string itself is not returned.

    Raises:
        ValueError: from ``__post_init__`` when a value is out of range; the
            message names the field, the value and the allowed range.
    """

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_k: int = 20
    top_p: float = 0.8
    do_sample: bool = True
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.stop, str):  # a single stop string is a common slip
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(s for s in self.stop if s))

    @property
    def greedy(self) -> bool:
        """True when decoding is greedy: ``do_sample`` is False or the temperature is 0
        (below :data:`GREEDY_BELOW_TEMPERATURE`)."""
        return not self.do_sample or self.temperature < GREEDY_BELOW_TEMPERATURE


#: How an answer ended: ``stop`` (end-of-sequence token, a stop string, or the whole answer of a
#: text-only model), ``length`` (``max_new_tokens`` or the context reached), ``error`` (generation failed).
FinishReason = Literal["stop", "length", "error"]


@dataclass(frozen=True)
class Usage:
    """Token counts of one answer, as the model counted them.

    Attributes:
        prompt_tokens: tokens the model read (chat template and special tokens included).
        completion_tokens: tokens it generated (an end-of-sequence token included, as vLLM counts).
    """

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        """``prompt_tokens + completion_tokens``."""
        return self.prompt_tokens + self.completion_tokens


class Generation(Iterator[str]):
    """An answer being generated: iterate it for its text pieces, in order; once it is
    exhausted, :attr:`finish_reason` and :meth:`usage` say how it ended.

    A backend creates one with the prompt's token count, hands it its piece iterator
    (:meth:`run`) and, before that iterator ends, sets ``finish_reason`` and
    ``completion_tokens``. An iterator that ends without setting ``finish_reason``
    finished with ``"stop"``; one that raises, with ``"error"`` (the exception goes on
    to the consumer). :meth:`close` closes the pieces, which stops the generation.

    Attributes:
        prompt_tokens: tokens of the prompt (None until known).
        completion_tokens: tokens generated so far or in all (None until known).
        finish_reason: None while running, then a :data:`FinishReason`.
    """

    def __init__(self, prompt_tokens: int | None = None):
        self.prompt_tokens = prompt_tokens
        self.completion_tokens: int | None = None
        self.finish_reason: FinishReason | None = None
        self._pieces: Iterator[str] = iter(())

    def run(self, pieces: Iterator[str]) -> "Generation":
        """Set the iterator of text pieces; returns ``self``."""
        self._pieces = pieces
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration:
            if self.finish_reason is None:
                self.finish_reason = "stop"
            raise
        except Exception:
            self.finish_reason = "error"
            raise

    def close(self) -> None:
        """Stop generating (closes the piece iterator); idempotent."""
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()

    def usage(self) -> Usage | None:
        """The token counts, once both are known; else None."""
        if self.prompt_tokens is None or self.completion_tokens is None:
            return None
        return Usage(self.prompt_tokens, self.completion_tokens)

    @classmethod
    def of_text(cls, pieces: Iterator[str], prompt_tokens: int, count_tokens: Callable[[str], int],
                max_new_tokens: int) -> "Generation":
        """A :class:`Generation` for a model whose :meth:`ChatModel.stream` yields only text (test
        fakes, third-party models): ``completion_tokens`` is ``count_tokens`` of the whole answer and
        ``finish_reason`` is ``"length"`` when that reaches ``max_new_tokens``, else ``"stop"`` --
        an estimate; the project's own backends report both themselves."""
        gen = cls(prompt_tokens)

        def counted() -> Iterator[str]:
            text = []
            try:
                for piece in pieces:
                    text.append(piece)
                    yield piece
            finally:
                close = getattr(pieces, "close", None)
                if close is not None:
                    close()
            gen.completion_tokens = count_tokens("".join(text))
            gen.finish_reason = "length" if gen.completion_tokens >= max_new_tokens else "stop"

        return gen.run(counted())


class ChatModel(ABC):
    """A chat model that streams its answer.

    Attributes:
        name: what the model is called in the page, the logs and ``/v1/models``
            (the ``--model-path`` as given, or ``"demo"``).
        is_demo: True for the built-in random-weight demo model, whose answers are
            meaningless; the page shows a banner then.
        context_length: most tokens (prompt + answer) the model accepts.
    """

    name: str = "model"
    is_demo: bool = False
    context_length: int = 4096

    @abstractmethod
    def stream(self, messages: Sequence[Message], params: GenerationParams) -> Iterator[str]:
        """Yield the answer to ``messages`` as text pieces, in order. The project's backends
        return a :class:`Generation` (which also reports ``finish_reason`` and ``usage``);
        callers use :meth:`generate`, which accepts either.

        Args:
            messages: the conversation, oldest first, ending with the user's turn;
                an optional ``system`` message comes first.
            params: sampling settings.

        Raises:
            GenerationError: generation failed (the cause is chained). Raised from
                the iterator, never swallowed: a stream ends or raises, it never hangs.

        Closing the iterator early (``.close()``, or the consumer going away)
        stops the generation.
        """

    def generate(self, messages: Sequence[Message], params: GenerationParams) -> Generation:
        """Start answering ``messages``: the :class:`Generation` (text pieces, then
        ``finish_reason`` and ``usage``). Raises at once what :meth:`stream` raises at once.

        Backends whose :meth:`stream` returns a :class:`Generation` report their own
        counts; for one that yields only text, see :meth:`Generation.of_text`."""
        out = self.stream(messages, params)
        if isinstance(out, Generation):
            return out
        return Generation.of_text(iter(out), self.count_prompt_tokens(messages), self.count_tokens,
                                  params.max_new_tokens)

    def count_tokens(self, text: str) -> int:
        """Number of tokens in ``text``. This default counts whitespace-separated
        words, for models without a tokenizer (test fakes); real models count tokens."""
        return len(text.split())

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        """Number of tokens the model reads for ``messages`` (chat template included
        where the model has one); used for the API's usage counts."""
        return sum(self.count_tokens(m["content"]) for m in messages)

    def chat(self, messages: Sequence[Message], params: GenerationParams) -> str:
        """Return the whole answer at once; see :meth:`stream`."""
        return "".join(self.generate(messages, params))


class GenerationError(RuntimeError):
    """Generation failed inside the model; the original exception is ``__cause__``."""


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the path and the fix."""
