"""Continuous batching (llm.batching) on CPU with the tiny demo model: concurrent
streams interleave, each gets its own answer, parameters are honoured per request,
closing a stream cancels it, and a dead batching loop fails requests instead of hanging."""
from __future__ import annotations

import threading
import time

import pytest

from llm.base import GenerationError, GenerationParams
from llm.batching import BatchedHFChatModel
from llm.demo import build_demo_model
from llm.loader import load_chat_model

GREEDY = GenerationParams(max_new_tokens=24, temperature=0)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return load_chat_model(str(build_demo_model(tmp_path_factory.mktemp("demo") / "m")), cpu=True)


@pytest.fixture(scope="module")
def batched(plain):
    model = BatchedHFChatModel.wrap(plain, max_memory_percent=0.05)
    yield model
    model.close()


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def run_concurrently(model, jobs):
    """Run ``model.stream`` for each (messages, params) in threads; returns per job the
    list of (arrival time, piece)."""
    out = [[] for _ in jobs]

    def work(i, messages, params):
        for piece in model.stream(messages, params):
            out[i].append((time.perf_counter(), piece))

    threads = [threading.Thread(target=work, args=(i, m, p)) for i, (m, p) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a stream hung"
    return out


def test_concurrent_streams_interleave_and_get_their_own_answers(batched):
    prompts = [f"question number {i}" for i in range(6)]
    alone = {p: batched.chat(ask(p), GREEDY) for p in prompts}
    assert len(set(alone.values())) > 1, "different prompts give different greedy answers"
    results = run_concurrently(batched, [(ask(p), GREEDY) for p in prompts])
    for p, pieces in zip(prompts, results):
        assert "".join(x for _, x in pieces) == alone[p], "each request gets exactly its own answer"
    spans = [(pieces[0][0], pieces[-1][0]) for pieces in results]
    overlapping = sum(1 for a in spans for b in spans if a is not b and a[0] < b[1] and b[0] < a[1])
    assert overlapping > 0, "streams are served at the same time, not one after the other"


def test_parameters_are_honoured_per_request(batched):
    short = GenerationParams(max_new_tokens=5, temperature=0)
    long = GenerationParams(max_new_tokens=40, temperature=0)
    full = batched.chat(ask("same prompt"), long)
    stop = full[len(full) // 2: len(full) // 2 + 3]
    hot = GenerationParams(max_new_tokens=40, temperature=1.5, top_k=0, top_p=1.0)
    results = run_concurrently(batched, [(ask("same prompt"), short), (ask("same prompt"), long),
                                         (ask("same prompt"), GenerationParams(max_new_tokens=40, temperature=0,
                                                                               stop=(stop,))),
                                         (ask("same prompt"), hot)])
    texts = ["".join(x for _, x in r) for r in results]
    assert batched.count_tokens(texts[0]) <= 6 < batched.count_tokens(texts[1])
    assert texts[1] == full
    assert texts[2] == full[:full.index(stop)], "the stop string ends that request only"
    assert texts[3] != full, "a sampled request is not the greedy one"


def test_closing_a_stream_cancels_the_request(batched):
    it = batched.stream(ask("go on and on"), GenerationParams(max_new_tokens=2000, temperature=0))
    next(it)
    it.close()
    deadline = time.monotonic() + 10
    while batched._queues and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not batched._queues, "the request left the router"
    assert batched.chat(ask("still serving?"), GREEDY), "the model keeps serving after a cancel"


def test_a_dead_batching_loop_fails_requests_instead_of_hanging(plain):
    model = BatchedHFChatModel.wrap(plain, max_memory_percent=0.05)
    model.stream_timeout = 20
    model._manager.stop(block=True, timeout=30)  # the loop is gone, as after a crash
    started = time.monotonic()
    with pytest.raises(GenerationError):
        model.chat(ask("anyone there?"), GREEDY)
    assert time.monotonic() - started < model.stream_timeout, "failed at once, not by timing out"
    model.close()


def test_bad_memory_share_is_refused(plain):
    with pytest.raises(ValueError, match="max_memory_percent"):
        BatchedHFChatModel.wrap(plain, max_memory_percent=1.5)
