"""The intent training/test data format: a JSON list of ``{"instruction", "output"}``.

Format (from PAI's LLM-based intent recognition solution, "数据格式要求",
https://help.aliyun.com/zh/pai/use-cases/llm-based-intent-recognition-solution)::

    [
      {"instruction": "我想听音乐", "output": "play_music()"},
      {"instruction": "我想去杭州玩,帮我查下天气预报", "output": "weather_search(杭州)"}
    ]

* ``instruction``: what the user said.  A multi-turn example joins the user turns,
  oldest first, into one instruction with :data:`TURN_SEPARATOR` (a newline) --
  see :func:`join_turns`; the label is the intent of the last turn in that context.
* ``output``: the function call(s), ``name(arg1,arg2)``; several intents in one
  output are separated by :data:`INTENT_SEPARATOR` (``;``), e.g.
  ``weather_search(北京);play_music()``.

Extra keys in an item are allowed and ignored.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

#: The system prompt of the published solution; used for training and evaluation alike.
SYSTEM_PROMPT = "你是一个意图识别专家，可以根据用户的问题识别出意图，并返回对应的函数调用和参数。"
#: Joins the user turns of a multi-turn example into one instruction (our choice: a newline).
TURN_SEPARATOR = "\n"
#: Separates several intents in one output (the published format).
INTENT_SEPARATOR = ";"


class IntentDataError(ValueError):
    """A data file or item is not in the ``{"instruction", "output"}`` format; the message names the fix."""


@dataclass(frozen=True)
class IntentExample:
    """One labelled utterance.

    Attributes:
        instruction: the user's words; user turns of a multi-turn example joined by
            :data:`TURN_SEPARATOR`.
        output: the label, e.g. ``"weather_search(杭州)"`` or ``"a();b(x)"``.
    """

    instruction: str
    output: str

    @property
    def is_multi_turn(self) -> bool:
        """True when the instruction holds more than one user turn (it contains :data:`TURN_SEPARATOR`)."""
        return TURN_SEPARATOR in self.instruction.strip()

    def to_dict(self) -> dict[str, str]:
        """``{"instruction": ..., "output": ...}``, the on-disk shape."""
        return {"instruction": self.instruction, "output": self.output}


def _turn_text(turn: Any) -> str | None:
    """The text of one user turn: a string, or an OpenAI-style message dict (``None`` for non-user roles)."""
    if isinstance(turn, str):
        return turn
    if isinstance(turn, dict):
        if turn.get("role", "user") != "user":
            return None
        content = turn.get("content", turn.get("text"))
        if isinstance(content, str):
            return content
    raise IntentDataError(
        f"a conversation turn must be a string or a {{'role': 'user', 'content': str}} message, got {turn!r}"
    )


def join_turns(turns: Sequence[Any]) -> str:
    """Join the user turns of a conversation into one instruction.

    Args:
        turns: the conversation, oldest first: strings (each a user turn) or
            message dicts ``{"role", "content"}`` (only ``role == "user"`` ones are
            kept; a dict without ``role`` counts as a user turn).

    Returns:
        The stripped non-empty user turns joined by :data:`TURN_SEPARATOR`.

    Raises:
        IntentDataError: a turn is neither a string nor a message dict, or no user
            turn has text.
    """
    texts = [t.strip() for t in (_turn_text(turn) for turn in turns) if t is not None and t.strip()]
    if not texts:
        raise IntentDataError("the conversation has no user turn with text")
    return TURN_SEPARATOR.join(texts)


def example_from_dict(item: Any, where: str = "item") -> IntentExample:
    """Validate one ``{"instruction", "output"}`` item.

    ``instruction`` may also be a list of user turns (joined by :func:`join_turns`).
    Both fields are stripped.

    Raises:
        IntentDataError: not an object, a field is missing, empty or not text; the
            message starts with ``where``.
    """
    if not isinstance(item, dict):
        raise IntentDataError(f"{where}: expected an object {{\"instruction\", \"output\"}}, got {type(item).__name__}")
    instruction, output = item.get("instruction"), item.get("output")
    if isinstance(instruction, list):
        try:
            instruction = join_turns(instruction)
        except IntentDataError as exc:
            raise IntentDataError(f"{where}: {exc}") from None
    for name, value in (("instruction", instruction), ("output", output)):
        if not isinstance(value, str) or not value.strip():
            raise IntentDataError(f"{where}: '{name}' must be non-empty text, got {value!r}")
    return IntentExample(instruction.strip(), output.strip())


def load_examples(path: str | Path) -> list[IntentExample]:
    """Read a data file: a UTF-8 JSON list of ``{"instruction", "output"}`` objects.

    Args:
        path: the ``.json`` file.

    Returns:
        The examples, in file order.

    Raises:
        IntentDataError: the file is missing, not JSON, not a list, empty, or an item
            is malformed (the message gives its index and the fix).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise IntentDataError(f"cannot read the data file {str(path)!r}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = ""
        if text.lstrip().startswith("{"):
            hint = " (it looks like JSON Lines: an iTAG manifest? convert it with 'python -m llm.intent convert')"
        raise IntentDataError(
            f"{str(path)!r} is not a JSON file ({exc}){hint}: expected a JSON list of "
            '{"instruction": ..., "output": ...} objects'
        ) from exc
    if not isinstance(data, list):
        raise IntentDataError(
            f"{str(path)!r} holds a JSON {type(data).__name__}, expected a list of "
            '{"instruction": ..., "output": ...} objects'
        )
    if not data:
        raise IntentDataError(f"{str(path)!r} holds no examples")
    return [example_from_dict(item, f"{path.name}[{i}]") for i, item in enumerate(data)]


def save_examples(examples: Iterable[IntentExample], path: str | Path) -> Path:
    """Write ``examples`` as a pretty-printed UTF-8 JSON list (Chinese left unescaped); return the path.

    Creates the parent folder.  Raises ``OSError`` when it cannot be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    items = [e.to_dict() for e in examples]
    path.write_text(json.dumps(items, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path
