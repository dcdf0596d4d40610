"""Parse an intent label or a model's answer into function calls.

A label is ``name(arg1,arg2)``, several joined by ``;`` (PAI's format, see
:mod:`llm.intent.data`).  A model's answer may deviate: no parentheses
(``play_music``), extra text around the call (``好的：weather_search(杭州)。``),
trailing text after it (a model that does not stop), full-width separators.
:func:`parse_calls` reads all of them the same way, so the evaluation compares
what the model meant, not how it punctuated it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# A function name is an ASCII identifier (dots allowed: "music.play"), as in the published labels.
_NAME = r"[A-Za-z_][A-Za-z0-9_.]*"
_CALL = re.compile(rf"({_NAME})\s*[(（]([^()（）]*)[)）]")
_UNCLOSED_CALL = re.compile(rf"({_NAME})\s*[(（]([^()（）]*)$")
_BARE = re.compile(rf"{_NAME}")
_SEGMENTS = re.compile(r"[;；\n]")
_ARG_SPLIT = re.compile(r"[,，]")
_QUOTES = "'\"“”‘’「」"


@dataclass(frozen=True)
class FunctionCall:
    """One intent: a function name and its arguments.

    Attributes:
        name: the function name, e.g. ``"weather_search"``.
        args: the arguments as written, stripped of spaces and quotes, e.g. ``("杭州",)``.
    """

    name: str
    args: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.name}({','.join(self.args)})"


def split_args(text: str) -> tuple[str, ...]:
    """Split the text between the parentheses at ``,`` / ``，``; strip spaces and quotes; drop empties.

    ``"杭州, '明天'"`` -> ``("杭州", "明天")``; ``""`` -> ``()``.
    """
    args = (a.strip().strip(_QUOTES).strip() for a in _ARG_SPLIT.split(text))
    return tuple(a for a in args if a)


def parse_calls(text: str) -> list[FunctionCall]:
    """Every function call in ``text``, in order.

    The text is cut into segments at ``;``, ``；`` and newlines.  In each segment,
    every ``name(args)`` (ASCII or full-width parentheses) is a call and the text
    around it is ignored; failing that, a call left unclosed at the end of the
    segment (``navigate_to(西湖``, an answer cut short) counts, its arguments
    running to the end; a segment with no parentheses is a call with no
    arguments only if it is a bare name (``play_music``), otherwise it is prose and
    ignored.  Names are ASCII identifiers (dots allowed), like the published
    labels; Chinese function names are not recognised.  So
    ``"weather_search(杭州);play_music()"``, ``"好的，weather_search(杭州)"``
    and ``"play_music"`` all parse, and a sentence with no call gives ``[]``.

    Args:
        text: a label or a model's answer.

    Returns:
        The calls; empty when there is none.
    """
    calls: list[FunctionCall] = []
    for segment in _SEGMENTS.split(text):
        found = _CALL.findall(segment) or _UNCLOSED_CALL.findall(segment.rstrip())
        if found:
            calls.extend(FunctionCall(name, split_args(args)) for name, args in found)
        elif _BARE.fullmatch(bare := segment.strip().strip("。.!！")):
            calls.append(FunctionCall(bare))
    return calls


def intent_names(text: str) -> list[str]:
    """The function names of :func:`parse_calls` (``"a(x);b()"`` -> ``["a", "b"]``)."""
    return [call.name for call in parse_calls(text)]
