"""Hostile input through the real server (issue 16): what a client names or sends can
never read server files, outlive a delete, or hold the server."""
from __future__ import annotations

import json
import os

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
