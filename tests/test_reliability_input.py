"""Bad input gets a clear error and changes nothing (issue 5).

Every route of the API is sent malformed JSON, wrong types, out-of-range values,
empty prompts and prompts longer than the model's context; each answer is a
400/422 naming the field (and the limit), never a 500 or a hung stream, and the
model is never called.  Prompts that are too long with history lose their
oldest rounds first (page, PAI HTTP, WebSocket), then get a clear error.
Uploads with hostile names and contents are refused one by one, the rest of
the batch is added, and nothing is written outside the knowledge folder.
"""
from __future__ import annotations

import json
import os
import re

import pytest

from .conftest import FakeChatModel
from .reliability_utils import demo_model, docx_zip_bomb, make_client, make_service, raw_multipart

REPLY = "a scripted answer"
LIMIT = 4096  # Settings().max_new_tokens_limit
LONG = "word " * 5000  # 5000 tokens for the fake model (it counts words); its context is 4096


@pytest.fixture
def client(tmp_path):
    return make_client(FakeChatModel(REPLY), tmp_path, api_only=True,
                       export_history_path=str(tmp_path / "export"))


def nothing_happened(client, tmp_path) -> None:
    """The model was never called and no round was exported."""
    assert client.app.state.service.model.calls == []
    assert not list((tmp_path / "export").glob("*.jsonl"))
    assert client.get("/health").json()["generation"]["active"] == 0


# ------------------------------------------------------------------ PAI-EAS over HTTP and WebSocket

PAI_BAD = [
    # (label, raw body, status, words the message must hold, param)
    ("malformed JSON", b'{"prompt": "q",', 400, ["malformed JSON"], None),
    ("not UTF-8", b'{"prompt": "\xff\xfe"}', 400, ["UTF-8"], None),
    ("JSON array body", b"[1, 2]", 422, ["object", "prompt"], None),
    ("prompt missing", b'{"history": []}', 422, ["prompt", "Field required"], "prompt"),
    ("prompt empty", b'{"prompt": ""}', 422, ["prompt", "at least 1 character"], "prompt"),
    ("prompt blank", b'{"prompt": "   "}', 400, ["prompt is empty"], "prompt"),
    ("prompt a number", b'{"prompt": 42}', 422, ["prompt", "valid string"], "prompt"),
    ("prompt lone surrogate", b'{"prompt": "\\ud800"}', 422, ["prompt", "unicode"], "prompt"),
    ("history a string", b'{"prompt": "q", "history": "abc"}', 422, ["history"], "history"),
    ("history pair of 1", b'{"prompt": "q", "history": [["only"]]}', 422, ["history.0.1", "Field required"],
     "history.0.1"),
    ("history message without a role", b'{"prompt": "q", "history": [{"content": "hi"}]}', 422,
     ["history", "role (user, assistant or system)"], "history"),
    ("history message content a number", b'{"prompt": "q", "history": [{"role": "user", "content": 1}]}', 422,
     ["history", "string content"], "history"),
    ("temperature negative", b'{"prompt": "q", "temperature": -0.5}', 422,
     ["temperature", "greater than or equal to 0"], "temperature"),
    ("temperature a word", b'{"prompt": "q", "temperature": "hot"}', 422, ["temperature", "number"], "temperature"),
    ("temperature Infinity", b'{"prompt": "q", "temperature": Infinity}', 422, ["temperature", "finite"],
     "temperature"),
    ("temperature NaN", b'{"prompt": "q", "temperature": NaN}', 422, ["temperature", "finite"], "temperature"),
    ("top_p above 1", b'{"prompt": "q", "top_p": 1.5}', 422, ["top_p", "less than or equal to 1"], "top_p"),
    ("top_p zero", b'{"prompt": "q", "top_p": 0}', 422, ["top_p", "greater than 0"], "top_p"),
    ("top_k negative", b'{"prompt": "q", "top_k": -1}', 422, ["top_k", "greater than or equal to 0"], "top_k"),
    ("max_new_tokens zero", b'{"prompt": "q", "max_new_tokens": 0}', 422, ["max_new_tokens", "greater than"],
     "max_new_tokens"),
    ("max_new_tokens a float", b'{"prompt": "q", "max_new_tokens": 1.5}', 422, ["max_new_tokens", "integer"],
     "max_new_tokens"),
    ("max_new_tokens over the limit", b'{"prompt": "q", "max_new_tokens": 4097}', 422,
     ["max_new_tokens", "4096", "4097", "--max-new-tokens-limit"], "max_new_tokens"),
    ("max_new_tokens huge", b'{"prompt": "q", "max_new_tokens": 1e400}', 422, ["max_new_tokens", "finite"],
     "max_new_tokens"),
    ("retrieval_top_k zero", b'{"prompt": "q", "langchain": true, "retrieval_top_k": 0}', 422,
     ["retrieval_top_k"], "retrieval_top_k"),
    ("score_threshold 2", b'{"prompt": "q", "langchain": true, "score_threshold": 2}', 422,
     ["score_threshold", "less than or equal to 1"], "score_threshold"),
    ("use_stream_chat a word", b'{"prompt": "q", "use_stream_chat": "perhaps"}', 422, ["use_stream_chat"],
     "use_stream_chat"),
    ("knowledge base escaping", b'{"prompt": "q", "langchain": true, "knowledge_base": "../etc"}', 400,
     ["invalid knowledge base name"], "knowledge_base"),
    ("knowledge base unknown", b'{"prompt": "q", "langchain": true, "knowledge_base": "nope"}', 404,
     ["nope", "upload files to it first"], "knowledge_base"),
    ("prompt longer than the context", json.dumps({"prompt": LONG}).encode(), 400,
     ["the prompt has 5005 tokens", "more than the 4095", "4096 tokens"], "prompt"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("label, body, status, words, param", PAI_BAD, ids=[c[0] for c in PAI_BAD])
def test_pai_http_bad_input(client, tmp_path, label, body, status, words, param, stream):
    if stream and body.startswith(b"{") and label != "malformed JSON" and b"use_stream_chat" not in body:
        body = body[:-1] + b', "use_stream_chat": true}'
    with client.stream("POST", "/", content=body, headers={"content-type": "application/json"}) as r:
        r.read()  # a stream would hang here; an error is one complete JSON body
    assert r.status_code == status, r.text
    err = r.json()["error"]
    for word in words:
        assert word in err["message"], (word, err)
    assert err["param"] == param
    nothing_happened(client, tmp_path)


def test_websocket_bad_input_gets_an_error_then_eos_and_the_connection_serves_on(client, tmp_path):
    with client.websocket_connect("/") as ws:
        for label, body, _status, words, param in PAI_BAD:
            if label == "JSON array body":
                continue  # on the WebSocket a message that is not a JSON object is a plain-text prompt
            # a binary frame for the bytes that are not UTF-8 (a text frame cannot hold them)
            ws.send_bytes(body) if label == "not UTF-8" else ws.send_text(body.decode())
            reply = json.loads(ws.receive_text())
            assert ws.receive_text() == "<EOS>", label
            for word in words:
                assert word in reply["error"], (label, word, reply)
            assert reply["param"] == param, label
    nothing_happened(client, tmp_path)
    with client.websocket_connect("/") as ws:
        ws.send_text(json.dumps({"prompt": "and now a good one"}))
        assert json.loads(ws.receive_text())["response"] == REPLY
        assert ws.receive_text() == "<EOS>"


# ------------------------------------------------------------------ OpenAI

USER = [{"role": "user", "content": "q"}]
OPENAI_BAD = [
    ("malformed JSON", b'{"messages": [', 400, ["malformed JSON"], None),
    ("no body", b"", 400, ["body is missing"], None),
    ("JSON array body", b"[1]", 400, ["must be a JSON object"], None),
    ("messages a string", {"messages": "hi"}, 400, ["messages", "valid list"], "messages"),
    ("messages empty", {"messages": []}, 400, ["messages", "at least 1 item"], "messages"),
    ("role unknown", {"messages": [{"role": "tool", "content": "q"}]}, 400, ["role"], "messages.0.role"),
    ("last message not user", {"messages": [{"role": "assistant", "content": "q"}]}, 400,
     ["last message must come from the user"], "messages"),
    ("content empty", {"messages": [{"role": "user", "content": "  "}]}, 400, ["empty"], "messages.0.content"),
    ("content lone surrogate", b'{"messages": [{"role": "user", "content": "\\udc00"}]}', 400, ["surrogate"],
     "messages.0.content"),
    ("content image", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     ["image_url", "text parts only"], "messages.0.content"),
    ("temperature negative", {"messages": USER, "temperature": -1}, 400, ["temperature", "greater than"],
     "temperature"),
    ("temperature above 2", {"messages": USER, "temperature": 2.5}, 400, ["temperature", "less than"], "temperature"),
    ("temperature NaN", b'{"messages": [{"role": "user", "content": "q"}], "temperature": NaN}', 400,
     ["temperature", "finite"], "temperature"),
    ("top_p above 1", {"messages": USER, "top_p": 1.01}, 400, ["top_p", "less than or equal to 1"], "top_p"),
    ("max_tokens zero", {"messages": USER, "max_tokens": 0}, 400, ["max_tokens"], "max_tokens"),
    ("max_tokens over the limit", {"messages": USER, "max_tokens": 5000}, 400,
     ["max_tokens", "4096", "5000", "--max-new-tokens-limit"], "max_tokens"),
    ("max_completion_tokens over the limit", {"messages": USER, "max_completion_tokens": 10**9}, 400,
     ["max_completion_tokens", "4096"], "max_completion_tokens"),
    ("n = 2", {"messages": USER, "n": 2}, 400, ["n", "less than or equal to 1"], "n"),
    ("stream a word", {"messages": USER, "stream": "perhaps"}, 400, ["stream"], "stream"),
    ("unknown model", {"messages": USER, "model": "gpt-4o"}, 404, ["gpt-4o", "/v1/models"], "model"),
    ("prompt longer than the context", {"messages": [{"role": "user", "content": LONG}]}, 400,
     ["the prompt has 5000 tokens", "more than the 4095", "4096 tokens"], "messages"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("label, body, status, words, param", OPENAI_BAD, ids=[c[0] for c in OPENAI_BAD])
def test_openai_bad_input(client, tmp_path, label, body, status, words, param, stream):
    if isinstance(body, dict):
        body = json.dumps({"stream": stream, **body} if "stream" not in body else body).encode()
    with client.stream("POST", "/v1/chat/completions", content=body,
                       headers={"content-type": "application/json"}) as r:
        r.read()
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    for word in words:
        assert word in err["message"], (word, err)
    assert err["param"] == param
    if "context" in label:
        assert err["code"] == "context_length_exceeded"
    nothing_happened(client, tmp_path)


# ------------------------------------------------------------------ knowledge endpoints

@pytest.mark.parametrize("body, status, words", [
    (b'{"query": ', 422, ["malformed JSON"]),
    (b'{"query": ""}', 422, ["query", "at least 1 character"]),
    (b'{"query": "q", "top_k": 0}', 422, ["top_k", "greater than or equal to 1"]),
    (b'{"query": "q", "top_k": 101}', 422, ["top_k", "less than or equal to 100"]),
    (b'{"query": "q", "score_threshold": NaN}', 422, ["score_threshold", "finite"]),
    (b'{"query": 7}', 422, ["query", "valid string"]),
])
def test_search_bad_input(client, body, status, words):
    client.get("/health")  # creates the default knowledge base
    r = client.post("/v1/knowledge/default/search", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    for word in words:
        assert word in r.json()["error"]["message"]


# ------------------------------------------------------------------ too long with history

ROUND = "history " * 1100  # 1100 tokens for the fake model


def test_oldest_rounds_are_dropped_first_then_a_clear_error(tmp_path):
    """Context 4096, max_new_tokens 1024 (default): the prompt may take 3072 tokens
    while history can be dropped; three 1100-token rounds lose the oldest one."""
    client = make_client(FakeChatModel(REPLY), tmp_path, api_only=True)
    model = client.app.state.service.model
    history = [[f"first {ROUND}", "a1"], [f"second {ROUND}", "a2"], [f"third {ROUND}", "a3"]]
    r = client.post("/", json={"prompt": "fourth", "history": history})
    assert r.status_code == 200, r.text
    seen = [m["content"].split()[0] for m in model.calls[-1][0] if m["role"] == "user"]
    assert seen == ["second", "third", "fourth"], "the oldest round went first"
    assert model.calls[-1][0][0]["role"] == "system", "the system prompt is kept"
    assert r.json()["history"] == history + [["fourth", REPLY]], "the client's own history is not cut"

    # the WebSocket keeps the history itself: the same rule applies
    with client.websocket_connect("/") as ws:
        for prompt in (f"w1 {ROUND}", f"w2 {ROUND}", f"w3 {ROUND}"):
            ws.send_text(json.dumps({"prompt": prompt}))
            assert "error" not in json.loads(ws.receive_text())
            assert ws.receive_text() == "<EOS>"
    assert [m["content"].split()[0] for m in model.calls[-1][0] if m["role"] == "user"] == ["w2", "w3"]

    # a question that does not fit even with all history dropped
    r = client.post("/", json={"prompt": LONG, "history": history})
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert re.search(r"5\d\d\d tokens even with all history dropped, more than the 4095", message), message
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_page_drops_history_and_shows_a_clear_error(tmp_path):
    import gradio as gr

    from webui.ui import PageHandlers

    service = make_service(FakeChatModel(REPLY), tmp_path)
    page = PageHandlers(service)
    history = [[f"first {ROUND}", "a1"], [f"second {ROUND}", "a2"]]
    # max_new_tokens 2000 leaves 2096 tokens for the prompt: the first round must go
    *_, (chat, new_history, box) = page.chat("third", history, "sys", 2000, 0.7, 20, 0.8, 5)
    assert [m["content"].split()[0] for m in service.model.calls[-1][0] if m["role"] == "user"] == ["second", "third"]
    assert new_history[-1] == ["third", REPLY]
    with pytest.raises(gr.Error, match=r"\d+ tokens.*more than the 4095"):
        list(page.chat(LONG, history, "sys", 1024, 0.7, 20, 0.8, 5))
    with pytest.raises(gr.Error, match=r"more than the 4095"):
        list(page.rag_chat(LONG, [], 3, 0.0, "sys", 1024, 0.7, 20, 0.8, 5))


# ------------------------------------------------------------------ too long for the real model


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The real demo model (context 4096 tokens) behind the real app, in process."""
    tmp = tmp_path_factory.mktemp("real-context")
    return make_client(demo_model(tmp_path_factory), tmp)


def test_every_route_refuses_a_prompt_longer_than_the_real_models_context(real):
    long = "知识库 hello world " * 3000
    needle = re.compile(r"the prompt has (\d+) tokens.* more than the 4095 that fit in the context of '.*' "
                        r"\(4096 tokens")

    def check(message: str) -> None:
        m = needle.search(message)
        assert m and int(m.group(1)) > 4095, message

    for stream in (False, True):
        r = real.post("/", json={"prompt": long, "use_stream_chat": stream})
        assert r.status_code == 400
        check(r.json()["error"]["message"])
        r = real.post("/", json={"prompt": long, "langchain": True, "use_stream_chat": stream})
        assert r.status_code == 400
        check(r.json()["error"]["message"])
        r = real.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": long}], "stream": stream})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        check(r.json()["error"]["message"])
    with real.websocket_connect("/") as ws:
        ws.send_text(json.dumps({"prompt": long, "use_stream_chat": True}))
        check(json.loads(ws.receive_text())["error"])
        assert ws.receive_text() == "<EOS>"
    # a history too long for the context: the oldest rounds are dropped and the model answers
    model = real.app.state.service.model
    history = [[f"round {i} " + "hello world " * 185, "ok"] for i in range(4)]  # ~1300 tokens each
    whole = [{"role": "user" if j == 0 else "assistant", "content": text}
             for pair in history for j, text in enumerate(pair)] + [{"role": "user", "content": "and now?"}]
    assert model.count_prompt_tokens(whole) > 4095, "precondition: the whole history does not fit"
    r = real.post("/", json={"prompt": "and now?", "history": history, "max_new_tokens": 8, "temperature": 0,
                             "system_prompt": ""})
    assert r.status_code == 200 and r.json()["response"]
    kept = [{"role": "user" if j == 0 else "assistant", "content": text}
            for pair in history[1:] for j, text in enumerate(pair)] + [{"role": "user", "content": "and now?"}]
    from llm.base import GenerationParams
    assert r.json()["response"] == model.chat(kept, GenerationParams(max_new_tokens=8, temperature=0)), \
        "the answer is the one to the history without its oldest round"


# ------------------------------------------------------------------ uploads


def test_hostile_upload_batch_each_refused_with_its_reason_the_rest_added(tmp_path, corpus):
    client = make_client(FakeChatModel(REPLY), tmp_path, api_only=True, max_upload_mb=1)
    pdf = (corpus / "pdf" / "pdflatex-4-pages.pdf").read_bytes()
    batch = [
        ("good.md", b"# Good\n\nDeepSpeed is installed with pip install deepspeed."),
        ("../../escape.md", b"A file that tries to climb out of the knowledge folder."),
        ("/etc/absolute.md", b"A file with an absolute path as its name."),
        ("C:\\Users\\me\\windows.md", b"A file with a Windows path as its name."),
        ("bad\u202etxt.exe.md", "A name with a right-to-left override. 中文也可以。".encode()),
        ("notes.exe", b"MZ\x90\x00 executable"),
        ("empty.txt", b""),
        ("image.txt", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8),
        ("nul.txt", b"\x00" * 64),
        ("letter.pdf", b"Dear reader, this is plain text with a .pdf name."),
        ("letter.docx", b"plain text with a .docx name"),
        ("truncated.pdf", pdf[: len(pdf) // 3]),
        ("locked.pdf", (corpus / "pdf" / "libreoffice-writer-password.pdf").read_bytes()),
        ("bomb.docx", docx_zip_bomb(corpus / "docx" / "test.docx")),
        ("huge.txt", b"word " * 250_000),
        ("last.txt", b"The last file of the batch is still added."),
    ]
    r = client.post("/v1/knowledge/hostile/files", files=[("files", (n, d)) for n, d in batch])
    assert r.status_code == 200, r.text
    report = {f["name"]: f for f in r.json()["files"]}
    # one report per file, in order, under the name as uploaded (python-multipart keeps
    # only the last part of a Windows path)
    assert [f["name"] for f in r.json()["files"]] == [n.split("\\")[-1] for n, _ in batch]
    report["C:\\Users\\me\\windows.md"] = report["windows.md"]
    reasons = {
        "notes.exe": "unsupported file type '.exe'",
        "empty.txt": "the file is empty",
        "image.txt": "does not look like text",
        "nul.txt": "does not look like text",
        "letter.pdf": "not a PDF file",
        "letter.docx": "not a readable Word .docx",
        "truncated.pdf": "not a readable PDF",
        "locked.pdf": "password-protected",
        "bomb.docx": "zip bomb",
        "huge.txt": "1 MB upload limit",
    }
    for name, reason in reasons.items():
        assert report[name]["status"] == "refused" and reason in report[name]["reason"], report[name]
    added = [n for n, _ in batch if n not in reasons]
    assert all(report[n]["status"] == "added" and report[n]["chunks"] > 0 for n in added)

    stored = {f["name"] for f in client.get("/v1/knowledge/hostile/files").json()["files"]}
    assert stored == {"good.md", "escape.md", "absolute.md", "windows.md", "badtxt.exe.md", "last.txt"}
    kb_dir = tmp_path / "knowledge" / "hostile"
    assert sorted(p.name for p in (kb_dir / "files").iterdir()) == sorted(stored)
    outside = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs
               if not os.path.realpath(os.path.join(d, f)).startswith(str(tmp_path / "knowledge") + os.sep)]
    assert outside == [], "nothing is written outside the knowledge folder"
    hits = client.post("/v1/knowledge/hostile/search", json={"query": "climb out of the knowledge folder"}).json()
    assert hits["results"][0]["source"] == "escape.md"


def test_raw_file_names_with_nul_and_path_parts_stay_inside(tmp_path):
    """File names sent byte for byte (a browser or httpx would percent-encode some)."""
    client = make_client(FakeChatModel(REPLY), tmp_path, api_only=True)
    body, content_type = raw_multipart([
        (b"nul\x00byte.md", b"a name with a NUL byte"),
        (b"../../../../../tmp/escape-raw.md", b"a name that climbs"),
        ("/abs/ünï\u200bcode.md".encode(), b"an absolute name with odd Unicode"),
        (b"..\\..\\win.md", b"a Windows name that climbs"),
        (b"..", b"a name that is only dots"),
        (b"", b"no name at all"),
    ])
    r = client.post("/v1/knowledge/raw/files", content=body, headers={"content-type": content_type})
    assert r.status_code == 200, r.text
    statuses = [(f["status"], f["reason"]) for f in r.json()["files"]]
    assert [s for s, _ in statuses[:4]] == ["added"] * 4
    assert statuses[4][0] == "refused" and "unsupported file type" in statuses[4][1]
    stored = sorted(f["name"] for f in client.get("/v1/knowledge/raw/files").json()["files"])
    assert stored == sorted(["nulbyte.md", "escape-raw.md", "ünïcode.md", "win.md"])
    assert not os.path.exists("/tmp/escape-raw.md")
    for name in stored:
        assert (tmp_path / "knowledge" / "raw" / "files" / name).is_file()


def test_page_upload_over_the_limit_is_refused_by_gradio(tmp_path):
    """The page's uploads go through Gradio's own route, bounded by the same --max-upload-mb."""
    client = make_client(FakeChatModel(REPLY), tmp_path, max_upload_mb=1)
    r = client.post("/gradio_api/upload", files=[("files", ("big.txt", b"w " * 600_000))])
    assert r.status_code == 413 and "1048576" in r.text
    r = client.post("/gradio_api/upload", files=[("files", ("../../small.txt", b"small text"))])
    assert r.status_code == 200
    [stored] = r.json()
    assert os.path.basename(stored) == "small.txt" and ".." not in stored
