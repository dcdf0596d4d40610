"""End to end: the real server in a subprocess on a free loopback port, driven through
the page's own handlers with gradio_client: upload a real document, get a streamed
answer with sources, restart, and find the knowledge base still there."""
from __future__ import annotations

import httpx
import pytest

GEN = ("You are a helpful assistant.", 12, 0.7, 20, 0.8, 5)  # system, max_new_tokens, temp, top_k, top_p, max_round

pytestmark = pytest.mark.slow


def client_for(url: str):
    from gradio_client import Client

    return Client(url + "/", verbose=False, analytics_enabled=False, download_files=False)


def test_page_upload_streamed_answer_with_sources_and_restart(server, corpus, tmp_path):
    from gradio_client import handle_file

    srv = server()
    health = srv.wait()
    assert health["demo"] is True, "offline with no --model-path: the demo model serves"
    assert "demo model" in srv.output().lower()

    page = httpx.get(srv.url + "/", timeout=10)
    assert page.status_code == 200 and "gradio" in page.text.lower()

    client = client_for(srv.url)
    report, status = client.predict(
        [handle_file(corpus / "deepspeed" / "README.md"), handle_file(corpus / "pdf" / "libreoffice-writer-password.pdf")],
        api_name="/ingest")
    assert "README.md" in report and "added" in report
    assert "libreoffice-writer-password.pdf" in report and "refused" in report
    assert "1 file(s)" in status

    job = client.submit("How do I install DeepSpeed?", 3, 0.0, *GEN, api_name="/rag_chat")
    updates = list(job)
    chatbot, box, sources = job.outputs()[-1]
    assert len(job.outputs()) >= 3, f"answer not streamed: {len(job.outputs())} update(s)"
    assert "<b>README.md</b>" in sources  # the page shows each source's first lines; the full chunk:
    hits = httpx.post(srv.url + "/v1/knowledge/default/search", json={"query": "How do I install DeepSpeed?"},
                      timeout=60).json()["results"]
    assert any("pip install deepspeed" in h["text"] for h in hits), "the install section is among the top 3"
    assert chatbot[0]["role"] == "user"
    assert updates, "the job yielded its streamed updates"

    # Chat tab: two rounds in one session keep the history.
    client.predict("hello", *GEN, api_name="/chat")
    chatbot, box = client.predict("and again", *GEN, api_name="/chat")
    assert [m["role"] for m in chatbot] == ["user", "assistant", "user", "assistant"]

    chunks = health_after = srv.wait()["knowledge_base"]["chunks"]
    assert chunks > 0
    srv.stop()

    again = server()
    health_after = again.wait()
    assert health_after["knowledge_base"]["chunks"] == chunks, "the knowledge base survives a restart"
    job = client_for(again.url).submit("How do I install DeepSpeed?", 3, 0.0, *GEN, api_name="/rag_chat")
    list(job)
    assert "<b>README.md</b>" in job.outputs()[-1][2], "sources again after the restart"


def test_webui_server_script_with_bad_model_path_exits_nonzero(server, tmp_path):
    missing = tmp_path / "no-such-model"
    srv = server(f"--model-path={missing}", script="webui/webui_server.py")
    assert srv.proc.wait(timeout=120) != 0
    out = srv.output()
    assert str(missing) in out
    assert "error" in out.lower()
