"""The HTTP/WebSocket API in process (FastAPI TestClient, scripted model): PAI-EAS
protocol details, OpenAI shapes, knowledge endpoints, tokens, modes, export. The tests that
upload, search and delete through the knowledge endpoints run on FAISS and on Milvus Lite
(``kb_client``, over the ``vector_store`` fixture)."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from rag.registry import KnowledgeBaseRegistry
from webui.app import create_app
from webui.export import HistoryExporter
from webui.services import ChatService
from webui.settings import Settings

from .conftest import FakeChatModel

REPLY = "DeepSpeed installs with pip install deepspeed ."


def client_factory(root, embedder, vector_store: str = "faiss"):
    """``make(**settings)`` -> a TestClient of the app over the scripted model, with its
    knowledge bases in ``root``/knowledge on ``vector_store``."""
    def make(**settings) -> TestClient:
        s = Settings(knowledge_dir=root / "knowledge", vector_store=vector_store, **settings)
        registry = KnowledgeBaseRegistry(s.knowledge_dir, embedder, vector_store=vector_store)
        service = ChatService(FakeChatModel(REPLY), registry, s)
        if s.export_history_path:
            service.exporter = HistoryExporter(s.export_history_path, s.export_interval)
        return TestClient(create_app(service))
    return make


@pytest.fixture
def make_client(tmp_path, embedder):
    return client_factory(tmp_path, embedder)


@pytest.fixture
def client(make_client):
    return make_client()


@pytest.fixture
def kb_client(tmp_path, vector_store):
    """A client whose knowledge bases live on each vector store in turn (the bundled model,
    each document embedded once for both)."""
    from .rag_fixtures import memoized_bundled_embedder

    return client_factory(tmp_path, memoized_bundled_embedder(), vector_store.name)()


def model_of(client: TestClient) -> FakeChatModel:
    return client.app.state.service.model


# ----------------------------------------------------------------- PAI-EAS over HTTP

def test_json_request_gets_response_and_history(client):
    r = client.post("/", json={"prompt": "How to install?", "history": [["hi", "hello"]], "temperature": 0})
    assert r.status_code == 200
    body = r.json()
    assert body["response"] == REPLY
    assert body["history"] == [["hi", "hello"], ["How to install?", REPLY]]
    sent, params = model_of(client).calls[-1]
    assert [m["content"] for m in sent if m["role"] != "system"] == ["hi", "hello", "How to install?"]
    assert params.greedy


def test_langchain_style_body_nulls_unknown_fields_and_string_booleans(client):
    body = {"prompt": "q", "max_new_tokens": 7, "temperature": 0.5, "top_k": 3, "top_p": 0.9,
            "stop_sequences": [], "stop": None, "do_sample": "True", "use_cache": "False", "whatever": 1}
    r = client.post("/", json=body)
    assert r.status_code == 200, r.text
    _, params = model_of(client).calls[-1]
    assert (params.max_new_tokens, params.temperature, params.top_k, params.top_p, params.do_sample) == (7, 0.5, 3, 0.9, True)


def test_plain_text_body_is_the_prompt(client):
    r = client.post("/", content="你好".encode(), headers={"content-type": "text/plain"})
    assert r.json()["history"] == [["你好", REPLY]]


def test_stream_is_nul_delimited_json_deltas(client):
    # a paced model (20 ms a word): each word leaves as its own reply, as it is generated
    client.app.state.service.model = FakeChatModel(REPLY, delay=0.02)
    with client.stream("POST", "/", json={"prompt": "q", "use_stream_chat": True}) as r:
        raw = b"".join(r.iter_bytes())
    parts = [json.loads(p) for p in raw.split(b"\0") if p]
    assert len(parts) > 1
    assert "".join(p["response"] for p in parts) == REPLY
    so_far = ""
    for part in parts:
        so_far += part["response"]
        assert part["history"] == [["q", so_far]]
    assert parts[-1]["history"] == [["q", REPLY]]


def test_stream_failure_is_reported_in_band(client):
    client.app.state.service.model = FakeChatModel("a b c d", fail_after=2)
    with client.stream("POST", "/", json={"prompt": "q", "use_stream_chat": "true"}) as r:
        parts = [json.loads(p) for p in b"".join(r.iter_bytes()).split(b"\0") if p]
    assert "generation failed" in parts[-1]["error"]
    assert parts[-1]["history"] == []


@pytest.mark.parametrize("body, status, needle", [
    (b"{not json", 400, "malformed JSON"),
    (json.dumps({"prompt": "q", "temperature": -1}).encode(), 422, "temperature"),
    (json.dumps({"prompt": "q", "top_p": 1.5}).encode(), 422, "top_p"),
    (json.dumps({"prompt": ""}).encode(), 422, "prompt"),
    (json.dumps({"history": []}).encode(), 422, "prompt"),
    (json.dumps([1, 2]).encode(), 422, "object"),
    (json.dumps({"prompt": "q", "history": [["only one"]]}).encode(), 422, "history"),
    (b"", 422, "prompt"),
])
def test_bad_requests_name_the_field(client, body, status, needle):
    r = client.post("/", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]
    assert model_of(client).calls == []


def test_langchain_mode_answers_from_the_knowledge_base_with_sources(kb_client, corpus):
    readme = corpus / "deepspeed" / "README.md"
    up = kb_client.post("/v1/knowledge/default/files", files=[("files", ("README.md", readme.read_bytes()))])
    assert up.json()["files"][0]["status"] == "added"
    r = kb_client.post("/", json={"prompt": "How do I install DeepSpeed?", "langchain": True,
                                  "score_threshold": 0})
    body = r.json()
    assert body["response"] == REPLY
    assert body["sources"] and body["sources"][0]["source"] == "README.md"
    assert any("pip install deepspeed" in s["text"] for s in body["sources"])
    sent, _ = model_of(kb_client).calls[-1]
    assert "pip install deepspeed" in sent[-1]["content"]
    assert body["history"] == [["How do I install DeepSpeed?", REPLY]], "history keeps the question, not the prompt"


def test_langchain_mode_unknown_knowledge_base_is_404(client):
    r = client.post("/", json={"prompt": "q", "langchain": True, "knowledge_base": "nope"})
    assert r.status_code == 404 and "nope" in r.json()["error"]["message"]


# ----------------------------------------------------------------- PAI-EAS over WebSocket

def test_websocket_conversation_keeps_history_and_ends_with_eos(client):
    client.app.state.service.model = FakeChatModel(REPLY, delay=0.02)  # paced: streamed replies are several
    with client.websocket_connect("/") as ws:
        ws.send_text(json.dumps({"prompt": "first"}))
        first = json.loads(ws.receive_text())
        assert ws.receive_text() == "<EOS>"
        assert first["response"] == REPLY
        ws.send_text(json.dumps({"prompt": "second", "use_stream_chat": True}))
        pieces = []
        while (msg := ws.receive_text()) != "<EOS>":
            pieces.append(json.loads(msg))
        assert len(pieces) > 1 and "".join(p["response"] for p in pieces) == REPLY
        assert pieces[-1]["history"] == [["first", REPLY], ["second", REPLY]]
        ws.send_text("third, as plain text")
        third = json.loads(ws.receive_text())
        assert ws.receive_text() == "<EOS>"
        assert [h[0] for h in third["history"]] == ["first", "second", "third, as plain text"]


def test_websocket_history_is_trimmed_to_max_round(make_client):
    client = make_client(max_round=1)
    with client.websocket_connect("/") as ws:
        for q in ("a", "b", "c"):
            ws.send_text(json.dumps({"prompt": q}))
            last = json.loads(ws.receive_text())
            ws.receive_text()
    assert [h[0] for h in last["history"]] == ["b", "c"]
    sent, _ = model_of(client).calls[-1]
    assert [m["content"] for m in sent if m["role"] == "user"] == ["b", "c"]


def test_websocket_bad_request_gets_error_then_eos_and_stays_open(client):
    with client.websocket_connect("/") as ws:
        ws.send_text(json.dumps({"prompt": "q", "temperature": -2}))
        assert "temperature" in json.loads(ws.receive_text())["error"]
        assert ws.receive_text() == "<EOS>"
        ws.send_text(json.dumps({"prompt": "q"}))
        assert json.loads(ws.receive_text())["response"] == REPLY


def test_separate_connections_do_not_share_history(client):
    with client.websocket_connect("/") as a, client.websocket_connect("/") as b:
        a.send_text(json.dumps({"prompt": "I am Alice"}))
        a.receive_text(), a.receive_text()
        b.send_text(json.dumps({"prompt": "who am I?"}))
        reply = json.loads(b.receive_text())
    assert reply["history"] == [["who am I?", REPLY]]


# ----------------------------------------------------------------- OpenAI

def test_models_and_completion_with_usage(client):
    assert client.get("/v1/models").json()["data"][0]["id"] == "fake"
    r = client.post("/v1/chat/completions", json={
        "model": "fake", "max_tokens": 50, "temperature": 0,
        "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"},
                     {"role": "assistant", "content": "hello"},
                     {"role": "user", "content": [{"type": "text", "text": "install?"}]}]})
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"] == {"role": "assistant", "content": REPLY}
    assert body["choices"][0]["finish_reason"] == "stop"
    words = len(REPLY.split())
    assert body["usage"]["completion_tokens"] == words
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + words
    sent, params = model_of(client).calls[-1]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[-1]["content"] == "install?" and params.max_new_tokens == 50


def test_finish_reason_length_when_max_tokens_reached(client):
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "q"}], "max_tokens": 3})
    assert r.json()["choices"][0]["finish_reason"] == "length"


def test_sse_stream_ends_with_done(client):
    with client.stream("POST", "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "q"}], "stream": True,
            "stream_options": {"include_usage": True}}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == REPLY
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(REPLY.split())


@pytest.mark.parametrize("body, status, param", [
    ({"model": "gpt-4", "messages": [{"role": "user", "content": "q"}]}, 404, "model"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "q"}], "temperature": 3}, 400, "temperature"),
    ({"messages": [{"role": "user", "content": "q"}], "n": 2}, 400, "n"),
    ({"messages": [{"role": "assistant", "content": "q"}]}, 400, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "messages.0.content"),
])
def test_openai_errors_have_the_openai_shape(client, body, status, param):
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param


# ----------------------------------------------------------------- knowledge endpoints

def test_knowledge_upload_list_search_delete(kb_client, corpus, vector_store):
    files = [("files", ("README.md", (corpus / "deepspeed" / "README.md").read_bytes())),
             ("files", ("locked.pdf", (corpus / "pdf" / "libreoffice-writer-password.pdf").read_bytes())),
             ("files", ("zero.md", (corpus / "deepspeed" / "zero.md").read_bytes())),
             ("files", ("notes.exe", b"MZ..."))]
    r = kb_client.post("/v1/knowledge/manuals/files", files=files)
    assert r.status_code == 200
    report = {f["name"]: f for f in r.json()["files"]}
    assert [f["name"] for f in r.json()["files"]] == ["README.md", "locked.pdf", "zero.md", "notes.exe"]
    assert report["README.md"]["status"] == "added" and report["README.md"]["chunks"] > 0
    assert report["locked.pdf"]["status"] == "refused" and "password" in report["locked.pdf"]["reason"]
    assert report["notes.exe"]["status"] == "refused"
    assert report["zero.md"]["status"] == "added"

    listed = kb_client.get("/v1/knowledge/manuals/files").json()["files"]
    assert {f["name"]: f["chunks"] for f in listed} == {"README.md": report["README.md"]["chunks"],
                                                        "zero.md": report["zero.md"]["chunks"]}
    kbs = kb_client.get("/v1/knowledge").json()["knowledge_bases"]
    assert {k["name"] for k in kbs} >= {"manuals"}

    question = "How do I install DeepSpeed?"
    hits = kb_client.post("/v1/knowledge/manuals/search", json={"query": question, "top_k": 3}).json()
    assert len(hits["results"]) == 3
    assert hits["results"][0]["score"] >= hits["results"][-1]["score"]
    assert any("pip install deepspeed" in h["text"] for h in hits["results"])

    gone = kb_client.delete("/v1/knowledge/manuals/files/README.md").json()
    assert gone["chunks_removed"] == report["README.md"]["chunks"]
    hits = kb_client.post("/v1/knowledge/manuals/search", json={"query": question}).json()
    assert all(h["source"] == "zero.md" for h in hits["results"])
    kb = kb_client.app.state.service.knowledge_base("manuals")
    assert vector_store.entities(kb) == report["zero.md"]["chunks"], "exactly README.md's chunks left the store"


@pytest.mark.parametrize("method, path, kwargs, status", [
    ("get", "/v1/knowledge/missing/files", {}, 404),
    ("post", "/v1/knowledge/missing/search", {"json": {"query": "q"}}, 404),
    ("delete", "/v1/knowledge/missing/files/a.md", {}, 404),
    ("post", "/v1/knowledge/default/search", {"json": {"query": ""}}, 422),
    ("post", "/v1/knowledge/default/search", {"json": {"query": "q", "top_k": 0}}, 422),
    ("get", "/v1/knowledge/bad%20name%21/files", {}, 400),
    ("get", "/v1/knowledge/.hidden/files", {}, 400),
])
def test_knowledge_errors(client, method, path, kwargs, status):
    client.get("/health")  # creates the default knowledge base
    r = getattr(client, method)(path, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]


def test_upload_over_the_size_limit_is_refused_and_the_rest_added(make_client, corpus):
    client = make_client(max_upload_mb=1)
    big = b"word " * 300_000
    r = client.post("/v1/knowledge/default/files", files=[
        ("files", ("big.txt", big)), ("files", ("zero.md", (corpus / "deepspeed" / "zero.md").read_bytes()))])
    report = r.json()["files"]
    assert report[0]["status"] == "refused" and "1 MB" in report[0]["reason"]
    assert report[1]["status"] == "added"


def test_uploads_wait_in_the_knowledge_folder_and_a_killed_runs_leftovers_go_at_start(make_client, tmp_path, corpus):
    leftover = tmp_path / "knowledge" / ".uploads" / "upload-killed" / "0"
    leftover.mkdir(parents=True)
    (leftover / "half.pdf").write_bytes(b"%PDF-1.7 half written")
    client = make_client()
    assert not (tmp_path / "knowledge" / ".uploads" / "upload-killed").exists()
    r = client.post("/v1/knowledge/docs/files",
                    files=[("files", ("zero.md", (corpus / "deepspeed" / "zero.md").read_bytes()))])
    assert r.json()["files"][0]["status"] == "added"
    assert list((tmp_path / "knowledge" / ".uploads").iterdir()) == [], "nothing left after an upload"
    assert ".uploads" not in [kb["name"] for kb in client.get("/v1/knowledge").json()["knowledge_bases"]]


def test_openapi_documents_every_route(client):
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/", "/v1/models", "/v1/chat/completions", "/v1/knowledge", "/v1/knowledge/{kb}/files",
              "/v1/knowledge/{kb}/files/{name}", "/v1/knowledge/{kb}/search"):
        assert p in paths, p
    assert "text/plain" in paths["/"]["post"]["requestBody"]["content"]
    # an invalid chat completion is answered 400, as OpenAI does, and documented so
    completions = paths["/v1/chat/completions"]["post"]["responses"]
    assert "400" in completions and "422" not in completions
    assert client.post("/v1/chat/completions", json={"messages": "not a list"}).status_code == 400
    assert "422" in paths["/v1/knowledge/{kb}/search"]["post"]["responses"]  # elsewhere FastAPI's 422 stays


# ----------------------------------------------------------------- tokens and modes

def test_token_required_everywhere_when_configured(make_client):
    client = make_client(api_token="s3cret")
    assert client.post("/", json={"prompt": "q"}).status_code == 401
    assert client.post("/", json={"prompt": "q"}, headers={"Authorization": "wrong"}).status_code == 401
    assert client.post("/", json={"prompt": "q"}, headers={"Authorization": "s3cret"}).status_code == 200
    ok = client.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    denied = client.get("/v1/models")
    assert denied.status_code == 401 and denied.json()["error"]["type"] == "authentication_error"
    assert client.get("/", headers={"accept": "text/html"}).status_code == 401, "the page needs it too"
    from starlette.websockets import WebSocketDisconnect
    with pytest.raises(WebSocketDisconnect):
        with client.websocket_connect("/") as ws:
            ws.receive_text()
    with client.websocket_connect("/", headers={"Authorization": "s3cret"}) as ws:
        ws.send_text(json.dumps({"prompt": "q"}))
        assert json.loads(ws.receive_text())["response"] == REPLY
    assert client.get("/health").status_code == 200, "health stays open for load balancers"


def test_browser_token_in_query_sets_a_cookie(make_client):
    """Issue 16, item 7: the token leaves the address bar (303 without it), the cookie holds
    a session value, not the token, expires, and is Secure behind TLS."""
    client = make_client(api_token="s3cret")
    r = client.get("/?token=s3cret&lang=zh", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/?lang=zh"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "Max-Age=" in cookie and "s3cret" not in cookie and "Secure" not in cookie
    assert client.get("/v1/models").status_code == 200, "the cookie authorises later requests"
    assert client.get("/", headers={"accept": "text/html"}).status_code == 200
    client.cookies.clear()
    behind_tls = client.get("/?token=s3cret", headers={"x-forwarded-proto": "https"}, follow_redirects=False)
    assert "Secure" in behind_tls.headers["set-cookie"]
    client.cookies.clear()
    client.cookies.set("chatllm_session", "forged")
    assert client.get("/v1/models").status_code == 401


def test_token_is_masked_in_the_access_log():
    import logging

    from webui.auth import MaskTokenFilter

    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", "/?token=s3cret&x=1", "1.1", 303), None)
    MaskTokenFilter().filter(record)
    assert "s3cret" not in record.getMessage() and "token=***&x=1" in record.getMessage()


def test_api_only_serves_no_page(make_client):
    client = make_client(api_only=True)
    assert client.get("/").status_code in (404, 405)
    assert client.post("/", json={"prompt": "q"}).status_code == 200


def test_no_api_serves_the_page_only(make_client):
    client = make_client(no_api=True)
    assert client.get("/").status_code == 200
    assert client.get("/v1/models").status_code == 404
    assert client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "q"}]}).status_code in (404, 405)


# ----------------------------------------------------------------- export

def test_rounds_from_every_protocol_are_exported(make_client, tmp_path):
    client = make_client(export_history_path=str(tmp_path / "export"), export_interval=3600)
    client.post("/", json={"prompt": "p1", "history": [["a", "b"]]})
    client.post("/v1/chat/completions", json={"messages": [{"role": "system", "content": "S"},
                                                           {"role": "user", "content": "o1"}]})
    with client.websocket_connect("/") as ws:
        ws.send_text(json.dumps({"prompt": "w1", "use_stream_chat": True}))
        while ws.receive_text() != "<EOS>":
            pass
    files = list((tmp_path / "export").glob("history-*.jsonl"))
    assert len(files) == 1
    lines = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert [(r["channel"], r["prompt"], r["response"]) for r in lines] == [
        ("pai", "p1", REPLY), ("openai", "o1", REPLY), ("websocket", "w1", REPLY)]
    assert lines[0]["history"] == [["a", "b"]] and lines[1]["system_prompt"] == "S"


def test_search_uses_the_servers_retriever_and_reports_every_score(kb_client, corpus):
    readme = (corpus / "deepspeed" / "README.md").read_bytes()
    kb_client.post("/v1/knowledge/docs/files", files=[("files", ("README.md", readme))])
    query = "pip install deepspeed"
    hybrid = kb_client.post("/v1/knowledge/docs/search", json={"query": query, "top_k": 3}).json()["results"]
    assert {r["retriever"] for r in hybrid} == {kb_client.app.state.service.settings.retrieval_mode}
    assert all("cosine" in r["scores"] for r in hybrid)
    dense = kb_client.post("/v1/knowledge/docs/search", json={"query": query, "mode": "dense"}).json()["results"]
    assert {r["retriever"] for r in dense} == {"dense"} and all(r["score"] == r["scores"]["cosine"] for r in dense)
    bad = kb_client.post("/v1/knowledge/docs/search", json={"query": "q", "mode": "magic"})
    assert bad.status_code == 422 and "mode" in bad.json()["error"]["message"]
