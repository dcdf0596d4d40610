"""Serving through the real server: 16 concurrent streams with continuous batching,
and the remote backend (``--llm-backend openai``) against a second instance of our own server."""
from __future__ import annotations

import json
import threading

import pytest
import requests

pytestmark = pytest.mark.slow
N = 16


def pai(url: str, prompt: str, **fields) -> dict:
    r = requests.post(url + "/", json={"prompt": prompt, "temperature": 0, **fields}, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def pai_stream(url: str, prompt: str, max_new_tokens: int) -> str:
    r = requests.post(url + "/", json={"prompt": prompt, "temperature": 0, "max_new_tokens": max_new_tokens,
                                       "use_stream_chat": True}, stream=True, timeout=300)
    parts = [json.loads(c) for c in r.iter_lines(delimiter=b"\0") if c]
    assert len(parts) > 1
    return "".join(p["response"] for p in parts)


def test_sixteen_concurrent_streams_with_batching_each_get_their_own_answer(server):
    srv = server("--batching=on", "--max-new-tokens=16")
    srv.wait()
    assert "continuous batching on (KV cache: " in srv.output()
    prompts = [f"user {i} asks question {i}" for i in range(N)]
    lengths = [8 + (i % 3) * 4 for i in range(N)]  # per-request max_new_tokens
    alone = [pai(srv.url, p, max_new_tokens=n)["response"] for p, n in zip(prompts[:3], lengths[:3])]
    answers: dict[int, str] = {}

    def one(i: int) -> None:
        answers[i] = pai_stream(srv.url, prompts[i], lengths[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(answers) == N, "every stream finished"
    assert [answers[i] for i in range(3)] == alone, "the same answer as when asked alone"
    assert len({answers[i] for i in range(N)}) > N // 2, "answers belong to their own prompts"


def test_remote_backend_against_a_second_instance(server, corpus, tmp_path):
    # its own knowledge folder: two servers on one folder share it (each loads the other's commits)
    upstream = server("--max-new-tokens=16", f"--knowledge-dir={tmp_path / 'upstream-knowledge'}")
    upstream.wait()
    front = server("--llm-backend=openai", f"--llm-base-url={upstream.url}/v1", "--max-new-tokens=16")
    health = front.wait()
    assert health["model"] == "demo", "the remote model's id, from GET /v1/models"

    direct = pai(upstream.url, "How do I install DeepSpeed?")["response"]
    through = pai(front.url, "How do I install DeepSpeed?")
    assert through["response"] == direct, "greedy generation happens upstream, unchanged"
    assert pai_stream(front.url, "How do I install DeepSpeed?", 16) == direct

    # Everything else stays local to the front server: its knowledge base, RAG, the OpenAI API.
    with open(corpus / "deepspeed" / "README.md", "rb") as f:
        requests.post(front.url + "/v1/knowledge/default/files", files=[("files", ("README.md", f))], timeout=300)
    # two passages: the front cannot count the remote model's tokens, and the demo's 4k context
    # holds two of the 507-token chunks at most
    rag = pai(front.url, "How do I install DeepSpeed?", langchain=True, score_threshold=0, retrieval_top_k=2)
    assert any("pip install deepspeed" in s["text"] for s in rag["sources"])
    assert requests.get(upstream.url + "/v1/knowledge/default/files", timeout=30).json()["files"] == []


def test_remote_backend_unreachable_exits_with_a_clear_error(server):
    srv = server("--llm-backend=openai", "--llm-base-url=http://127.0.0.1:9/v1")
    assert srv.proc.wait(timeout=120) == 2
    assert "--llm-base-url" in srv.output()
