"""Run the real server (``python run.py``) in a subprocess on a free loopback port, for tests."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(tmp: Path) -> dict:
    """The server's environment: offline hub, no analytics, the demo model cached under ``tmp``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               CHATLLM_CACHE_DIR=str(tmp / "cache"), PYTHONUNBUFFERED="1")
    return env


class Server:
    """``python run.py`` on a free port; waits for /health, stops on exit."""

    def __init__(self, tmp: Path, *args: str, script: str = "run.py", env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp / f"server-{self.port}.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, script, f"--port={self.port}", f"--knowledge-dir={tmp / 'knowledge'}", "--cpu", *args],
            cwd=ROOT, env={**server_env(tmp), **(env or {})}, stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                r = httpx.get(self.url + "/health", timeout=2)
                if r.status_code == 200:
                    return r.json()
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"server did not come up in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


#: The question the DeepSpeed documents answer with their install section (``pip install deepspeed``).
INSTALL_QUESTION = {"query": "How do I install DeepSpeed?", "top_k": 3, "score_threshold": -1}


def upload_deepspeed_docs(corpus: Path, upload_url: str, search_url: str, kb: str = "manuals") -> dict[str, int]:
    """Upload DeepSpeed's README.md and zero.md to knowledge base ``kb`` through the server at
    ``upload_url``, check that the server at ``search_url`` (the same or another) answers
    :data:`INSTALL_QUESTION` with the install section, and return ``{file name: chunks}`` as
    that server lists them."""
    files = [("files", (n, (corpus / "deepspeed" / n).read_bytes())) for n in ("README.md", "zero.md")]
    r = httpx.post(f"{upload_url}/v1/knowledge/{kb}/files", files=files, timeout=600)
    assert [f["status"] for f in r.json()["files"]] == ["added", "added"], r.text
    r = httpx.post(f"{search_url}/v1/knowledge/{kb}/search", json=INSTALL_QUESTION, timeout=60)
    assert r.status_code == 200, f"search through {search_url}: {r.status_code} {r.text}"
    hits = r.json()["results"]
    assert any("pip install deepspeed" in h["text"] for h in hits), hits
    listed = httpx.get(f"{search_url}/v1/knowledge/{kb}/files", timeout=30).json()["files"]
    return {f["name"]: f["chunks"] for f in listed}
