"""The page's conversation sidebar: list, new, open, rename, delete, export.

The browser's owner id (:func:`webui.conversations.new_owner_id`) lives in a
``gr.BrowserState`` (localStorage) and, for the handlers, in a per-session
``gr.State``; which conversation a tab shows is another ``gr.State`` (None = a
new one, created in the store by its first finished round).  With accounts
(``--auth-file``) the owner is the signed-in user instead, taken from each event's
request (:meth:`ConversationHandlers.owner_of`), never from the session's state.  All reads and writes
go through :class:`~webui.conversations.ConversationStore`, scoped by the owner.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import gradio as gr

from .i18n import t
from .conversations import (ConversationNotFound, ConversationStore, new_owner_id, user_owner, valid_id,
                            valid_owner)

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("markdown", "json")


def when(ts: float, now: float | None = None) -> str:
    """A conversation's time in the sidebar: ``HH:MM`` today, else ``YYYY-MM-DD`` (server's local time)."""
    moment, today = datetime.fromtimestamp(ts), datetime.fromtimestamp(now or time.time())
    return moment.strftime("%H:%M") if moment.date() == today.date() else moment.strftime("%Y-%m-%d")


def browser_state_secret(folder: str | Path, name: str = "page-secret") -> str:
    """The key ``gr.BrowserState`` encrypts the browser's owner id with, kept in
    ``folder/page-secret`` (created once, mode 0600) so the id still decrypts after a
    restart (Gradio's default is a new random key per start). Another ``name`` keeps
    another key (``signin-secret``: the sign-in sessions' key, :mod:`webui.signin`)."""
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="ascii").strip()
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_urlsafe(32))
        f.flush()
        os.fsync(f.fileno())
    return path.read_text(encoding="ascii").strip()


class ConversationHandlers:
    """Sidebar handlers over one :class:`ConversationStore`; ``owner`` and
    ``conversation_id`` arguments come from the session's states.

    Args:
        store: the conversations.
        export_dir: where exports are written (default: the system's temporary folder).
        accounts: True with ``--auth-file``: the owner is the request's signed-in user (:meth:`owner_of`).
    """

    def __init__(self, store: ConversationStore, export_dir: str | Path | None = None, accounts: bool = False):
        self.store = store
        self.export_dir = Path(export_dir or tempfile.gettempdir()) / "chatllm-exports"
        self.accounts = accounts

    def owner_of(self, owner: str | None, request: Any = None) -> str | None:
        """The owner a page event acts for. Without accounts: ``owner``, the browser's id from the
        session's state. With accounts: the signed-in user of ``request`` (``gr.Request.username``,
        set by Gradio from the sign-in cookie), whatever the state says -- a client that sends
        another session's hash still acts as itself; None (nothing listed or kept) when signed out."""
        if not self.accounts:
            return owner
        name = getattr(request, "username", None)
        return user_owner(name) if name else None

    def start(self, owner: Any) -> str:
        """The browser's owner id: the one it kept, or a new random one when it has none (or an invalid one)."""
        return owner if valid_id(owner) else new_owner_id()

    def choices(self, owner: str | None, tab: str) -> list[tuple[str, str]]:
        """Sidebar entries of ``tab``: (``"title · time"``, id), most recent first."""
        if not valid_owner(owner):
            return []
        return [(f"{c.title or '…'} · {when(c.updated_at)}", c.id) for c in self.store.list(owner, tab)]

    def listing(self, owner: str | None, tab: str, selected: str | None = None) -> dict:
        """Update for a tab's conversation list, ``selected`` picked (None: none)."""
        entries = self.choices(owner, tab)
        ids = {i for _, i in entries}
        return gr.update(choices=entries, value=selected if selected in ids else None)

    def keep(self, owner: str | None, conversation_id: str | None, tab: str, question: str, answer: str,
             sources: Sequence[dict] = (), knowledge_base: str | None = None, lang: str = "en") -> str | None:
        """Store a finished round (committed before it is shown as done); creates the
        conversation on its first round. Returns the conversation id (None: not kept,
        e.g. an API client without an owner). A failing store is logged, never raised."""
        if not valid_owner(owner):
            return conversation_id
        try:
            try:
                if not valid_id(conversation_id):
                    raise ConversationNotFound(conversation_id)
                self.store.add_round(owner, conversation_id, question, answer, sources, knowledge_base)
            except ConversationNotFound:  # new, or deleted meanwhile (another window): start it anew
                conversation_id = self.store.create(owner, tab, knowledge_base)
                self.store.add_round(owner, conversation_id, question, answer, sources, knowledge_base)
        except Exception:  # noqa: BLE001 - the chat goes on without being kept
            log.exception("could not keep the conversation round")
            gr.Warning(t(lang, "not_saved"))
        return conversation_id

    def open(self, owner: str | None, conversation_id: str | None, lang: str = "en"):
        """Open a conversation: (rounds, sources per round, knowledge base, id).

        Raises:
            gr.Error: no such conversation of this browser.
        """
        try:
            conversation = self.store.get(owner, conversation_id)
        except ConversationNotFound:
            raise gr.Error(t(lang, "conversation_gone")) from None
        return conversation

    def rename(self, owner: str | None, conversation_id: str | None, title: str, tab: str, lang: str = "en"):
        """Rename the open conversation: (list update, emptied title box).

        Raises:
            gr.Error: none open, an empty title, or it is gone.
        """
        if not conversation_id:
            raise gr.Error(t(lang, "open_first"))
        try:
            self.store.rename(owner, conversation_id, title or "")
        except ValueError:
            raise gr.Error(t(lang, "title_empty")) from None
        except ConversationNotFound:
            raise gr.Error(t(lang, "conversation_gone")) from None
        return self.listing(owner, tab, conversation_id), ""

    def delete(self, owner: str | None, conversation_id: str | None, tab: str, lang: str = "en") -> dict:
        """Delete the open conversation: the list update (the tab then shows a new conversation).

        Raises:
            gr.Error: none open, or it is gone.
        """
        if not conversation_id:
            raise gr.Error(t(lang, "open_first"))
        try:
            self.store.delete(owner, conversation_id)
        except ConversationNotFound:
            raise gr.Error(t(lang, "conversation_gone")) from None
        return self.listing(owner, tab)

    def export(self, owner: str | None, conversation_id: str | None, fmt: str, lang: str = "en") -> str:
        """Write the open conversation as Markdown or JSON to a file; returns its path (for download).

        Raises:
            gr.Error: none open (or it is gone), or an unknown format.
        """
        if fmt not in EXPORT_FORMATS:
            raise gr.Error(f"Unknown export format {fmt!r}: use markdown or json.")
        if not conversation_id:
            raise gr.Error(t(lang, "open_first"))
        conversation = self.open(owner, conversation_id, lang)
        text = (conversation.to_markdown() if fmt == "markdown"
                else json.dumps(conversation.to_dict(), ensure_ascii=False, indent=2))
        folder = self.export_dir / conversation.id
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"conversation.{'md' if fmt == 'markdown' else 'json'}"
        path.write_text(text, encoding="utf-8")
        return str(path)
