"""Score intent predictions: intent accuracy and parameter accuracy, per intent and overall.

The two measures of the evaluation in PAI's LLM-based intent recognition solution
(https://help.aliyun.com/zh/pai/use-cases/llm-based-intent-recognition-solution):

* **intent accuracy**: the share of examples whose predicted function name equals
  the expected one;
* **parameter accuracy**: the share whose function name *and* set of arguments
  equal the expected ones (argument order does not matter).

Made robust here: both sides are parsed with :func:`llm.intent.calls.parse_calls`
(no parentheses, extra or trailing text, full-width punctuation), and an output
with several intents (``a();b(x)``) is compared as a multiset of calls -- every
expected intent predicted once, none extra, in any order.  A prediction with no
call at all is wrong on both counts.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

from llm.intent.calls import FunctionCall, parse_calls
from llm.intent.data import INTENT_SEPARATOR


@dataclass(frozen=True)
class Prediction:
    """One test example and the model's answer.

    Attributes:
        instruction: the user's words.
        expected: the label, e.g. ``"weather_search(杭州)"``.
        predicted: the model's raw answer.
    """

    instruction: str
    expected: str
    predicted: str


def _call_key(call: FunctionCall) -> tuple[str, frozenset[str]]:
    return call.name, frozenset(call.args)


def score(expected: str, predicted: str) -> tuple[bool, bool]:
    """Whether ``predicted`` gets the intent(s) and the parameters of ``expected`` right.

    Returns:
        ``(intent_correct, params_correct)``: the multiset of function names is
        equal; the multiset of (name, set of arguments) is equal.  ``params_correct``
        implies ``intent_correct``.  Both False when ``expected`` has no call.
    """
    want, got = parse_calls(expected), parse_calls(predicted)
    if not want:
        return False, False
    intent_ok = Counter(c.name for c in want) == Counter(c.name for c in got)
    params_ok = intent_ok and Counter(map(_call_key, want)) == Counter(map(_call_key, got))
    return intent_ok, params_ok


def intent_key(expected: str) -> str:
    """The per-intent table's row for a label: its function names joined by ``;`` (``"a();b(x)"`` -> ``"a;b"``)."""
    names = [c.name for c in parse_calls(expected)]
    return INTENT_SEPARATOR.join(names) if names else "(no call)"


@dataclass(frozen=True)
class IntentRow:
    """One row of the per-intent table.

    Attributes:
        intent: the expected function name(s) (:func:`intent_key`).
        examples: test examples with that label.
        intent_accuracy / param_accuracy: in [0, 1] over those examples.
    """

    intent: str
    examples: int
    intent_accuracy: float
    param_accuracy: float


@dataclass(frozen=True)
class EvaluationReport:
    """The result of :func:`evaluate_predictions`.

    Attributes:
        examples: number of test examples.
        intent_accuracy / param_accuracy: overall, in [0, 1].
        per_intent: one row per expected intent (key), sorted by name.
        misses: the predictions with a wrong intent or wrong parameters, in input order.
        predictions: every prediction, in input order.
    """

    examples: int
    intent_accuracy: float
    param_accuracy: float
    per_intent: tuple[IntentRow, ...]
    misses: tuple[Prediction, ...]
    predictions: tuple[Prediction, ...]

    def to_dict(self) -> dict:
        """JSON-ready form (for ``--report``): scores, table, misses and all predictions."""
        def pred(p: Prediction) -> dict:
            intent_ok, params_ok = score(p.expected, p.predicted)
            return {"instruction": p.instruction, "expected": p.expected, "predicted": p.predicted,
                    "intent_correct": intent_ok, "params_correct": params_ok}

        return {
            "examples": self.examples,
            "intent_accuracy": self.intent_accuracy,
            "param_accuracy": self.param_accuracy,
            "per_intent": [vars(row) for row in self.per_intent],
            "misses": [pred(p) for p in self.misses],
            "predictions": [pred(p) for p in self.predictions],
        }


def evaluate_predictions(predictions: Iterable[Prediction]) -> EvaluationReport:
    """Score ``predictions`` (see the module docstring for the measures).

    Raises:
        ValueError: no predictions.
    """
    predictions = tuple(predictions)
    if not predictions:
        raise ValueError("no predictions to evaluate")
    rows: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # examples, intent ok, params ok
    misses = []
    intent_total = params_total = 0
    for p in predictions:
        intent_ok, params_ok = score(p.expected, p.predicted)
        row = rows[intent_key(p.expected)]
        row[0] += 1
        row[1] += intent_ok
        row[2] += params_ok
        intent_total += intent_ok
        params_total += params_ok
        if not params_ok:
            misses.append(p)
    n = len(predictions)
    table = tuple(IntentRow(key, r[0], r[1] / r[0], r[2] / r[0]) for key, r in sorted(rows.items()))
    return EvaluationReport(n, intent_total / n, params_total / n, table, tuple(misses), predictions)


def format_report(report: EvaluationReport, *, max_misses: int = 50) -> str:
    """Plain-text report: the two accuracies, the per-intent table and up to ``max_misses`` misses."""
    width = max([len("intent")] + [len(r.intent) for r in report.per_intent])
    lines = [
        f"examples: {report.examples}",
        f"intent accuracy:    {report.intent_accuracy:.4f}",
        f"parameter accuracy: {report.param_accuracy:.4f}",
        "",
        f"{'intent':<{width}}  {'examples':>8}  {'intent acc':>10}  {'param acc':>9}",
    ]
    lines += [f"{r.intent:<{width}}  {r.examples:>8}  {r.intent_accuracy:>10.4f}  {r.param_accuracy:>9.4f}"
              for r in report.per_intent]
    lines += ["", f"misses: {len(report.misses)}"]
    for p in report.misses[:max_misses]:
        lines.append(f"  {p.instruction!r}: expected {p.expected!r}, got {p.predicted!r}")
    if len(report.misses) > max_misses:
        lines.append(f"  ... and {len(report.misses) - max_misses} more (see --report)")
    return "\n".join(lines)


def predictions_from(examples: Sequence, answers: Sequence[str]) -> list[Prediction]:
    """Pair test examples (with ``instruction``/``output``) with the model's answers, in order.

    Raises:
        ValueError: the two lengths differ.
    """
    if len(examples) != len(answers):
        raise ValueError(f"{len(examples)} examples but {len(answers)} answers")
    return [Prediction(e.instruction, e.output, a) for e, a in zip(examples, answers)]
