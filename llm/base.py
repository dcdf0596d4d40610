"""The one interface every chat model of this project implements.

Modelled on simonw/llm's ``Model``: a single method, :meth:`ChatModel.stream`,
yields the answer as ``str`` pieces; capabilities are plain attributes.  The web
page, the API and the tests only ever talk to this interface, so a scripted fake
model (see ``tests/conftest.py``) can stand in for real weights.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Iterator, Literal, Sequence, TypedDict


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
        """Yield the answer to ``messages`` as text pieces, in order.

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
        return "".join(self.stream(messages, params))


class GenerationError(RuntimeError):
    """Generation failed inside the model; the original exception is ``__cause__``."""


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the path and the fix."""
