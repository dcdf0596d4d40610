"""Check a training set against the published data-preparation guidance.

PAI's LLM-based intent recognition solution ("数据准备策略",
https://help.aliyun.com/zh/pai/use-cases/llm-based-intent-recognition-solution)
recommends:

* at least 50 to 100 examples per intent (:data:`MIN_PER_INTENT` = 50 is the
  lower end, below which we warn);
* roughly balanced intents -- no number is given; we warn when the largest intent
  has more than :data:`MAX_IMBALANCE` (3) times the examples of the smallest (our
  threshold);
* when multi-turn examples are present, at least 20% as many as single-turn ones
  (:data:`MIN_MULTI_TURN_RATIO`);
* every intent that occurs in multi-turn examples also occurring in single-turn ones.

We also warn about outputs with no recognisable function call and about the same
instruction labelled differently.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Sequence

from llm.intent.calls import intent_names
from llm.intent.data import IntentExample

MIN_PER_INTENT = 50
MAX_IMBALANCE = 3.0
MIN_MULTI_TURN_RATIO = 0.2


@dataclass(frozen=True)
class IntentCount:
    """How often one intent occurs.

    Attributes:
        intent: the function name.
        examples: examples whose output contains it (a multi-intent example counts
            for each of its intents).
        single_turn: of those, single-turn examples.
        multi_turn: of those, multi-turn examples.
    """

    intent: str
    examples: int
    single_turn: int
    multi_turn: int


@dataclass(frozen=True)
class CheckReport:
    """The result of :func:`check_examples`.

    Attributes:
        total: number of examples.
        single_turn / multi_turn: examples with one / several user turns.
        multi_intent: examples whose output has more than one call.
        counts: per intent, most frequent first (ties by name).
        warnings: human-readable warnings; empty when the guidance is met.
    """

    total: int
    single_turn: int
    multi_turn: int
    multi_intent: int
    counts: tuple[IntentCount, ...]
    warnings: tuple[str, ...]


def check_examples(
    examples: Sequence[IntentExample],
    *,
    min_per_intent: int = MIN_PER_INTENT,
    max_imbalance: float = MAX_IMBALANCE,
    min_multi_turn_ratio: float = MIN_MULTI_TURN_RATIO,
) -> CheckReport:
    """Count examples per intent and warn where the guidance (module docstring) is not met.

    Args:
        examples: the training set.
        min_per_intent: warn for an intent with fewer examples.
        max_imbalance: warn when largest / smallest intent count exceeds this.
        min_multi_turn_ratio: warn when multi-turn examples exist and are fewer than
            this fraction of the single-turn ones.

    Returns:
        A :class:`CheckReport`.
    """
    per_intent: dict[str, Counter] = defaultdict(Counter)
    no_call: list[int] = []
    multi_intent = 0
    labels_of: dict[str, set[str]] = defaultdict(set)
    for index, example in enumerate(examples):
        names = intent_names(example.output)
        if not names:
            no_call.append(index)
        multi_intent += len(names) > 1
        kind = "multi_turn" if example.is_multi_turn else "single_turn"
        for name in dict.fromkeys(names):  # an intent twice in one output counts once
            per_intent[name][kind] += 1
        labels_of[example.instruction].add(example.output)
    counts = tuple(sorted(
        (IntentCount(name, c["single_turn"] + c["multi_turn"], c["single_turn"], c["multi_turn"])
         for name, c in per_intent.items()),
        key=lambda c: (-c.examples, c.intent),
    ))
    multi_turn = sum(e.is_multi_turn for e in examples)
    single_turn = len(examples) - multi_turn
    warnings: list[str] = []
    if no_call:
        shown = ", ".join(str(i) for i in no_call[:10]) + (" ..." if len(no_call) > 10 else "")
        warnings.append(
            f"{len(no_call)} example(s) have no function call in their output (items {shown}): "
            "write outputs as name(arg1,arg2), several separated by ';'"
        )
    few = [c for c in counts if c.examples < min_per_intent]
    if few:
        listed = ", ".join(f"{c.intent} ({c.examples})" for c in few)
        warnings.append(
            f"{len(few)} intent(s) have fewer than {min_per_intent} examples: {listed}; the published guidance is "
            "at least 50-100 examples per intent"
        )
    if len(counts) > 1 and counts[-1].examples * max_imbalance < counts[0].examples:
        warnings.append(
            f"intents are unbalanced: {counts[0].intent} has {counts[0].examples} examples, {counts[-1].intent} "
            f"only {counts[-1].examples} (more than {max_imbalance:g}x); the published guidance is to keep the "
            "intents roughly balanced"
        )
    if multi_turn and multi_turn < min_multi_turn_ratio * single_turn:
        warnings.append(
            f"{multi_turn} multi-turn example(s) are {multi_turn / max(single_turn, 1):.0%} of the {single_turn} "
            f"single-turn ones; the published guidance is at least {min_multi_turn_ratio:.0%}"
        )
    only_multi = [c.intent for c in counts if c.multi_turn and not c.single_turn]
    if only_multi:
        warnings.append(
            f"intent(s) found only in multi-turn examples: {', '.join(only_multi)}; the published guidance is that "
            "multi-turn intents also occur as single-turn examples"
        )
    conflicting = [text for text, outputs in labels_of.items() if len(outputs) > 1]
    if conflicting:
        shown = "; ".join(repr(t) for t in conflicting[:5]) + (" ..." if len(conflicting) > 5 else "")
        warnings.append(f"{len(conflicting)} instruction(s) are labelled differently in different examples: {shown}")
    return CheckReport(len(examples), single_turn, multi_turn, multi_intent, counts, tuple(warnings))


def format_report(report: CheckReport) -> str:
    """The report as plain text: totals, a per-intent table, then the warnings (or "no warnings")."""
    width = max([len("intent")] + [len(c.intent) for c in report.counts])
    lines = [
        f"{report.total} examples: {report.single_turn} single-turn, {report.multi_turn} multi-turn, "
        f"{report.multi_intent} with several intents; {len(report.counts)} intents",
        "",
        f"{'intent':<{width}}  {'examples':>8}  {'single':>6}  {'multi':>5}",
    ]
    lines += [f"{c.intent:<{width}}  {c.examples:>8}  {c.single_turn:>6}  {c.multi_turn:>5}" for c in report.counts]
    lines.append("")
    lines += [f"WARNING: {w}" for w in report.warnings] or ["no warnings: the published data guidance is met"]
    return "\n".join(lines)
