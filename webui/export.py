"""Conversation export: ``--export-history-path DIR --export-interval SECONDS``.

Every finished round, from the page and from the API, is appended as one JSON
line to ``DIR/history-<UTC start of the interval>.jsonl``; a new file starts
every ``interval`` seconds.  Each line is written with one ``write`` on a file
opened for appending, then flushed and fsynced, so a crash loses at most the
line being written.
"""
from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence


class HistoryExporter:
    """Appends finished conversation rounds to JSON Lines files, one per interval.

    Args:
        directory: where the files go (created if missing).
        interval: seconds per file (>= 1); default 3600 as in PAI-EAS.

    Raises:
        ValueError: interval < 1.
    """

    def __init__(self, directory: str | Path, interval: int = 3600):
        if interval < 1:
            raise ValueError(f"export interval must be >= 1 second, got {interval}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.interval = interval
        self._lock = threading.Lock()

    def path_for(self, when: float) -> Path:
        """The file that holds rounds finished at ``when`` (seconds since the epoch)."""
        start = int(when // self.interval) * self.interval
        stamp = datetime.fromtimestamp(start, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return self.directory / f"history-{stamp}.jsonl"

    def record(self, *, channel: str, prompt: str, response: str, history: Sequence[Sequence[str]] = (),
               system_prompt: str | None = None, **extra: Any) -> Path:
        """Append one finished round; returns the file written.

        Args:
            channel: where it came from: ``page``, ``langchain``, ``pai``, ``websocket``, ``openai``.
            prompt, response: the round's question and answer.
            history: the rounds before it, as ``[user, assistant]`` pairs.
            system_prompt: the system prompt used, if any.
            extra: more JSON-serialisable fields (e.g. ``sources``).
        """
        now = time.time()
        line = json.dumps({"time": datetime.fromtimestamp(now, tz=timezone.utc).isoformat(), "channel": channel,
                           "system_prompt": system_prompt, "history": [list(h) for h in history],
                           "prompt": prompt, "response": response, **extra}, ensure_ascii=False) + "\n"
        path = self.path_for(now)
        with self._lock:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
        return path
