"""One table maps exceptions to status codes (``webui.api.errors.ERROR_TABLE``), and the
token budget lives in ``llm.budget``: a KeyError from inside retrieval, or from inside a
file's deletion, is a 500 in the error shape, not an "unknown knowledge base" or
"unknown file" 404."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from llm.budget import (AnswerTooLongError, PromptTooLongError, check_max_new_tokens, clamp_max_new_tokens,
                        fit_messages)
from rag.registry import KnowledgeBaseRegistry
from webui.app import create_app
from webui.services import ChatService
from webui.settings import DEFAULT_SYSTEM_PROMPT, Settings

from .conftest import FakeChatModel


@pytest.fixture
def client(tmp_path, embedder):
    s = Settings(knowledge_dir=tmp_path / "knowledge")
    service = ChatService(FakeChatModel("an answer"), KnowledgeBaseRegistry(s.knowledge_dir, embedder), s)
    with TestClient(create_app(service), raise_server_exceptions=False) as c:
        yield c


def test_a_keyerror_inside_retrieval_is_a_500_not_a_404(client, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("score")  # e.g. a malformed row deep in the store

    monkeypatch.setattr(client.app.state.service, "retrieve", broken)
    r = client.post("/", json={"prompt": "q", "langchain": True})
    assert r.status_code == 500, r.text
    error = r.json()["error"]
    assert error["type"] == "server_error" and "KeyError" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_an_unknown_knowledge_base_is_still_a_404(client):
    r = client.post("/", json={"prompt": "q", "langchain": True, "knowledge_base": "never-made"})
    assert r.status_code == 404, r.text
    assert r.json()["error"]["param"] == "knowledge_base"
    assert r.json()["error"]["type"] == "not_found_error"


def test_only_an_unknown_file_is_a_404_not_any_keyerror_in_a_delete(client, monkeypatch):
    r = client.post("/v1/knowledge/notes/files", files=[("files", ("zebra.md", b"# Zebras\n\nZebras have stripes."))])
    assert r.status_code == 200 and r.json()["files"][0]["status"] == "added", r.text
    r = client.delete("/v1/knowledge/notes/files/quokka.md")
    assert r.status_code == 404, r.text
    error = r.json()["error"]
    assert (error["type"], error["param"]) == ("not_found_error", "name")
    assert "quokka.md" in error["message"] and "zebra.md" in error["message"], "names the file and those there are"

    def broken(name):
        raise KeyError(name)  # e.g. a bug in the chunk bookkeeping

    monkeypatch.setattr(client.app.state.service.knowledge_base("notes"), "delete_file", broken)
    r = client.delete("/v1/knowledge/notes/files/zebra.md")
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error", r.text


def test_a_prompt_too_long_is_400_context_length_exceeded_on_both_protocols(client):
    client.app.state.service.model.context_length = 8
    long = "word " * 50
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": long}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert r.json()["error"]["param"] == "messages"
    r = client.post("/", json={"prompt": long})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    tokens = 50 + len(DEFAULT_SYSTEM_PROMPT.split())  # the fake counts words; the server adds its system prompt
    assert f"{tokens} tokens" in r.json()["error"]["message"] and "7 that fit" in r.json()["error"]["message"]


def count(messages) -> int:
    return sum(len(m["content"].split()) for m in messages)


def test_fit_messages_drops_the_oldest_rounds_and_keeps_system_and_question():
    messages = [{"role": "system", "content": "s"}]
    for i in range(4):
        messages += [{"role": "user", "content": f"q{i} " * 10}, {"role": "assistant", "content": f"a{i} " * 10}]
    messages.append({"role": "user", "content": "last"})
    # room for the answer: min(max_new_tokens, context // 2) = 30 of 60, so 30 for the prompt
    fitted = fit_messages(messages, count_prompt_tokens=count, context_length=60, max_new_tokens=40, name="m")
    assert fitted[0]["content"] == "s" and fitted[-1]["content"] == "last"
    assert count(fitted) <= 60 - 30 < count(fitted) + 20, "as many rounds as leave room for the answer"
    assert fitted[1]["content"].startswith("q3"), "the oldest went first"
    with pytest.raises(PromptTooLongError) as info:
        fit_messages(messages, count_prompt_tokens=count, context_length=60, max_new_tokens=40, name="m",
                     drop_history=False)
    assert (info.value.tokens, info.value.limit) == (count(messages), 59)


def test_max_new_tokens_limit_and_clamp():
    check_max_new_tokens(None, 10)
    check_max_new_tokens(10, 10)
    with pytest.raises(AnswerTooLongError, match="max_tokens: must be <= 10"):
        check_max_new_tokens(11, 10, "max_tokens")
    assert clamp_max_new_tokens(512, prompt_tokens=90, context_length=100) == 10
    assert clamp_max_new_tokens(5, prompt_tokens=90, context_length=100) == 5
