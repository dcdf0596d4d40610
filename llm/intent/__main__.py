"""``python -m llm.intent convert|check|finetune|evaluate`` (see :mod:`llm.intent.cli`)."""
from llm.intent.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
