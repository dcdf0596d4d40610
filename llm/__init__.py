"""Chat models: the :class:`ChatModel` interface, the transformers implementation,
the model loader and the built-in demo model.

``import llm`` is cheap: the names that need torch/transformers (``HFChatModel``,
``load_chat_model``, ``build_demo_model``, ``DEFAULT_MODEL_PATH``) are imported on
first use (PEP 562 module ``__getattr__``).
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from llm.base import ChatModel, Generation, GenerationError, GenerationParams, Message, ModelLoadError, Usage
from llm.history import build_messages, trim_history

if TYPE_CHECKING:  # for type checkers and IDEs; at run time see __getattr__
    from llm.demo import build_demo_model
    from llm.hf import HFChatModel
    from llm.loader import DEFAULT_MODEL_PATH, load_chat_model

_LAZY = {
    "HFChatModel": "llm.hf",
    "load_chat_model": "llm.loader",
    "DEFAULT_MODEL_PATH": "llm.loader",
    "build_demo_model": "llm.demo",
}

__all__ = [
    "ChatModel",
    "GenerationParams",
    "Generation",
    "Usage",
    "Message",
    "GenerationError",
    "ModelLoadError",
    "HFChatModel",
    "load_chat_model",
    "build_demo_model",
    "build_messages",
    "trim_history",
    "DEFAULT_MODEL_PATH",
]


def __getattr__(name: str) -> Any:
    """Import the heavy re-exports on first access."""
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
