"""Continuous batching (llm.batching) on CPU with the tiny demo model: concurrent
streams interleave, each gets its own answer, parameters are honoured per request,
the model's repetition penalty is applied as ``generate`` applies it, the KV cache has the
size the budget says, closing a stream cancels it, and a dead batching loop fails
requests instead of hanging."""
from __future__ import annotations

import threading
import time

import pytest

from llm.base import GenerationError, GenerationParams
from llm.batching import BatchedHFChatModel
from llm.demo import build_demo_model
from llm.kv_budget import CPU_MAX_BATCH_TOKENS, PAGE_SIZE, kv_cache_budget
from llm.loader import load_chat_model, use_batching

GREEDY = GenerationParams(max_new_tokens=24, temperature=0)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return load_chat_model(str(build_demo_model(tmp_path_factory.mktemp("demo") / "m")), cpu=True)


@pytest.fixture(scope="module")
def batched(plain):
    model = BatchedHFChatModel.wrap(plain, max_sequences=4)
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
    model = BatchedHFChatModel.wrap(plain, max_sequences=1)
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


def test_kv_budget_of_the_demo_model(plain):
    config = plain.model.config.get_text_config()
    # 2 layers x 2 KV heads x 16 dims x K and V x fp32 = 512 B, + the CPU mask row: 256 tokens x 4 B
    assert (config.num_hidden_layers, config.num_key_value_heads, config.hidden_size // config.num_attention_heads,
            plain.context_length) == (2, 2, 16, 4096)
    per_token = 2 * 2 * 2 * 16 * 4 + CPU_MAX_BATCH_TOKENS * 4
    budget = kv_cache_budget(config, 4, context_length=4096, sequences=4, device_type="cpu", memory_bytes=24 << 30)
    assert (budget.bytes_per_token, budget.tokens, budget.num_blocks, budget.capped) == (per_token, 4 * 4096,
                                                                                          4 * 4096 // PAGE_SIZE, False)
    assert budget.max_batch_tokens == CPU_MAX_BATCH_TOKENS
    # --max-queue 64: 64 full contexts would take 384 MiB; a CPU's ceiling is min(RAM / 16, 256 MiB)
    big = kv_cache_budget(config, 4, context_length=4096, sequences=64, device_type="cpu", memory_bytes=24 << 30)
    assert big.capped and big.tokens == 683 * PAGE_SIZE  # 256 MiB // 1,536 B = 174,762 tokens, in whole blocks
    small_ram = kv_cache_budget(config, 4, context_length=4096, sequences=64, device_type="cpu",
                                memory_bytes=1 << 30)
    assert small_ram.tokens == 171 * PAGE_SIZE  # 1 GiB / 16 // 1,536 B = 43,690 tokens, in whole blocks
    # never below one full context, however small the ceiling
    tiny = kv_cache_budget(config, 4, context_length=4096, sequences=64, device_type="cpu", memory_bytes=1 << 20)
    assert tiny.tokens == 4096
    # a GPU with flash attention: no mask, half the free memory, transformers' own batch size
    gpu = kv_cache_budget(config, 2, context_length=4096, sequences=8, device_type="cuda", memory_bytes=1 << 30,
                          needs_mask=False)
    assert (gpu.bytes_per_token, gpu.tokens, gpu.max_batch_tokens) == (256, 8 * 4096, None)


def test_the_batching_loop_uses_the_budget(batched):
    batched.chat(ask("hello"), GREEDY)  # the loop builds its cache on start; a request waits for it
    cache = batched._manager.batch_processor.cache
    assert cache.num_blocks == batched.kv_budget.num_blocks == 4 * 4096 // PAGE_SIZE
    assert cache.max_batch_tokens == CPU_MAX_BATCH_TOKENS


def test_repetition_penalty_applies_as_with_generate(plain, batched):
    penalty = plain.model.generation_config.repetition_penalty
    assert penalty == 1.05, "the demo model carries Qwen2.5's penalty"
    prompts = [ask(f"tell me about {w} " * 3) for w in ("cats", "the sea", "numbers")]
    params = GenerationParams(max_new_tokens=60, temperature=0)
    expected = [plain.chat(p, params) for p in prompts]
    plain.model.generation_config.repetition_penalty = 1.0
    try:
        unpenalised = [plain.chat(p, params) for p in prompts]
    finally:
        plain.model.generation_config.repetition_penalty = penalty
    assert unpenalised != expected, "the penalty changes these greedy answers (else this test proves nothing)"
    results = run_concurrently(batched, [(p, params) for p in prompts])
    assert ["".join(x for _, x in r) for r in results] == expected


def test_auto_batching_is_on_with_a_gpu_and_off_on_cpu():
    # measured (docs/benchmarks.md): one stream is about half as fast batched on this CPU
    assert use_batching("auto", "cuda") and not use_batching("auto", "cpu")
    assert not use_batching("off", "cuda") and use_batching("on", "cpu")
