"""Convert iTAG annotation manifests (JSON Lines) into ``{"instruction", "output"}`` examples.

iTAG (PAI's labelling service) exports one JSON object per line: the input item
under ``data`` and each labelling job's result under a key ``label-<job id>``.
Two shapes of the result occur (both in PAI's intent-recognition solution):

* older: the label text is ``label-<id>.results[0].data``::

      {"data": {"source": "我想听音乐"},
       "label-1785714133418250240": {"results": [{"data": "play_music()"}]}}

* newer: ``label-<id>.results[0].MarkResult`` is a JSON *string* whose
  ``annotations[0].labels.output`` is the label::

      {"data": {"source": "我想听音乐"},
       "label-1785714133418250240": {"results": [{"MarkResult":
           "{\\"annotations\\": [{\\"labels\\": {\\"output\\": \\"play_music()\\"}}]}"}]}}

Where the utterance comes from (our assumption, after iTAG's text templates whose
input manifest lines are ``{"data": {"source": ...}}``): ``data.source``, else
``data.instruction``, ``data.text``, ``data.query``, else the same keys at the top
level.  A source that is a list (or a string holding a JSON list) is a multi-turn
conversation: its user turns are joined by :func:`llm.intent.data.join_turns`.

A label that is a list of strings is several intents (joined by ``;``); a label
object is read at its ``output`` key (or its only value).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from llm.intent.data import INTENT_SEPARATOR, IntentDataError, IntentExample, join_turns

#: Keys tried, in order, for the utterance; first under ``data``, then at the top level.
SOURCE_KEYS = ("source", "instruction", "text", "query")
LABEL_PREFIX = "label-"


class ManifestLineError(ValueError):
    """One manifest line cannot be converted; the message says what is missing."""


@dataclass(frozen=True)
class SkippedLine:
    """A manifest line that was not converted.

    Attributes:
        line: 1-based line number in the manifest.
        reason: why, e.g. ``"not JSON: Expecting value ..."``.
    """

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class ConversionResult:
    """What :func:`convert_manifest` produced.

    Attributes:
        examples: the converted examples, in manifest order.
        skipped: the lines that were skipped, with their reasons.
        lines: how many non-blank lines were read.
    """

    examples: list[IntentExample] = field(default_factory=list)
    skipped: list[SkippedLine] = field(default_factory=list)
    lines: int = 0


def _as_turns(value: Any) -> list | None:
    """``value`` as a list of turns if it is one (or a string holding a JSON list), else ``None``."""
    if isinstance(value, list):
        return value
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, list) else None
    return None


def instruction_of(record: dict) -> str:
    """The utterance of one manifest record (see the module docstring for the keys tried).

    Raises:
        ManifestLineError: no source text is found, or a conversation has no user turn.
    """
    places = [record.get("data"), record]
    for place in places:
        if not isinstance(place, dict):
            continue
        for key in SOURCE_KEYS:
            value = place.get(key)
            if value is None:
                continue
            turns = _as_turns(value)
            if turns is not None:
                try:
                    return join_turns(turns)
                except IntentDataError as exc:
                    raise ManifestLineError(f"the conversation in '{key}' is not usable: {exc}") from None
            if isinstance(value, str) and value.strip():
                return value.strip()
    raise ManifestLineError(
        "no utterance found: expected text at data.source (or data.instruction/text/query, "
        "or those keys at the top level)"
    )


def _label_text(value: Any) -> str:
    """Normalise a label value (text, list of texts, or ``{"output": ...}``) to one output string."""
    if isinstance(value, dict):
        if "output" in value:
            value = value["output"]
        elif len(value) == 1:
            value = next(iter(value.values()))
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = INTENT_SEPARATOR.join(v.strip() for v in value if v.strip())
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ManifestLineError(f"the label is not text: {value!r}")


def _label_from_result(result: Any) -> str:
    """The label of one iTAG result object, either export shape."""
    if not isinstance(result, dict):
        raise ManifestLineError(f"results[0] is not an object: {result!r}")
    if "MarkResult" in result:
        mark = result["MarkResult"]
        if isinstance(mark, str):
            try:
                mark = json.loads(mark)
            except json.JSONDecodeError as exc:
                raise ManifestLineError(f"MarkResult is not valid JSON ({exc})") from None
        try:
            output = mark["annotations"][0]["labels"]["output"]
        except (KeyError, IndexError, TypeError):
            raise ManifestLineError("MarkResult has no annotations[0].labels.output") from None
        return _label_text(output)
    if "data" in result:
        return _label_text(result["data"])
    raise ManifestLineError("results[0] has neither 'MarkResult' (newer export) nor 'data' (older export)")


def output_of(record: dict, label_key: str | None = None) -> str:
    """The label of one manifest record.

    Args:
        record: the parsed manifest line.
        label_key: the ``label-<id>`` key to read; ``None`` tries every key that
            starts with ``label-``, in order, and takes the first one that holds a label.

    Raises:
        ManifestLineError: no (usable) label; the message names the key and what is wrong.
    """
    keys = [label_key] if label_key else [k for k in record if k.startswith(LABEL_PREFIX)]
    if not keys:
        raise ManifestLineError("no 'label-<id>' key: is this an exported (labelled) manifest?")
    problems = []
    for key in keys:
        job = record.get(key)
        if job is None:
            problems.append(f"no key {key!r}")
            continue
        results = job.get("results") if isinstance(job, dict) else None
        if not isinstance(results, list) or not results:
            problems.append(f"{key}.results is missing or empty")
            continue
        try:
            return _label_from_result(results[0])
        except ManifestLineError as exc:
            problems.append(f"{key}: {exc}")
    raise ManifestLineError("; ".join(problems))


def convert_manifest(lines: Iterable[str], *, label_key: str | None = None) -> ConversionResult:
    """Convert manifest lines to examples; bad lines are skipped and reported, never raised.

    Args:
        lines: the manifest's lines (JSON Lines; blank lines are ignored).
        label_key: see :func:`output_of`.

    Returns:
        A :class:`ConversionResult`; ``skipped`` names each bad line (1-based) and why.
    """
    result = ConversionResult()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        result.lines += 1
        try:
            record = json.loads(line.strip())
        except json.JSONDecodeError as exc:
            result.skipped.append(SkippedLine(number, f"not JSON ({exc})"))
            continue
        if not isinstance(record, dict):
            result.skipped.append(SkippedLine(number, f"not a JSON object but a {type(record).__name__}"))
            continue
        try:
            result.examples.append(IntentExample(instruction_of(record), output_of(record, label_key)))
        except ManifestLineError as exc:
            result.skipped.append(SkippedLine(number, str(exc)))
    return result


def convert_manifest_file(path: str | Path, *, label_key: str | None = None) -> ConversionResult:
    """:func:`convert_manifest` on a UTF-8 manifest file.

    Raises:
        IntentDataError: the file cannot be read (the message names it).
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8-sig", errors="replace") as f:
            return convert_manifest(f, label_key=label_key)
    except OSError as exc:
        raise IntentDataError(f"cannot read the manifest {str(path)!r}: {exc.strerror or exc}") from exc
