"""Model backends, registered rather than chosen by if/else: ``--llm-backend`` takes its
choices from :data:`BACKENDS`.

Each backend module declares a module-level ``BACKEND = Backend(...)``: its name, its
own command-line flags and how it loads a :class:`~llm.base.ChatModel` from the parsed
settings. The modules are cheap to import (torch, transformers and openai are imported
inside the load functions), so the flag parser can list them all. Adding a backend
(llama.cpp, an in-process vLLM) is one new module with a ``BACKEND``, named in
:data:`BUILTIN_MODULES` or advertised by an installed package under the entry-point
group :data:`ENTRY_POINT_GROUP` (the value is the ``Backend`` object).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, Callable

from llm.base import ChatModel

logger = logging.getLogger(__name__)

#: Modules holding the built-in backends, in the order ``--help`` lists them.
BUILTIN_MODULES = ("llm.loader", "llm.remote")
#: Entry-point group under which installed packages may add backends.
ENTRY_POINT_GROUP = "chatllm_webui.llm_backends"


@dataclass(frozen=True)
class Flag:
    """One command-line flag a backend owns, as ``argparse.add_argument`` takes it.

    Attributes:
        name: the flag without dashes, dash-spelled (``llm-base-url``); the settings field is
            the underscore spelling (``llm_base_url``) and must exist on ``webui.settings.Settings``,
            whose value is the default.
        kwargs: ``add_argument`` keyword arguments (``help``, ``type``, ``choices``, ``action`` ...).
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def dest(self) -> str:
        """The settings field the flag fills."""
        return self.name.replace("-", "_")


@dataclass(frozen=True)
class Backend:
    """A way to get a chat model.

    Attributes:
        name: the ``--llm-backend`` value.
        summary: one line for ``--help``.
        load: ``load(settings) -> ChatModel``; raises :class:`~llm.base.ModelLoadError` when the
            model cannot be loaded or reached (the message names the fix).
        flags: the flags only this backend reads.
        check: ``check(settings) -> list of problems`` (each naming the flag to fix), run
            when this backend is chosen; None checks nothing.
    """

    name: str
    summary: str
    load: Callable[[Any], ChatModel]
    flags: tuple[Flag, ...] = ()
    check: Callable[[Any], list[str]] | None = None


def _discover() -> dict[str, Backend]:
    found: dict[str, Backend] = {}
    for module in BUILTIN_MODULES:
        backend = import_module(module).BACKEND
        found[backend.name] = backend
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            backend = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not stop the server
            logger.warning("the LLM backend plug-in %s could not be loaded (%s): uninstall it or fix it", ep.name, exc)
            continue
        if not isinstance(backend, Backend) or backend.name in found:
            logger.warning("the LLM backend plug-in %s is not a new llm.backends.Backend: ignored", ep.name)
            continue
        found[backend.name] = backend
    return found


_REGISTRY: dict[str, Backend] | None = None


def backends() -> dict[str, Backend]:
    """Every registered backend by name (built-ins first), discovered on first call."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _discover()
    return _REGISTRY


def get_backend(name: str) -> Backend:
    """The backend called ``name``.

    Raises:
        ValueError: no such backend; the message lists the registered ones.
    """
    try:
        return backends()[name]
    except KeyError:
        raise ValueError(f"unknown --llm-backend {name!r}: choose one of {', '.join(backends())}") from None


def load_chat_model_for(settings: Any) -> ChatModel:
    """Load the chat model of ``settings.llm_backend`` (see :attr:`Backend.load`).

    Raises:
        ValueError: unknown backend. llm.base.ModelLoadError: the backend's load failed.
    """
    return get_backend(settings.llm_backend).load(settings)
