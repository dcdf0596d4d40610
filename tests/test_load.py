"""Many users at once (issue 5).

* 16 clients at once against the real server and the tiny demo model: 4 page
  sessions (gradio_client, two rounds each), 4 PAI-EAS HTTP streams (each on its
  own knowledge base, with its own history), 4 WebSocket conversations (two rounds
  each) and 4 OpenAI streams.  Each gets its own answer -- the very answer it gets
  when it is alone (greedy decoding) -- and no history or knowledge-base
  selection leaks between them.
* Beyond ``--max-queue`` requests in flight the API answers 503 with
  ``Retry-After`` (HTTP and OpenAI) or an error message with ``retry_after``
  (WebSocket), and the page's queue answers "queue is full"; the admitted
  requests still finish and the server serves again afterwards.
"""
from __future__ import annotations

import json
import threading

import httpx
import pytest

from .reliability_utils import BlockingModel, InProcessServer, make_service, wait_until

pytestmark = pytest.mark.slow
MAX_NEW = 8
SYSTEM = "You are a helpful assistant."
KB_TEXT = {
    "alpha": ("alpha.md", "The alpha handbook: the secret colour of the alpha team is turquoise."),
    "beta": ("beta.md", "The beta handbook: the secret animal of the beta team is the pangolin."),
}


def page_client(url: str):
    from gradio_client import Client

    return Client(url + "/", verbose=False, analytics_enabled=False, download_files=False)


# ------------------------------------------------------------------ one client of each kind

def text_of(message: dict) -> str:
    """A Gradio 6 chatbot message's text (its content is a list of typed parts)."""
    content = message["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def page_session(url: str, i: int) -> dict:
    """Two rounds in one browser session (gradio_client keeps its session)."""
    page = page_client(url)
    prompts = [f"page user {i}: hello", f"page user {i}: and then?"]
    try:
        for prompt in prompts:
            chatbot, _box = page.predict(prompt, SYSTEM, MAX_NEW, 0.0, 20, 0.8, 5, api_name="/chat")
    finally:
        page.close()
    users = [text_of(m) for m in chatbot if m["role"] == "user"]
    answers = [text_of(m) for m in chatbot if m["role"] == "assistant"]
    return {"users": users, "answers": answers, "prompts": prompts}


def pai_stream(url: str, i: int) -> dict:
    kb = "alpha" if i % 2 == 0 else "beta"
    history = [[f"pai user {i} earlier question", f"pai user {i} earlier answer"]]
    body = {"prompt": f"pai user {i}: what is the secret?", "history": history, "use_stream_chat": True,
            "langchain": True, "knowledge_base": kb, "retrieval_top_k": 1, "score_threshold": -1,
            "max_new_tokens": MAX_NEW, "temperature": 0}
    with httpx.stream("POST", url + "/", json=body, timeout=300) as r:
        parts = [json.loads(p) for p in r.read().split(b"\0") if p]
    return {"kb": kb, "history_in": history, "prompt": body["prompt"], "parts": parts,
            "answer": "".join(p["response"] for p in parts)}


def websocket_conversation(url: str, i: int) -> dict:
    import websocket

    ws = websocket.create_connection(url.replace("http", "ws") + "/", timeout=300)
    prompts = [f"ws user {i}: first", f"ws user {i}: second"]
    histories, answers = [], []
    try:
        for prompt in prompts:
            ws.send(json.dumps({"prompt": prompt, "use_stream_chat": True, "max_new_tokens": MAX_NEW,
                                "temperature": 0}))
            replies = []
            while (msg := ws.recv()) != "<EOS>":
                replies.append(json.loads(msg))
            histories.append(replies[-1]["history"])
            answers.append("".join(r["response"] for r in replies))
    finally:
        ws.close()
    return {"prompts": prompts, "histories": histories, "answers": answers}


def openai_stream(url: str, i: int) -> dict:
    messages = [{"role": "user", "content": f"openai user {i}: hi"}]
    text = ""
    with httpx.stream("POST", url + "/v1/chat/completions", timeout=300, json={
            "messages": messages, "stream": True, "max_tokens": MAX_NEW, "temperature": 0}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                assert "error" not in chunk, chunk
                text += chunk["choices"][0]["delta"].get("content") or "" if chunk["choices"] else ""
    return {"answer": text}


CLIENTS = [page_session] * 4 + [pai_stream] * 4 + [websocket_conversation] * 4 + [openai_stream] * 4


def test_16_clients_at_once_get_their_own_answers(server, tmp_path):
    srv = server(f"--max-new-tokens={MAX_NEW}", "--max-queue=32")
    srv.wait()
    for kb, (name, text) in KB_TEXT.items():
        r = httpx.post(f"{srv.url}/v1/knowledge/{kb}/files", files=[("files", (name, text.encode()))], timeout=120)
        assert r.json()["files"][0]["status"] == "added"

    results: dict[int, dict] = {}
    errors: list[str] = []
    start = threading.Barrier(len(CLIENTS))

    def run(i: int, client) -> None:
        try:
            start.wait(60)
            results[i] = client(srv.url, i)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"{client.__name__} {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    assert len(results) == 16
    assert httpx.get(srv.url + "/health", timeout=30).json()["generation"]["active"] == 0

    # each answer is the one that client gets alone (greedy), and carries only its own history / KB
    for i, client in enumerate(CLIENTS):
        got = results[i]
        alone = client(srv.url, i)
        if client is page_session:
            assert got["users"] == got["prompts"], f"session {i} shows only its own turns"
            assert got["answers"] == alone["answers"] and all(got["answers"])
        elif client is pai_stream:
            assert got["answer"] and got["answer"] == alone["answer"]
            assert got["parts"][-1]["history"] == got["history_in"] + [[got["prompt"], got["answer"]]]
            name = KB_TEXT[got["kb"]][0]
            assert [s["source"] for s in got["parts"][0]["sources"]] == [name], "its own knowledge base"
        elif client is websocket_conversation:
            assert got["answers"] == alone["answers"] and all(got["answers"])
            assert got["histories"][1] == [[p, a] for p, a in zip(got["prompts"], got["answers"])]
        else:
            assert got["answer"] and got["answer"] == alone["answer"]


# ------------------------------------------------------------------ a bounded queue

def test_beyond_max_queue_the_api_answers_503_with_retry_after(tmp_path):
    model = BlockingModel("done")
    with InProcessServer(make_service(model, tmp_path, api_only=True, max_queue=3)) as srv:
        gate = srv.app.state.gate
        outcomes: dict[str, object] = {}

        def pai() -> None:
            with httpx.stream("POST", srv.url + "/", json={"prompt": "p", "use_stream_chat": True},
                              timeout=120) as r:
                outcomes["pai"] = [json.loads(p) for p in r.read().split(b"\0") if p]

        def openai() -> None:
            r = httpx.post(srv.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "o"}]},
                           timeout=120)
            outcomes["openai"] = r.json()

        def ws() -> None:
            import websocket

            conn = websocket.create_connection(srv.url.replace("http", "ws") + "/", timeout=120)
            conn.send(json.dumps({"prompt": "w"}))
            outcomes["ws"] = json.loads(conn.recv())
            assert conn.recv() == "<EOS>"
            conn.close()

        admitted = [threading.Thread(target=f) for f in (pai, openai, ws)]
        for t in admitted:
            t.start()
        wait_until(lambda: gate.stats()["active"] == 3 and model.started == 3, what="three requests admitted")

        r = httpx.post(srv.url + "/", json={"prompt": "one too many"}, timeout=30)
        assert r.status_code == 503 and r.headers["Retry-After"] == "5"
        assert "--max-queue" in r.json()["error"]["message"] and r.json()["error"]["code"] == "server_busy"
        r = httpx.post(srv.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]},
                       timeout=30)
        assert r.status_code == 503 and r.headers["Retry-After"] == "5"
        import websocket
        conn = websocket.create_connection(srv.url.replace("http", "ws") + "/", timeout=30)
        conn.send(json.dumps({"prompt": "one too many"}))
        busy = json.loads(conn.recv())
        assert "busy" in busy["error"] and busy["retry_after"] == 5 and conn.recv() == "<EOS>"
        assert httpx.get(srv.url + "/health", timeout=30).json()["generation"] == {
            "active": 3, "max_queue": 3, "refused": 3}
        assert model.started == 3, "refused requests never reached the model"

        model.release.set()
        for t in admitted:
            t.join(60)
        assert "".join(p["response"] for p in outcomes["pai"]) == "done" == outcomes["pai"][-1]["history"][-1][1]
        assert outcomes["openai"]["choices"][0]["message"]["content"] == "done"
        assert outcomes["ws"]["response"] == "done"
        wait_until(lambda: gate.stats()["active"] == 0, what="the places to be given back")
        conn.send(json.dumps({"prompt": "and now?"}))  # the same connection serves again
        assert json.loads(conn.recv())["response"] == "done" and conn.recv() == "<EOS>"
        conn.close()
        assert httpx.post(srv.url + "/", json={"prompt": "and now?"}, timeout=30).json()["response"] == "done"


def test_the_page_queue_is_bounded_too(tmp_path):
    """The page runs 4 events at once; --max-queue=1 lets one more wait; the next is refused."""
    from gradio_client.utils import QueueError

    model = BlockingModel("done")
    with InProcessServer(make_service(model, tmp_path, max_queue=1)) as srv:
        jobs = []
        for i in range(4):
            jobs.append(page_client(srv.url).submit(f"q{i}", SYSTEM, 8, 0.0, 20, 0.8, 5, api_name="/chat"))
        wait_until(lambda: model.started == 4, what="four page events running")
        waiting = page_client(srv.url).submit("waits", SYSTEM, 8, 0.0, 20, 0.8, 5, api_name="/chat")
        wait_until(lambda: waiting.status().code.name == "IN_QUEUE", what="the fifth event to wait")
        refused = page_client(srv.url).submit("refused", SYSTEM, 8, 0.0, 20, 0.8, 5, api_name="/chat")
        with pytest.raises(QueueError, match="Queue is full"):
            refused.result(timeout=60)
        model.release.set()
        for job in jobs + [waiting]:
            chatbot, _ = job.result(timeout=60)
            assert text_of(chatbot[-1]) == "done"
