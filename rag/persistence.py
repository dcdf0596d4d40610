"""Crash-safe on-disk layout of a knowledge base.

A knowledge-base folder holds::

    manifest.json          names the current generation + embedding model, dim,
                           chunk settings, format version (replaced atomically)
    gen-000042/            one complete state, never changed once written:
        index.faiss        FAISS index (IndexIDMap2 over IndexFlatIP, or IndexIVFFlat
                           in large knowledge bases: rag.store.build_index), serialised
        chunks.json        {"next_id": int, "chunks": [Chunk as dict, ...]}
        files.json         [{"name", "sha256", "size", "added_at", "chunks", ...}, ...]
        keywords.json      {"tokenizer": id, "tokens": {"<chunk id>": [token, ...]}}: the
                           BM25 tokens of each chunk (derived data: when missing, stale
                           or unreadable, they are recomputed from chunks.json on open)
    files/<name>           a copy of each accepted original file
    incoming/              temporary copies of files being added

A new state is written into a fresh ``gen-NNNNNN`` folder and fsync'ed; only
then is ``manifest.json`` replaced (``os.replace`` is atomic on POSIX and
Windows) to point at it, and older generations are deleted. A kill at any
moment therefore leaves either the old or the new manifest, each naming a
complete generation; half-written generation folders are never referenced
and are ignored (and removed by the next commit).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
import unicodedata
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

#: Bumped when the layout changes incompatibly; a newer format is refused.
#: 2: index.faiss may hold an IndexIVFFlat (rag.store.APPROXIMATE_INDEX_MIN_CHUNKS);
#: a knowledge base with a flat index is still written as 1, which older versions read.
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
KEYWORDS_NAME = "keywords.json"
FILES_DIR = "files"
INCOMING_DIR = "incoming"
GENERATION_PREFIX = "gen-"
_GENERATION_RE = re.compile(r"^gen-(\d+)$")
#: Longest stored file name in UTF-8 bytes (most file systems allow 255).
MAX_NAME_BYTES = 200


def safe_file_name(name: str) -> str:
    """A file name that is safe to create inside a folder.

    Keeps only the last path component (``/`` and ``\\`` both count as
    separators), drops control and format characters (NUL, newlines,
    right-to-left overrides: Unicode categories C*), trims spaces, replaces
    "", "." and ".." by "file", and shortens it to :data:`MAX_NAME_BYTES`
    UTF-8 bytes keeping the extension. The result never contains a path
    separator, so ``folder / safe_file_name(x)`` never leaves ``folder``.
    """
    base = re.split(r"[\\/]", str(name))[-1]
    base = "".join(ch for ch in base if not unicodedata.category(ch).startswith("C")).strip()
    if base in ("", ".", ".."):
        base = "file"
    if len(base.encode("utf-8")) > MAX_NAME_BYTES:
        stem, dot, ext = base.rpartition(".")
        if not dot or len(ext) > 16:
            stem, ext = base, ""
        ext = f".{ext}" if ext else ""
        room = MAX_NAME_BYTES - len(ext.encode("utf-8"))
        stem = stem.encode("utf-8")[:room].decode("utf-8", errors="ignore")
        base = stem + ext
    return base


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename/creation inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_json_durably(path: Path, obj: Any) -> None:
    """Write ``obj`` as UTF-8 JSON to ``path`` and fsync it."""
    write_bytes_durably(path, json.dumps(obj, ensure_ascii=False, indent=1).encode("utf-8"))


def replace_json_atomically(path: Path, obj: Any) -> None:
    """Write JSON to ``path.tmp``, fsync, ``os.replace`` it onto ``path``, fsync the folder."""
    tmp = path.with_name(path.name + ".tmp")
    write_json_durably(tmp, obj)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_json(path: Path) -> Any:
    """Read a UTF-8 JSON file."""
    return json.loads(path.read_text(encoding="utf-8"))


def generation_name(number: int) -> str:
    """Folder name of generation ``number``: ``gen-000042``."""
    return f"{GENERATION_PREFIX}{number:06d}"


def generation_number(name: str) -> int | None:
    """Inverse of :func:`generation_name`; None for other names."""
    m = _GENERATION_RE.match(name)
    return int(m.group(1)) if m else None


def existing_generations(directory: Path) -> list[int]:
    """Numbers of all generation folders present (referenced or not), ascending."""
    numbers = []
    if directory.is_dir():
        for entry in directory.iterdir():
            n = generation_number(entry.name)
            if n is not None and entry.is_dir():
                numbers.append(n)
    return sorted(numbers)


def remove_generations_except(directory: Path, keep: str) -> None:
    """Delete every generation folder but ``keep`` (old states and crash leftovers)."""
    for n in existing_generations(directory):
        name = generation_name(n)
        if name != keep:
            shutil.rmtree(directory / name, ignore_errors=True)


#: The lock file every writer of a knowledge-base folder holds (see :func:`folder_lock`).
LOCK_NAME = ".lock"
#: Seconds a writer waits for another process's write to the same folder before giving up.
LOCK_TIMEOUT_S = 300.0


class FolderBusyError(RuntimeError):
    """Another process kept a knowledge-base folder locked for longer than the timeout."""


@contextmanager
def folder_lock(directory: Path, *, shared: bool = False, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the advisory lock of a knowledge-base folder: exclusive for a writer, shared
    for a reader loading a state another process committed.

    ``flock(2)`` on ``directory/.lock``, opened afresh for each call, so it also excludes
    other threads and other :class:`~rag.store.KnowledgeBase` objects of this process. The
    kernel drops it when the process dies (a kill -9 never leaves a stale lock). Where
    ``fcntl`` is missing (Windows) this is a no-op: one process per folder there.

    Raises:
        FolderBusyError: still held by another after ``timeout`` seconds; the message
            names the likely holder (``python -m rag`` or a second server).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise FolderBusyError(
                        f"knowledge base {directory.name!r} is being written by another process (a "
                        f"'python -m rag ingest' or a second server) for over {timeout:.0f} s; retry when "
                        "it has finished") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
