"""HFChatModel.stream on the real demo model: pieces, determinism, errors, early close, stop strings."""
from __future__ import annotations

import threading
import time

import pytest

from llm import GenerationError, GenerationParams, HFChatModel, build_demo_model, build_messages, load_chat_model
from llm.hf import GENERATE_THREAD_NAME

GREEDY = GenerationParams(max_new_tokens=40, do_sample=False)
MESSAGES = build_messages("What is in the knowledge base? 知识库里有什么？", system_prompt="Answer briefly.")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> HFChatModel:
    path = build_demo_model(tmp_path_factory.getbasetemp() / "llm-demo-model")
    return load_chat_model(str(path), cpu=True)


@pytest.fixture
def forward_calls(model: HFChatModel, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the model's forward passes (one per generated token)."""
    calls: list[int] = []
    forward = model.model.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    monkeypatch.setattr(model.model, "forward", counting)
    return calls


def _generate_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == GENERATE_THREAD_NAME and t.is_alive()]


def test_stream_yields_pieces_that_join_to_chat(model: HFChatModel):
    pieces = list(model.stream(MESSAGES, GREEDY))
    assert len(pieces) > 1
    assert all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == model.chat(MESSAGES, GREEDY)
    assert not _generate_threads()


def test_greedy_is_deterministic_and_sampling_varies(model: HFChatModel):
    assert model.chat(MESSAGES, GREEDY) == model.chat(MESSAGES, GREEDY)
    sampled = {model.chat(MESSAGES, GenerationParams(max_new_tokens=20, temperature=1.0, top_k=0, top_p=1.0))
               for _ in range(3)}
    assert len(sampled) > 1


def test_max_new_tokens_bounds_the_answer(model: HFChatModel, forward_calls: list[int]):
    answer = model.chat(MESSAGES, GenerationParams(max_new_tokens=7, do_sample=False))
    assert answer
    assert len(forward_calls) == 7  # the demo model never emits eos: exactly max_new_tokens steps
    longer = model.chat(MESSAGES, GenerationParams(max_new_tokens=30, do_sample=False))
    assert longer.startswith(answer.rstrip()[:5]) and len(longer) > len(answer)


def test_generate_kwargs_follow_params(model: HFChatModel, monkeypatch: pytest.MonkeyPatch):
    seen: list[dict] = []
    generate = model.model.generate

    def spy(**kwargs):
        seen.append(kwargs)
        return generate(**kwargs)

    monkeypatch.setattr(model.model, "generate", spy)
    model.chat(MESSAGES, GenerationParams(max_new_tokens=3, temperature=0))
    model.chat(MESSAGES, GenerationParams(max_new_tokens=3, temperature=0.5, top_k=7, top_p=0.9))
    greedy, sampled = seen
    assert greedy["do_sample"] is False
    assert not {"temperature", "top_k", "top_p"} & greedy.keys()
    assert (sampled["do_sample"], sampled["temperature"], sampled["top_k"], sampled["top_p"]) == (True, 0.5, 7, 0.9)
    assert greedy["max_new_tokens"] == 3
    assert greedy["pad_token_id"] == model.tokenizer.pad_token_id


def test_failure_in_generate_raises_promptly(model: HFChatModel, monkeypatch: pytest.MonkeyPatch):
    def broken(**kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(model.model, "generate", broken)
    start = time.monotonic()
    with pytest.raises(GenerationError) as info:
        list(model.stream(MESSAGES, GREEDY))
    assert time.monotonic() - start < 2
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "out of memory" in str(info.value)
    monkeypatch.undo()
    assert model.chat(MESSAGES, GREEDY)  # the lock was released


def test_out_of_memory_gives_the_cache_back_to_the_device(model: HFChatModel, monkeypatch: pytest.MonkeyPatch):
    import torch

    def oom(**kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")

    emptied: list[int] = []
    monkeypatch.setattr(model.model, "generate", oom)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    with pytest.raises(GenerationError, match="out of memory"):
        list(model.stream(MESSAGES, GREEDY))
    assert emptied == [1]

    def other(**kwargs):
        raise RuntimeError("not a memory problem")

    monkeypatch.setattr(model.model, "generate", other)
    with pytest.raises(GenerationError):
        list(model.stream(MESSAGES, GREEDY))
    assert emptied == [1], "only after running out of memory"


def test_failure_after_some_tokens_raises_after_the_text(model: HFChatModel, monkeypatch: pytest.MonkeyPatch):
    forward = model.model.forward
    steps: list[int] = []

    def fails_later(*args, **kwargs):
        steps.append(1)
        if len(steps) > 15:
            raise RuntimeError("device lost (simulated)")
        return forward(*args, **kwargs)

    monkeypatch.setattr(model.model, "forward", fails_later)
    received: list[str] = []
    start = time.monotonic()
    with pytest.raises(GenerationError) as info:
        for piece in model.stream(MESSAGES, GenerationParams(max_new_tokens=100, do_sample=False)):
            received.append(piece)
    assert time.monotonic() - start < 5
    assert received, "the text generated before the failure is streamed first"
    assert "device lost" in str(info.value.__cause__)
    assert not _generate_threads()


def test_no_text_within_the_timeout_raises(model: HFChatModel, monkeypatch: pytest.MonkeyPatch):
    release = threading.Event()
    monkeypatch.setattr(model.model, "generate", lambda **kwargs: release.wait(10))
    impatient = HFChatModel(model.model, model.tokenizer, name="impatient", stream_timeout=0.3)
    start = time.monotonic()
    try:
        with pytest.raises(GenerationError, match="no text"):
            list(impatient.stream(MESSAGES, GREEDY))
        assert time.monotonic() - start < 3
    finally:
        release.set()


def test_closing_early_stops_generation(model: HFChatModel, forward_calls: list[int]):
    stream = model.stream(MESSAGES, GenerationParams(max_new_tokens=400, do_sample=False))
    first = next(stream)
    assert first
    stream.close()
    assert not _generate_threads()
    steps = len(forward_calls)
    assert steps < 400
    time.sleep(0.2)
    assert len(forward_calls) == steps  # nothing runs on in the background


def test_stream_that_never_starts_holds_nothing(model: HFChatModel):
    stream = model.stream(MESSAGES, GREEDY)
    stream.close()
    assert not _generate_threads()
    assert model.chat(MESSAGES, GenerationParams(max_new_tokens=3, do_sample=False))


def test_stop_string_truncates_and_stops(model: HFChatModel, forward_calls: list[int]):
    full = model.chat(MESSAGES, GenerationParams(max_new_tokens=60, do_sample=False))
    forward_calls.clear()
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip()
    expected = full[: full.find(stop)]
    pieces = list(model.stream(MESSAGES, GenerationParams(max_new_tokens=60, do_sample=False, stop=(stop,))))
    assert "".join(pieces) == expected
    assert all(stop not in p for p in pieces)
    assert len(forward_calls) < 60


def test_stop_string_spanning_two_pieces(model: HFChatModel):
    pieces = list(model.stream(MESSAGES, GREEDY))
    i = next(i for i in range(1, len(pieces) - 1) if len(pieces[i]) >= 1 and len(pieces[i + 1]) >= 1)
    stop = pieces[i][-1] + pieces[i + 1][0]
    full = "".join(pieces)
    expected = full[: full.find(stop)]
    answer = model.chat(MESSAGES, GenerationParams(max_new_tokens=40, do_sample=False, stop=("never there", stop)))
    assert answer == expected
    # a stop string that never occurs changes nothing, even when the answer ends with its start
    never = GenerationParams(max_new_tokens=40, do_sample=False, stop=(full[-2:] + "\x00",))
    assert model.chat(MESSAGES, never) == full


def test_one_generation_at_a_time(model: HFChatModel, monkeypatch: pytest.MonkeyPatch):
    generate = model.model.generate
    active: list[int] = []
    most = [0]

    def tracked(**kwargs):
        active.append(1)
        most[0] = max(most[0], len(active))
        try:
            time.sleep(0.05)
            return generate(**kwargs)
        finally:
            active.pop()

    monkeypatch.setattr(model.model, "generate", tracked)
    answers: list[str] = []
    threads = [threading.Thread(target=lambda: answers.append(model.chat(MESSAGES, GREEDY))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(answers) == 3 and len(set(answers)) == 1
    assert most[0] == 1


def test_too_long_prompt_is_rejected(model: HFChatModel):
    prompt = "knowledge base 知识库 " * 3000
    n = len(model.tokenizer(model.render_prompt(build_messages(prompt)), add_special_tokens=False)["input_ids"])
    assert n > model.context_length
    with pytest.raises(ValueError) as info:
        model.stream(build_messages(prompt), GREEDY)
    assert str(n) in str(info.value) and str(model.context_length - 1) in str(info.value)


def test_count_tokens_and_context_length(model: HFChatModel):
    assert model.context_length == model.model.config.max_position_embeddings
    assert model.count_tokens("") == 0
    assert model.count_tokens("<|im_start|>") == 1
    assert model.count_tokens("hello world 你好") == len(model.tokenizer.encode("hello world 你好"))


# ----------------------------------------------------------------- IncrementalDecoder
MIXED_TEXT = "Hello 世界, naïve café — 你好！ emoji 😀🎉 end.\n第二行：知识库。"


def _chunks(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]


class _DecodeOnly:
    """A tokenizer with ``decode`` but no tokenizers-library backend (the fallback path)."""

    def __init__(self, tokenizer):
        self._decode = tokenizer.decode

    def decode(self, ids, skip_special_tokens=False):
        return self._decode(ids, skip_special_tokens=skip_special_tokens)


@pytest.mark.parametrize("backend", ["DecodeStream", "full decode"])
@pytest.mark.parametrize("size", [1, 2, 5])
def test_incremental_decoder_gives_the_text_decode_gives(model: HFChatModel, backend: str, size: int):
    from llm.hf import IncrementalDecoder

    tokenizer = model.tokenizer if backend == "DecodeStream" else _DecodeOnly(model.tokenizer)
    ids = model.tokenizer.encode(MIXED_TEXT, add_special_tokens=False) + [model.tokenizer.eos_token_id]
    whole = model.tokenizer.decode(ids, skip_special_tokens=True)
    assert "😀" in whole and "知识库" in whole
    boundaries = [k for k in range(1, len(ids)) if not model.tokenizer.decode(ids[:k]).endswith("\ufffd")]
    assert len(boundaries) < len(ids) - 1  # some characters do span tokens
    for start in [0] + boundaries[::4]:
        decoder = IncrementalDecoder(tokenizer, ids[:start])
        pieces = [decoder.step(chunk) for chunk in _chunks(ids[start:], size)[:-1]]
        pieces.append(decoder.step(_chunks(ids[start:], size)[-1], final=True))
        assert "".join(pieces) == whole[len(model.tokenizer.decode(ids[:start], skip_special_tokens=True)):]
        assert all("\ufffd" not in piece for piece in pieces)  # never half a character on the way


@pytest.mark.parametrize("backend", ["DecodeStream", "full decode"])
def test_incremental_decoder_ends_a_cut_character_as_decode_does(model: HFChatModel, backend: str):
    from llm.hf import IncrementalDecoder

    tokenizer = model.tokenizer if backend == "DecodeStream" else _DecodeOnly(model.tokenizer)
    ids = model.tokenizer.encode("ab😀", add_special_tokens=False)
    cut = ids[:-1]  # the emoji's last byte is missing: an answer stopped by max_new_tokens
    assert model.tokenizer.decode(cut).endswith("\ufffd")
    decoder = IncrementalDecoder(tokenizer)
    assert decoder.step(cut) == ""  # held back while the character may still complete
    assert decoder.step([], final=True) == model.tokenizer.decode(cut)
