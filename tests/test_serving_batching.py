"""Continuous batching (llm.batching) on CPU with the tiny demo model: concurrent
streams interleave, each gets its own answer, parameters are honoured per request,
the model's repetition penalty is applied as ``generate`` applies it, the KV cache has the
size the budget says, closing a stream cancels it, and a dead batching loop fails
requests instead of hanging.  With ``plain_when_alone`` (``--batching auto`` on a CPU) a lone
request runs on plain ``generate`` and moves into the batch, answer unchanged, when another
comes."""
from __future__ import annotations

import queue
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from llm.base import GenerationError, GenerationParams
from llm.batching import BatchedHFChatModel
from llm.demo import build_demo_model
from llm.kv_budget import CPU_MAX_BATCH_TOKENS, PAGE_SIZE, kv_cache_budget
from llm.loader import load_chat_model, plain_when_alone, use_batching

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


def test_auto_batching_is_on_and_serves_a_lone_request_plainly_on_a_cpu():
    # measured (docs/benchmarks.md, "Batching by default?"): batched, one stream alone is slower
    # than generate on this CPU, while 8 streams give 3.6-4x one plain stream with SmolLM2-135M
    assert use_batching("auto") and use_batching("on") and not use_batching("off")
    assert plain_when_alone("auto", "cpu") and not plain_when_alone("auto", "cuda")
    assert not plain_when_alone("on", "cpu"), "--batching on batches every request"


@pytest.fixture(scope="module")
def hybrid(plain):
    model = BatchedHFChatModel.wrap(plain, max_sequences=4, plain_when_alone=True)
    assert model.plain_when_alone, "the demo model keeps sdpa attention under batching"
    yield model
    model.close()


def test_a_lone_request_is_served_by_plain_generate(plain, hybrid):
    before = dict(hybrid.served)
    params = GenerationParams(max_new_tokens=30, temperature=0)
    gen = hybrid.stream(ask("a question alone"), params)
    text = "".join(gen)
    assert text == plain.chat(ask("a question alone"), params)
    assert hybrid.served["plain"] == before["plain"] + 1 and hybrid.served["batched"] == before["batched"]
    assert gen.finish_reason == "length" and gen.completion_tokens == 30


@pytest.mark.parametrize("with_stop", [False, True])
def test_a_lone_request_moves_into_the_batch_when_another_comes(plain, hybrid, with_stop):
    first, second = ask("tell me about the sea " * 2), ask("numbers please")
    params = GenerationParams(max_new_tokens=80, temperature=0)
    full = plain.chat(first, params)
    expected_second = plain.chat(second, GREEDY)
    stop = full[len(full) * 3 // 4: len(full) * 3 // 4 + 4] if with_stop else None
    if with_stop:
        assert full.index(stop) > len(full) // 2, "the stop string comes after the hand-over"
        params = GenerationParams(max_new_tokens=80, temperature=0, stop=(stop,))
    before = dict(hybrid.served)
    gen = hybrid.stream(first, params)
    pieces = [next(gen)]  # the first request is running, alone, on plain generate
    assert hybrid.served["plain"] == before["plain"] + 1
    other: list[str] = []
    joiner = threading.Thread(target=lambda: other.append(hybrid.chat(second, GREEDY)))
    joiner.start()
    pieces.extend(gen)
    joiner.join(60)
    assert not joiner.is_alive(), "the second request finished"
    assert hybrid.served["handed over"] == before["handed over"] + 1, "the first moved into the batch"
    assert hybrid.served["batched"] == before["batched"] + 1
    assert "".join(pieces) == (full[:full.index(stop)] if with_stop else full), "the answer is unchanged"
    assert other == [expected_second]
    if with_stop:
        assert gen.finish_reason == "stop"
    else:
        assert gen.finish_reason == "length" and gen.completion_tokens == 80


def test_a_newcomer_after_the_lone_request_ended_is_served_plainly_again(hybrid):
    hybrid.chat(ask("one"), GREEDY)
    before = dict(hybrid.served)
    hybrid.chat(ask("two"), GREEDY)
    assert hybrid.served["plain"] == before["plain"] + 1 and not hybrid._queues and hybrid._plain is None


def _wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _burst(model, questions: list[str], params: GenerationParams) -> list[tuple[str, str | None, int]]:
    """The first question alone (plain generate), the rest joining it once it has a first piece:
    each answer's (text, finish_reason, completion_tokens)."""
    results: dict[int, tuple[str, str | None, int]] = {}

    def answer(i: int, gen) -> None:
        text = "".join(gen)
        results[i] = (text, gen.finish_reason, gen.completion_tokens)

    first = model.stream(ask(questions[0]), params)
    head = next(first)
    joiners = [threading.Thread(target=answer, args=(i, model.stream(ask(q), params)))
               for i, q in enumerate(questions[1:], 1)]
    for joiner in joiners:
        joiner.start()
    rest = "".join(first)
    results[0] = (head + rest, first.finish_reason, first.completion_tokens)
    for joiner in joiners:
        joiner.join(60)
    return [results.get(i, ("", None, 0)) for i in range(len(questions))]


# The answers below are checked for being whole (every token asked for, finish_reason "length"), not
# for equalling plain generate's: with the model's repetition penalty on, a batched greedy answer of
# the random-weight demo model can differ from plain generate's under some batch compositions, and a
# manager that was never stopped gives the same different answer as a restarted one (2026-12-07,
# noted on issue 14); the hand-over tests above compare texts on prompts where they agree.
def _whole(results, params: GenerationParams) -> bool:
    return all(text and reason == "length" and tokens == params.max_new_tokens for text, reason, tokens in results)


def test_the_batching_loop_runs_only_while_requests_are_batched(hybrid, monkeypatch):
    """With plain_when_alone the loop thread (and its OpenMP threads, which throttle a lone
    request's) exists only while requests are batched; a restarted loop serves whole answers."""
    import llm.batching as batching

    monkeypatch.setattr(batching, "IDLE_STOP_S", 0.2)
    assert _wait_until(lambda: not hybrid._manager.is_running(), 10), "earlier batches' loop stopped"
    hybrid.chat(ask("alone"), GREEDY)
    assert not hybrid._manager.is_running(), "a lone request needs no loop"
    starts, before = hybrid.loop_starts, dict(hybrid.served)
    params = GenerationParams(max_new_tokens=120, temperature=0)  # long enough for the second to join
    for turn in range(2):
        results = _burst(hybrid, [f"turn {turn}: tell me about the sea", f"turn {turn}: numbers"], params)
        assert _whole(results, params), f"turn {turn}: both answers whole"
        assert hybrid.loop_starts == starts + turn + 1, "the second request started the loop"
        assert hybrid.served["handed over"] == before["handed over"] + turn + 1
        assert _wait_until(lambda: not hybrid._manager.is_running(), 10), "the idle loop stopped"
    assert not hybrid._queues and hybrid._stop_timer is None


def test_a_stop_under_way_holds_up_no_lone_request_and_a_burst_restarts_after_it(plain, hybrid, monkeypatch):
    import llm.batching as batching

    monkeypatch.setattr(batching, "IDLE_STOP_S", 0.05)
    assert _wait_until(lambda: not hybrid._manager.is_running(), 10)
    entered, release, returned = threading.Event(), threading.Event(), threading.Event()
    real_stop = hybrid._manager.stop

    def slow_stop(*args, **kwargs):  # transformers' stop takes ~0.45 s: here, until released
        entered.set()
        release.wait(10)
        try:
            return real_stop(*args, **kwargs)
        finally:
            returned.set()

    monkeypatch.setattr(hybrid._manager, "stop", slow_stop)
    params = GenerationParams(max_new_tokens=120, temperature=0)  # long enough for the others to join
    assert _whole(_burst(hybrid, ["a first burst", "joins it"], params), params)
    assert entered.wait(10), "the idle loop's stop began"
    assert hybrid.chat(ask("alone meanwhile"), params) == plain.chat(ask("alone meanwhile"), params), \
        "a lone request (plain generate) is served while the stop is still under way"
    assert not returned.is_set(), "the lone request did not wait for the stop"
    starts = hybrid.loop_starts
    threading.Timer(0.3, release.set).start()  # the next burst's second request waits for the stop, then restarts
    assert _whole(_burst(hybrid, ["a second burst", "joins that one", "and a third"], params), params)
    assert release.is_set() and hybrid.loop_starts == starts + 1


@pytest.mark.parametrize("ks", [[1, 1, 1], [1, 50, 7], [3, 2000, 1361], [2000, 5000, 1361]])
def test_fast_top_k_filters_exactly_as_transformers_top_k(ks):
    from transformers.generation.continuous_batching.cb_logits_processors import ContinuousBatchingTopKLogitsWarper
    from transformers.generation.logits_process import TopKLogitsWarper

    from llm.batch_processors import FastTopK
    original = ContinuousBatchingTopKLogitsWarper(TopKLogitsWarper(top_k=50))
    fast = FastTopK(TopKLogitsWarper(top_k=50))
    scores = torch.randn(len(ks), 1361, generator=torch.Generator().manual_seed(sum(ks)))
    scores[0, :10] = scores[0, 10]  # ties at the threshold are kept by both
    k = torch.tensor(ks, dtype=torch.int32)
    assert torch.equal(fast(scores.clone(), k), original(scores.clone(), k))


@pytest.mark.parametrize("ps", [[1.0, 1.0], [0.9, 1.0], [0.5, 0.95]])
def test_skippable_top_p_filters_exactly_as_transformers_top_p(ps):
    from transformers.generation.continuous_batching.cb_logits_processors import ContinuousBatchingTopPLogitsWarper
    from transformers.generation.logits_process import TopPLogitsWarper

    from llm.batch_processors import SkippableTopP
    original = ContinuousBatchingTopPLogitsWarper(TopPLogitsWarper(top_p=0.95))
    skippable = SkippableTopP(TopPLogitsWarper(top_p=0.95))
    scores = torch.randn(len(ps), 1361, generator=torch.Generator().manual_seed(7))
    p = torch.tensor(ps, dtype=torch.float32).view(dtype=torch.int32)
    assert torch.equal(skippable(scores.clone(), p), original(scores.clone(), p))


def test_a_request_waiting_while_the_loop_serves_others_does_not_time_out(batched):
    """A request queued for room in the KV cache gets nothing for a while; as long as the loop
    delivers to other requests it waits on, and only a silent loop times it out."""
    router = batched._manager.output_router
    saved = batched.stream_timeout
    batched.stream_timeout = 1.0
    q: queue.Queue = queue.Queue()
    busy = threading.Event()

    def others_served_then_ours():
        for _ in range(25):  # 2.5 s of the loop working for other requests
            router.last_delivery = time.monotonic()
            time.sleep(0.1)
        q.put(SimpleNamespace(error=None, is_finished=lambda: True))
        busy.set()
    try:
        threading.Thread(target=others_served_then_ours, daemon=True).start()
        assert batched._next_output(q).is_finished(), "waited past stream_timeout while others were served"
        assert busy.is_set()
        with pytest.raises(GenerationError, match="produced no token"):
            batched._next_output(queue.Queue())  # nothing delivered to anyone: a hang
    finally:
        batched.stream_timeout = saved
