"""Hostile input through the real server (issue 16): what a client names or sends can
never read server files, outlive a delete, or hold the server."""
from __future__ import annotations

import json
import os
import time

import httpx


def gradio_call(url: str, api_name: str, data: list, timeout: float = 60) -> list:
    """``POST /gradio_api/call/<api_name>`` then read its event stream: the final ``data``."""
    r = httpx.post(f"{url}/gradio_api/call/{api_name}", json={"data": data}, timeout=timeout)
    assert r.status_code == 200, r.text
    event_id = r.json()["event_id"]
    last = None
    with httpx.stream("GET", f"{url}/gradio_api/call/{api_name}/{event_id}", timeout=timeout) as stream:
        event = None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                last = (event, json.loads(line.split(":", 1)[1]))
                break
    assert last is not None, "the call never completed"
    return last


def file_data(path) -> dict:
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}


def test_page_ingest_refuses_files_gradio_did_not_receive(server, tmp_path):
    """Item 1: a client-named server path, also one reached through a symlink placed in
    Gradio's upload folder, is refused, and nothing of the file becomes searchable."""
    secret = tmp_path / "secret" / "passwords.md"
    secret.parent.mkdir()
    secret.write_text("# Secrets\n\nThe vault combination is zebra-quokka-4471.\n", encoding="utf-8")
    upload_dir = tmp_path / "gradio-uploads"
    link = upload_dir / "0123abcd" / "notes.md"
    link.parent.mkdir(parents=True)
    os.symlink(secret, link)
    dotdot = upload_dir / "0123abcd" / ".." / ".." / "secret" / "passwords.md"

    srv = server(env={"GRADIO_TEMP_DIR": str(upload_dir)})
    srv.wait()
    for path in (secret, link, dotdot):
        event, data = gradio_call(srv.url, "ingest", [[file_data(path)], "default"])
        # Gradio refuses the path itself (an error event); were it let through, the handler
        # would refuse it in the report
        assert event == "error" or ("refused" in data[0] and "added" not in data[0]), (path, data)
    r = httpx.post(srv.url + "/v1/knowledge/default/search",
                   json={"query": "vault combination zebra-quokka", "score_threshold": -1}, timeout=30)
    assert r.status_code in (200, 404), r.text
    assert "zebra" not in r.text
    files = httpx.get(srv.url + "/v1/knowledge/default/files", timeout=10)
    assert files.status_code == 404 or files.json()["files"] == [], files.text


def test_page_handler_refuses_paths_outside_the_upload_folder(tmp_path, fake_model, embedder):
    """The handler's own guard (behind Gradio's): a path outside Gradio's upload folder,
    or a symlink in it pointing outside, is refused; the real upload beside them is added."""
    from rag.registry import KnowledgeBaseRegistry
    from webui.services import ChatService
    from webui.settings import Settings
    from webui.ui_knowledge import KnowledgeHandlers

    from .conftest import uploaded

    secret = tmp_path / "secret.md"
    secret.write_text("# Secret\n\nThe vault combination is zebra-quokka-4471.\n", encoding="utf-8")
    good = tmp_path / "good.md"
    good.write_text("# Guide\n\nDeepSpeed installs with pip install deepspeed.\n", encoding="utf-8")
    [link] = uploaded([good])
    os.unlink(link)
    os.symlink(secret, link)
    [real] = uploaded([good])
    service = ChatService(fake_model, KnowledgeBaseRegistry(tmp_path / "kb", embedder),
                          Settings(knowledge_dir=str(tmp_path / "kb")))
    report, _ = KnowledgeHandlers(service).ingest([str(secret), link, real], "default")
    rows = {line.split("|")[1].strip(): line for line in report.splitlines()[2:]}
    assert "refused" in rows["secret.md"] and "file picker" in rows["secret.md"]
    assert "added" in rows["good.md"] and report.count("refused") == 2, report
    hits = service.knowledge_base("default").search("vault combination zebra", top_k=5)
    assert all("zebra" not in h.chunk.text for h in hits)


def upload(url: str, kb: str, files: list[tuple[str, bytes]], timeout: float = 600) -> httpx.Response:
    return httpx.post(f"{url}/v1/knowledge/{kb}/files", files=[("files", (n, d)) for n, d in files],
                      timeout=timeout)


def listed(url: str, kb: str) -> list[str] | None:
    r = httpx.get(f"{url}/v1/knowledge/{kb}/files", timeout=30)
    return None if r.status_code == 404 else sorted(f["name"] for f in r.json()["files"])


def test_a_deleted_base_stays_deleted_and_a_later_upload_is_kept(server, corpus, tmp_path):
    """Item 2 and ``DELETE /v1/knowledge/{kb}``: a delete while an upload to the base runs
    stops that upload; a file uploaded after the delete is kept, also after a restart."""
    import threading

    readme = (corpus / "deepspeed" / "README.md").read_bytes()
    batch = [(f"copy-{i}.md", readme + f"\n\nCopy number {i}.\n".encode()) for i in range(8)]
    srv = server()
    srv.wait()
    replies = {}
    running = threading.Thread(target=lambda: replies.setdefault("race", upload(srv.url, "race", batch)))
    running.start()
    deadline = time.monotonic() + 120
    while listed(srv.url, "race") is None and time.monotonic() < deadline:  # the base exists once the upload runs
        time.sleep(0.2)
    time.sleep(1.0)
    deleted = httpx.delete(srv.url + "/v1/knowledge/race", timeout=120)
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True, deleted.text
    later = upload(srv.url, "race", [("later.md", b"# Later\n\nThe later upload mentions aardvarks.\n")])
    assert later.json()["files"][0]["status"] == "added", later.text
    running.join(600)
    reports = replies["race"].json()["files"]
    assert any(r["status"] == "refused" and "deleted" in r["reason"] for r in reports), reports
    assert listed(srv.url, "race") == ["later.md"]
    srv.stop()

    again = server()
    again.wait()
    assert listed(again.url, "race") == ["later.md"], "nothing of the deleted upload came back"
    assert httpx.delete(again.url + "/v1/knowledge/nothing-here", timeout=30).status_code == 404
    assert httpx.delete(again.url + "/v1/knowledge/..%2Fx", timeout=30).status_code in (400, 404)


def test_cli_and_server_writing_one_base_lose_nothing(server, corpus, tmp_path):
    """Item 3: ``python -m rag ingest`` into the folder a running server uses, while the
    server takes an upload to the same base: both files are there, in the server and on disk."""
    import subprocess
    import sys

    from .server_utils import ROOT, server_env

    srv = server()
    srv.wait()
    cli = subprocess.Popen([sys.executable, "-m", "rag", "ingest", str(corpus / "deepspeed" / "zero.md"),
                            "--kb", "shared", f"--knowledge-dir={tmp_path / 'knowledge'}", "--no-progress"],
                           cwd=ROOT, env=server_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    r = upload(srv.url, "shared", [("install.md", (corpus / "deepspeed" / "advanced-install.md").read_bytes())])
    assert r.json()["files"][0]["status"] == "added", r.text
    out, _ = cli.communicate(timeout=600)
    assert cli.returncode == 0, out
    assert listed(srv.url, "shared") == ["install.md", "zero.md"], "the server sees the CLI's file too"
    r = upload(srv.url, "shared", [("extra.md", b"# Extra\n\nAn extra page about aardvarks.\n")])
    assert listed(srv.url, "shared") == ["extra.md", "install.md", "zero.md"], "and keeps it after its own write"
    hits = httpx.post(srv.url + "/v1/knowledge/shared/search", json={"query": "ZeRO optimizer states",
                                                                    "score_threshold": -1}, timeout=60).json()
    assert any(h["source"] == "zero.md" for h in hits["results"])


def test_hostile_inputs_get_a_4xx_naming_the_field(server):
    """Items 4, 8, 9, 10: long queries, big bodies, nested JSON, huge integers, tiny
    temperatures, bad base names, unknown /v1 paths; every answer a 4xx in the API's shape."""
    srv = server("--max-request-mb=1")
    srv.wait()
    post = lambda path, **kw: httpx.post(srv.url + path, timeout=60, **kw)  # noqa: E731

    r = post("/v1/knowledge/default/search", json={"query": "汉" * 200_000})
    assert r.status_code == 413 or (r.status_code == 422 and r.json()["error"]["param"] == "query"), r.text
    r = post("/v1/knowledge/default/search", json={"query": "汉" * 5000})
    assert r.status_code == 422 and r.json()["error"]["param"] == "query", r.text
    r = post("/", content=b'{"prompt": "' + b"x" * (2 << 20) + b'"}', headers={"content-type": "application/json"})
    assert r.status_code == 413 and "--max-request-mb" in r.json()["error"]["message"]
    r = post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x" * (2 << 20)}]})
    assert r.status_code == 413
    nested = "[" * 100_000 + "]" * 100_000
    for path in ("/", "/v1/chat/completions", "/v1/knowledge/default/search"):
        r = post(path, content=nested.encode(), headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text[:200])
    r = post("/", content=b'{"prompt": "hi", "max_new_tokens": ' + b"9" * 5000 + b"}",
             headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    r = post("/", json={"prompt": "hi", "temperature": 1e-320, "max_new_tokens": 4})
    assert r.status_code == 200, "a vanishing temperature decodes greedily"
    r = post("/", json={"prompt": "hi", "history": [["q", "a"]] * 1000})
    assert r.status_code == 422 and r.json()["error"]["param"].startswith("history")
    for name in ("😀" * 64, "bad%0A", "a" * 65):
        r = post(f"/v1/knowledge/{name}/search", json={"query": "q"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "kb", (name, r.text)
    r = httpx.get(srv.url + "/v1/nothing", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.put(srv.url + "/v1/models", timeout=10)
    assert r.status_code == 405 and "GET" in r.headers["allow"] and "error" in r.json()
    r = httpx.post(srv.url + "/v1/knowledge/default/files", content=b"--x\r\nbroken",
                   headers={"content-type": "multipart/form-data; boundary=x"}, timeout=10)
    assert 400 <= r.status_code < 500 and r.json()["error"]["type"] != "server_error", r.text
    # an upload whose files are all refused creates no base
    r = upload(srv.url, "empty-one", [("a.bin", b"\x00\x01\x02"), ("b.xyz", b"nothing")])
    assert all(f["status"] == "refused" for f in r.json()["files"]), r.text
    assert listed(srv.url, "empty-one") is None
    assert "empty-one" not in httpx.get(srv.url + "/v1/knowledge", timeout=10).text
    for path in ("/", "/config", "/v1/models"):  # no page of another origin reads this server
        r = httpx.get(srv.url + path, headers={"origin": "http://localhost:9999"}, timeout=10)
        assert "access-control-allow-origin" not in r.headers, (path, r.headers)
    r = httpx.get(srv.url + "/health", headers={"host": "attacker.example"}, timeout=10)
    assert r.status_code == 400, "no token on loopback: a foreign Host (DNS rebinding) is refused"
    # a search of many characters in a retrieval-augmented question: refused before retrieving
    r = post("/", json={"prompt": "汉" * 100_000, "langchain": True})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text


def test_streams_do_not_repeat_history_and_leaving_stops_generation(server):
    """Items 5 and 6: a streamed PAI-EAS reply carries the request's history once (in the
    last chunk), not in every chunk; a WebSocket client that leaves a non-streamed answer
    frees its generation place at once; a cross-site WebSocket is refused."""
    import websocket

    srv = server("--max-new-tokens=64")
    srv.wait()
    history = [[f"question {i} " + "q" * 200, f"answer {i} " + "a" * 200] for i in range(200)]
    body = {"prompt": "Tell me about DeepSpeed.", "history": history, "use_stream_chat": True,
            "max_new_tokens": 64}
    r = httpx.post(srv.url + "/", json=body, timeout=120)
    chunks = [json.loads(c) for c in r.content.split(b"\0") if c.strip()]
    assert len(chunks) >= 3, "streamed"
    assert len(r.content) < 3 * len(json.dumps(body)), f"{len(r.content)} bytes for a {len(json.dumps(body))}-byte request"
    assert len(chunks[-1]["history"]) == 201 and all(len(c["history"]) == 1 for c in chunks[:-1])
    assert "".join(c["response"] for c in chunks) == chunks[-1]["history"][-1][1]

    ws_url = srv.url.replace("http://", "ws://") + "/"
    ws = websocket.create_connection(ws_url, timeout=30)
    ws.send(json.dumps({"prompt": "Write a long story.", "max_new_tokens": 4000}))
    deadline = time.monotonic() + 30
    while httpx.get(srv.url + "/health", timeout=10).json()["generation"]["active"] == 0:
        assert time.monotonic() < deadline, "the request never started"
        time.sleep(0.05)
    ws.close()
    left = time.monotonic()
    while httpx.get(srv.url + "/health", timeout=10).json()["generation"]["active"] != 0:
        assert time.monotonic() - left < 10, "generation kept its place after the client left"
        time.sleep(0.05)

    try:
        foreign = websocket.create_connection(ws_url, timeout=10, origin="http://evil.example")
        foreign.send(json.dumps({"prompt": "hi"}))
        refused = foreign.recv() == ""
    except (websocket.WebSocketException, OSError):
        refused = True
    assert refused, "a WebSocket from another site's page is refused"


def test_the_token_never_appears_in_the_log(server):
    """Item 7, through the real server: the browser's ``/?token=`` is redirected away and
    masked in the access log."""
    srv = server("--api-token=TopSecret-42")
    srv.wait()
    r = httpx.get(srv.url + "/?token=TopSecret-42", timeout=30, follow_redirects=False)
    assert r.status_code == 303 and "TopSecret" not in r.headers["location"]
    assert "TopSecret" not in r.headers["set-cookie"]
    page = httpx.get(srv.url + "/", cookies=r.cookies, timeout=30)
    assert page.status_code == 200
    assert httpx.get(srv.url + "/?token=wrong", timeout=30).status_code == 401
    time.sleep(0.5)
    log = srv.output()
    assert "token=***" in log and "TopSecret" not in log
