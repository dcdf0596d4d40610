"""The README's API examples work as shown: every curl line and Python block of its
"The API" section runs, unchanged but for the server's address, against the real
server started as the README says (``python run.py --api-token YOUR_TOKEN``)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from .server_utils import ROOT

pytestmark = pytest.mark.slow


def api_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text[text.index("## The API"):text.index("\n## ", text.index("## The API") + 5)]


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", api_section(), flags=re.S)


def test_the_readme_has_examples_for_each_protocol():
    python = "\n".join(blocks("python"))
    curls = [line for b in blocks("bash") for line in b.splitlines() if line.startswith("curl ")]
    assert "iter_lines(delimiter=b\"\\0\")" in python and "websocket" in python and "OpenAI(" in python
    assert "PaiEasEndpoint" in python and "/v1/knowledge" in python
    assert any("/v1/chat/completions" in c for c in curls) and any("http://localhost:8000/ " in c for c in curls)


def test_readme_examples_run_as_shown(server, corpus):
    srv = server("--api-token=YOUR_TOKEN", "--max-new-tokens=16")
    srv.wait()

    def here(code: str) -> str:
        return code.replace("http://localhost:8000", srv.url).replace("ws://localhost:8000", srv.url.replace("http", "ws"))

    if shutil.which("curl"):
        for block in blocks("bash"):
            for line in (ln for ln in block.splitlines() if ln.startswith("curl ")):
                out = subprocess.run(["bash", "-c", here(line)], cwd=ROOT, capture_output=True, text=True, timeout=300)
                assert out.returncode == 0, (line, out.stderr)
                reply = json.loads(out.stdout)
                assert "error" not in reply, (line, reply)
    for code in blocks("python"):
        out = subprocess.run([sys.executable, "-c", here(code)], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, (code, out.stderr[-3000:])
        assert out.stdout.strip(), code
