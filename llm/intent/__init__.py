"""Intent recognition: labelled utterances -> a fine-tuned chat model that answers with function calls.

The loop of Alibaba Cloud PAI's "LLM-based intent recognition solution"
(https://help.aliyun.com/zh/pai/use-cases/llm-based-intent-recognition-solution),
done with this project's own tools:

* :mod:`llm.intent.data` -- the training-data format (a JSON list of
  ``{"instruction", "output"}``) and the system prompt;
* :mod:`llm.intent.calls` -- parsing ``play_music()`` / ``weather_search(杭州)`` outputs;
* :mod:`llm.intent.manifest` -- converting iTAG annotation manifests (JSON Lines);
* :mod:`llm.intent.check` -- the data check against the published guidance;
* :mod:`llm.intent.finetune` -- full / LoRA / QLoRA fine-tuning (transformers ``Trainer`` + peft);
* :mod:`llm.intent.evaluate` -- intent and parameter accuracy;
* :mod:`llm.intent.predict` -- getting predictions from a local model folder or a running server.

``python -m llm.intent convert|check|finetune|evaluate --help`` is the command line.
Importing this package is cheap: torch and transformers are imported only by the
fine-tuning and local-model code, when called.
"""
from __future__ import annotations

from llm.intent.calls import FunctionCall, parse_calls
from llm.intent.data import (
    INTENT_SEPARATOR,
    SYSTEM_PROMPT,
    TURN_SEPARATOR,
    IntentDataError,
    IntentExample,
    join_turns,
    load_examples,
    save_examples,
)

__all__ = [
    "FunctionCall",
    "parse_calls",
    "INTENT_SEPARATOR",
    "SYSTEM_PROMPT",
    "TURN_SEPARATOR",
    "IntentDataError",
    "IntentExample",
    "join_turns",
    "load_examples",
    "save_examples",
]
