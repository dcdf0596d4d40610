"""The model reports how it stopped: ``finish_reason`` and ``usage`` of each backend
against what the tokenizer counts, and a stream cut by max_new_tokens is ``length``
over every protocol (OpenAI, PAI-EAS HTTP, WebSocket, the export)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from llm.base import Generation, GenerationParams
from llm.batching import BatchedHFChatModel
from llm.demo import build_demo_model
from llm.loader import load_chat_model
from llm.remote import OpenAIChatModel

CUT = 4  # max_new_tokens: the demo model never ends early, so every answer is cut here
QUESTION = [{"role": "user", "content": "How do I install DeepSpeed?"}]


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return load_chat_model(str(build_demo_model(tmp_path_factory.mktemp("demo") / "m")), cpu=True)


@pytest.fixture(scope="module")
def batched(plain):
    model = BatchedHFChatModel.wrap(plain, max_sequences=4)
    yield model
    model.close()


def prompt_tokens(model, messages) -> int:
    """What the tokenizer counts for the rendered chat prompt."""
    text = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(model.tokenizer(text, add_special_tokens=False)["input_ids"])


def run(gen: Generation) -> str:
    assert gen.finish_reason is None, "not finished before it ran"
    return "".join(gen)


@pytest.mark.parametrize("backend", ["plain", "batched"])
def test_local_backends_report_length_and_the_tokenizers_counts(backend, request):
    model = request.getfixturevalue(backend)
    gen = model.generate(QUESTION, GenerationParams(max_new_tokens=CUT, temperature=0))
    answer = run(gen)
    assert gen.finish_reason == "length"
    assert gen.usage().prompt_tokens == prompt_tokens(model, QUESTION)
    assert gen.usage().completion_tokens == CUT
    assert len(model.tokenizer(answer, add_special_tokens=False)["input_ids"]) >= 1


@pytest.mark.parametrize("backend", ["plain", "batched"])
def test_local_backends_report_stop_at_a_stop_string(backend, request):
    model = request.getfixturevalue(backend)
    greedy = GenerationParams(max_new_tokens=12, temperature=0)
    full = model.chat(QUESTION, greedy)
    stop = full[len(full) // 2:len(full) // 2 + 2]
    assert stop.strip(), full
    gen = model.generate(QUESTION, GenerationParams(max_new_tokens=12, temperature=0, stop=(stop,)))
    answer = run(gen)
    assert gen.finish_reason == "stop" and stop not in answer
    assert 0 < gen.usage().completion_tokens <= 12


def _chunk(content=None, finish=None, usage=None):
    choices = [] if content is None and finish is None else [
        SimpleNamespace(delta=SimpleNamespace(content=content), finish_reason=finish)]
    return SimpleNamespace(choices=choices, usage=usage)


class _Stream(list):
    def close(self):
        pass


def test_remote_backend_reports_what_the_server_says():
    sent = {}

    def create(**kwargs):
        sent.update(kwargs)
        return _Stream([_chunk("Hello"), _chunk(" world"), _chunk(finish="length"),
                        _chunk(usage=SimpleNamespace(prompt_tokens=17, completion_tokens=2))])

    client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))
    model = OpenAIChatModel("http://127.0.0.1:9/v1", model="m", client=client)
    gen = model.generate(QUESTION, GenerationParams(max_new_tokens=2))
    assert run(gen) == "Hello world"
    assert sent["stream_options"] == {"include_usage": True}
    assert (gen.finish_reason, gen.usage().prompt_tokens, gen.usage().completion_tokens) == ("length", 17, 2)


def test_a_text_only_model_gets_an_estimate(fake_model):
    gen = fake_model.generate(QUESTION, GenerationParams(max_new_tokens=100))
    answer = run(gen)
    assert gen.finish_reason == "stop" and gen.usage().completion_tokens == len(answer.split())


# ----------------------------------------------------------------- every protocol

@pytest.fixture
def client(plain, embedder, tmp_path):
    from rag.registry import KnowledgeBaseRegistry
    from webui.app import create_app
    from webui.export import HistoryExporter
    from webui.services import ChatService
    from webui.settings import Settings

    settings = Settings(knowledge_dir=tmp_path / "kb", export_history_path=str(tmp_path / "export"))
    service = ChatService(plain, KnowledgeBaseRegistry(settings.knowledge_dir, embedder), settings,
                          exporter=HistoryExporter(tmp_path / "export"))
    with TestClient(create_app(service)) as c:
        yield c


def test_a_cut_stream_is_length_over_every_protocol(client, plain, tmp_path):
    expected_prompt = prompt_tokens(plain, [{"role": "system", "content": "You are a helpful assistant."}]
                                    + QUESTION)
    body = {"messages": QUESTION, "max_tokens": CUT, "temperature": 0}
    out = client.post("/v1/chat/completions", json=body).json()
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] == CUT
    assert out["usage"]["prompt_tokens"] == prompt_tokens(plain, QUESTION)

    with client.stream("POST", "/v1/chat/completions",
                       json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["usage"]["completion_tokens"] == CUT

    pai = {"prompt": QUESTION[0]["content"], "max_new_tokens": CUT, "temperature": 0}
    reply = client.post("/", json=pai).json()
    assert reply["finish_reason"] == "length" and reply["usage"]["completion_tokens"] == CUT
    assert reply["usage"]["prompt_tokens"] == expected_prompt
    chunks = [json.loads(c) for c in client.post("/", json={**pai, "use_stream_chat": True}).content.split(b"\0")
              if c]
    assert chunks[-1]["finish_reason"] == "length" and chunks[-1]["usage"]["completion_tokens"] == CUT
    assert all("finish_reason" not in c for c in chunks[:-1])

    with client.websocket_connect("/") as ws:
        for stream in (True, False):
            ws.send_text(json.dumps({**pai, "use_stream_chat": stream}))
            replies = []
            while (msg := ws.receive_text()) != "<EOS>":
                replies.append(json.loads(msg))
            assert replies[-1]["finish_reason"] == "length"
            assert replies[-1]["usage"]["completion_tokens"] == CUT

    lines = [json.loads(line) for f in sorted((tmp_path / "export").glob("*.jsonl")) for line in f.open()]
    assert [line["channel"] for line in lines] == ["openai", "openai", "pai", "pai", "websocket", "websocket"]
    assert all(line["finish_reason"] == "length" and line["usage"]["completion_tokens"] == CUT for line in lines)
