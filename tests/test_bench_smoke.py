"""The benchmarks run (smoke sizes): CI keeps them working; their figures live in docs/benchmarks.md."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .server_utils import ROOT

pytestmark = pytest.mark.slow


def test_serving_benchmark_smoke(tmp_path):
    out = tmp_path / "serving.json"
    proc = subprocess.run([sys.executable, "bench/serving.py", "--cpu", "--smoke", f"--out={out}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1",
                               "CHATLLM_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [row["users"] for row in result["served"]] == [1, 2]
    assert all(row["tokens_per_stream"] == [8] for row in result["served"]), "every stream ran to max_tokens"
    assert [row["users"] for row in result["plain_generate"]["queued"]] == [1, 2]
    assert result["overhead"]["ratio"] > 0 and result["machine"]["cores"] >= 1
