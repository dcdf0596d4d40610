"""Conversations that are kept: one SQLite file (``<data dir>/conversations.sqlite3``).

Without accounts, each browser is an *owner*: a random id (:func:`new_owner_id`, 192
bits) the page keeps in the browser's ``gr.BrowserState``.  With accounts
(``--auth-file``), the owner is the signed-in user, ``user:<name>`` (:func:`user_owner`),
which no browser id can be.  Every query names its owner, and conversation ids are
random too (128 bits), so no owner reads another's conversations, even by guessing an
id: a foreign id answers exactly like a missing one.

The file is in WAL mode with ``synchronous=FULL`` and every finished round is one
committed transaction, so a killed server (``kill -9``) loses at most the answer being
generated, never an earlier round.  ``PRAGMA user_version`` holds the schema version;
:data:`MIGRATIONS` upgrade an older file in place, in one transaction each.
"""
from __future__ import annotations

import json
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

#: ``owner`` / conversation ids are URL-safe base64 tokens (secrets.token_urlsafe).
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
#: A signed-in user's owner id: this prefix and the user name (:data:`webui.accounts.NAME_PATTERN`).
USER_OWNER_PREFIX = "user:"
TITLE_CHARS = 60  # a title longer than this (from the first question) is cut, with "…"
TABS = ("chat", "langchain")

#: version -> SQL that upgrades a file of version - 1 to it (version 0 = empty file).
MIGRATIONS: dict[int, str] = {
    1: """
        CREATE TABLE conversations (
            id TEXT PRIMARY KEY, owner TEXT NOT NULL, tab TEXT NOT NULL, title TEXT NOT NULL,
            created_at REAL NOT NULL, updated_at REAL NOT NULL);
        CREATE INDEX conversations_owner ON conversations (owner, updated_at);
        CREATE TABLE rounds (
            conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            position INTEGER NOT NULL, question TEXT NOT NULL, answer TEXT NOT NULL,
            created_at REAL NOT NULL, PRIMARY KEY (conversation_id, position));
    """,
    # a LangChain-tab conversation remembers its knowledge base and each answer's sources
    2: """
        ALTER TABLE conversations ADD COLUMN knowledge_base TEXT;
        ALTER TABLE rounds ADD COLUMN sources TEXT NOT NULL DEFAULT '[]';
    """,
}
SCHEMA_VERSION = max(MIGRATIONS)


class ConversationNotFound(KeyError):
    """No conversation with this id for this owner (missing, deleted, or someone else's)."""


class NewerSchemaError(RuntimeError):
    """The file was written by a newer version of this program (its schema version is higher)."""


def new_owner_id() -> str:
    """A fresh random owner id for a browser (``secrets.token_urlsafe(24)``: 32 characters)."""
    return secrets.token_urlsafe(24)


def valid_id(value: Any) -> bool:
    """Whether ``value`` looks like an owner or conversation id (see :data:`ID_PATTERN`)."""
    return isinstance(value, str) and bool(ID_PATTERN.match(value))


def user_owner(name: str) -> str:
    """The owner id of signed-in user ``name``: ``user:<name>``.

    Raises:
        ValueError: ``name`` is not a valid user name.
    """
    owner = USER_OWNER_PREFIX + (name if isinstance(name, str) else "")
    if not valid_owner(owner):
        raise ValueError(f"invalid user name {name!r}")
    return owner


def valid_owner(value: Any) -> bool:
    """Whether ``value`` is an owner id: a browser's random id (:func:`valid_id`) or a user's (:func:`user_owner`)."""
    from .accounts import NAME_PATTERN

    if isinstance(value, str) and value.startswith(USER_OWNER_PREFIX):
        return bool(NAME_PATTERN.match(value[len(USER_OWNER_PREFIX):]))
    return valid_id(value)


def make_title(question: str) -> str:
    """A conversation's title from its first question: whitespace folded, at most
    :data:`TITLE_CHARS` characters."""
    text = " ".join((question or "").split())
    return text if len(text) <= TITLE_CHARS else text[:TITLE_CHARS - 1] + "…"


@dataclass
class Conversation:
    """One kept conversation.

    Attributes:
        id, owner: random ids (see module docs).
        tab: "chat" or "langchain".
        title: from the first question unless renamed.
        created_at, updated_at: seconds since the epoch (UTC).
        knowledge_base: the LangChain tab's knowledge base (None in the Chat tab).
        rounds: ``[question, answer]`` pairs, oldest first (empty from :meth:`ConversationStore.list`).
        sources: per round, the answer's sources (:meth:`rag.types.SearchResult.to_dict` dicts).
    """

    id: str
    owner: str
    tab: str
    title: str
    created_at: float
    updated_at: float
    knowledge_base: str | None = None
    rounds: list[list[str]] = field(default_factory=list)
    sources: list[list[dict]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON export: metadata (times as ISO 8601 UTC) and the rounds with their sources."""
        iso = lambda t: datetime.fromtimestamp(t, tz=timezone.utc).isoformat()  # noqa: E731
        return {"id": self.id, "tab": self.tab, "title": self.title, "knowledge_base": self.knowledge_base,
                "created_at": iso(self.created_at), "updated_at": iso(self.updated_at),
                "rounds": [{"question": q, "answer": a, "sources": s}
                           for (q, a), s in zip(self.rounds, self.sources)]}

    def to_markdown(self) -> str:
        """Markdown export: title, then each question (as a quote), answer and sources."""
        lines = [f"# {self.title}", ""]
        if self.knowledge_base:
            lines += [f"Knowledge base: `{self.knowledge_base}`", ""]
        for (question, answer), sources in zip(self.rounds, self.sources):
            lines += ["> " + question.replace("\n", "\n> "), "", answer, ""]
            for i, s in enumerate(sources, 1):
                chunk = s.get("chunk", s)
                where = chunk.get("source", "?") + (f", page {chunk['page']}" if chunk.get("page") else "")
                lines.append(f"[{i}] {where}")
            if sources:
                lines.append("")
        return "\n".join(lines)


class ConversationStore:
    """Conversations in one SQLite file, each query scoped by its owner.

    Args:
        path: the database file (its folder is created); ``:memory:`` for a throwaway store.

    Raises:
        NewerSchemaError: the file's schema version is newer than :data:`SCHEMA_VERSION`.
        sqlite3.DatabaseError: the file is not a SQLite database.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path) if str(path) != ":memory:" else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # one connection shared by the page's worker threads, serialised by a lock
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise NewerSchemaError(f"{self.path} has conversation schema version {version}, newer than this "
                                       f"program's {SCHEMA_VERSION}: upgrade chatllm-webui or use another --data-dir")
            for target in range(version + 1, SCHEMA_VERSION + 1):
                # executescript commits first; the script itself is one transaction with the version bump
                self._db.executescript(f"BEGIN; {MIGRATIONS[target]} PRAGMA user_version = {target}; COMMIT;")

    def close(self) -> None:
        """Close the database (further calls fail)."""
        with self._lock:
            self._db.close()

    @property
    def schema_version(self) -> int:
        """The file's schema version (``PRAGMA user_version``)."""
        with self._lock:
            return self._db.execute("PRAGMA user_version").fetchone()[0]

    def create(self, owner: str, tab: str, knowledge_base: str | None = None, title: str = "") -> str:
        """A new, empty conversation of ``owner`` in ``tab``; returns its random id.

        Raises:
            ValueError: an invalid owner id or an unknown tab.
        """
        self._check_owner(owner)
        if tab not in TABS:
            raise ValueError(f"unknown tab {tab!r}: use one of {', '.join(TABS)}")
        conversation_id, now = secrets.token_urlsafe(16), time.time()
        with self._lock:
            self._db.execute("INSERT INTO conversations (id, owner, tab, title, created_at, updated_at, knowledge_base)"
                             " VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (conversation_id, owner, tab, title, now, now, knowledge_base))
        return conversation_id

    def add_round(self, owner: str, conversation_id: str, question: str, answer: str,
                  sources: Sequence[dict] = (), knowledge_base: str | None = None) -> None:
        """Append a finished round (one committed transaction); the first one titles an
        untitled conversation. ``knowledge_base``, when given, is remembered as the
        conversation's current one.

        Raises:
            ConversationNotFound: no such conversation of ``owner``.
        """
        now = time.time()
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT title, (SELECT COUNT(*) FROM rounds WHERE conversation_id = id) "
                                 "FROM conversations WHERE id = ? AND owner = ?", (conversation_id, owner)).fetchone()
                if row is None:
                    raise ConversationNotFound(conversation_id)
                title, position = row
                db.execute("INSERT INTO rounds (conversation_id, position, question, answer, created_at, sources) "
                           "VALUES (?, ?, ?, ?, ?, ?)", (conversation_id, position, question, answer, now,
                                                         json.dumps(list(sources), ensure_ascii=False)))
                db.execute("UPDATE conversations SET updated_at = ?, title = ?, "
                           "knowledge_base = COALESCE(?, knowledge_base) WHERE id = ?",
                           (now, title or make_title(question), knowledge_base, conversation_id))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def replace_last_answer(self, owner: str, conversation_id: str, answer: str, sources: Sequence[dict] = ()) -> None:
        """Overwrite the last round's answer (regenerate).

        Raises:
            ConversationNotFound: no such conversation of ``owner``, or it has no round.
        """
        with self._lock:
            changed = self._db.execute(
                "UPDATE rounds SET answer = ?, sources = ?, created_at = ? WHERE conversation_id = ? AND position = "
                "(SELECT MAX(position) FROM rounds WHERE conversation_id = ?) AND conversation_id IN "
                "(SELECT id FROM conversations WHERE owner = ?)",
                (answer, json.dumps(list(sources), ensure_ascii=False), time.time(), conversation_id,
                 conversation_id, owner)).rowcount
        if not changed:
            raise ConversationNotFound(conversation_id)

    def list(self, owner: str, tab: str | None = None) -> list[Conversation]:
        """``owner``'s conversations (of ``tab``, or all), most recently updated first, without rounds.
        An invalid owner id has none."""
        if not valid_owner(owner):
            return []
        sql = "SELECT id, owner, tab, title, created_at, updated_at, knowledge_base FROM conversations WHERE owner = ?"
        args: tuple = (owner,)
        if tab is not None:
            sql, args = sql + " AND tab = ?", (owner, tab)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY updated_at DESC", args).fetchall()
        return [Conversation(*row) for row in rows]

    def get(self, owner: str, conversation_id: str) -> Conversation:
        """One conversation of ``owner`` with its rounds and sources.

        Raises:
            ConversationNotFound: no such conversation of ``owner``.
        """
        with self._lock:
            row = self._db.execute("SELECT id, owner, tab, title, created_at, updated_at, knowledge_base "
                                   "FROM conversations WHERE id = ? AND owner = ?",
                                   (conversation_id, owner)).fetchone()
            if row is None:
                raise ConversationNotFound(conversation_id)
            rounds = self._db.execute("SELECT question, answer, sources FROM rounds WHERE conversation_id = ? "
                                      "ORDER BY position", (conversation_id,)).fetchall()
        conversation = Conversation(*row)
        conversation.rounds = [[q, a] for q, a, _ in rounds]
        conversation.sources = [json.loads(s) for _, _, s in rounds]
        return conversation

    def rename(self, owner: str, conversation_id: str, title: str) -> None:
        """Give a conversation a new title (whitespace folded; at most :data:`TITLE_CHARS` characters).

        Raises:
            ValueError: the title is empty.
            ConversationNotFound: no such conversation of ``owner``.
        """
        title = make_title(title)
        if not title:
            raise ValueError("the title is empty: type a new title")
        with self._lock:
            changed = self._db.execute("UPDATE conversations SET title = ? WHERE id = ? AND owner = ?",
                                       (title, conversation_id, owner)).rowcount
        if not changed:
            raise ConversationNotFound(conversation_id)

    def delete(self, owner: str, conversation_id: str) -> None:
        """Delete a conversation with its rounds.

        Raises:
            ConversationNotFound: no such conversation of ``owner``.
        """
        with self._lock:
            changed = self._db.execute("DELETE FROM conversations WHERE id = ? AND owner = ?",
                                       (conversation_id, owner)).rowcount
        if not changed:
            raise ConversationNotFound(conversation_id)

    @staticmethod
    def _check_owner(owner: str) -> None:
        if not valid_owner(owner):
            raise ValueError("invalid owner id: expected a random URL-safe token (reload the page for a new one)")
