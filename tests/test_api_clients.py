"""The API against the real clients people use, with the real server (tiny demo model)
on a free loopback port and an access token: the PAI-EAS request scripts' way of
calling (requests, websocket-client), langchain-community's PaiEasEndpoint and
PaiEasChatEndpoint, the openai client and LangChain's ChatOpenAI."""
from __future__ import annotations

import json

import pytest
import requests

TOKEN = "s3cret-token"
MAX_NEW = 12  # the demo model never emits EOS, so every answer is exactly this many tokens

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api(tmp_path_factory, corpus):
    """One server for the module, with a knowledge base holding DeepSpeed's README."""
    from .server_utils import Server

    srv = Server(tmp_path_factory.mktemp("api"), f"--api-token={TOKEN}", f"--max-new-tokens={MAX_NEW}",
                 "--max_round=2")
    try:
        srv.wait()
        with open(corpus / "deepspeed" / "README.md", "rb") as f:
            r = requests.post(f"{srv.url}/v1/knowledge/default/files", headers={"Authorization": TOKEN},
                              files=[("files", ("README.md", f))], timeout=120)
        assert r.status_code == 200 and r.json()["files"][0]["status"] == "added", r.text
        yield srv
    finally:
        srv.stop()


# ---------------------------------------------------------------- PAI-EAS request scripts

def post_http_request(url, prompt, history, token, use_stream_chat=False, **params):
    """As PAI-EAS's published HTTP client script sends it."""
    headers = {"User-Agent": "Test Client", "Authorization": token}
    pload = {"prompt": prompt, "system_prompt": "You are a helpful assistant.", "top_k": 1, "top_p": 0.8,
             "temperature": 0.95, "max_new_tokens": MAX_NEW, "use_stream_chat": use_stream_chat,
             "history": history, **params}
    return requests.post(url, headers=headers, json=pload, stream=use_stream_chat, timeout=120)


def get_response(response):
    for chunk in response.iter_lines(chunk_size=8192, decode_unicode=False, delimiter=b"\0"):
        if chunk:
            data = json.loads(chunk.decode("utf-8"))
            yield data["response"], data["history"]


def test_pai_http_script_multi_round(api):
    r = post_http_request(api.url, "你好", [], TOKEN)
    assert r.status_code == 200
    (answer, history), = list(get_response(r))
    assert answer and history == [["你好", answer]]
    r = post_http_request(api.url, "How do I install DeepSpeed?", history, TOKEN)
    (answer2, history2), = list(get_response(r))
    assert history2 == [["你好", answer], ["How do I install DeepSpeed?", answer2]]


def test_pai_http_script_streaming(api):
    r = post_http_request(api.url, "stream please", [], TOKEN, use_stream_chat=True)
    pieces = list(get_response(r))
    assert len(pieces) > 1, "streamed in several chunks"
    full = "".join(p for p, _ in pieces)
    assert pieces[-1][1] == [["stream please", full]]


def test_pai_http_langchain_mode_returns_sources(api):
    r = post_http_request(api.url, "How do I install DeepSpeed?", [], TOKEN, langchain=True, score_threshold=0)
    body = r.json()
    assert body["sources"][0]["source"] == "README.md"
    assert any("pip install deepspeed" in s["text"] for s in body["sources"])


def test_pai_http_token_refused(api):
    assert post_http_request(api.url, "q", [], "wrong").status_code == 401
    assert requests.post(api.url, json={"prompt": "q"}, timeout=30).status_code == 401


def test_pai_websocket_script_conversation(api):
    import websocket

    ws = websocket.create_connection(api.url.replace("http", "ws") + "/", header=[f"Authorization: {TOKEN}"],
                                     timeout=120)
    try:
        histories = []
        for prompt, stream in (("first", False), ("second", True), ("third", True)):
            ws.send(json.dumps({"prompt": prompt, "use_stream_chat": stream, "max_new_tokens": MAX_NEW}))
            replies = []
            while (msg := ws.recv()) != "<EOS>":
                replies.append(json.loads(msg))
            assert len(replies) > 1 if stream else len(replies) == 1
            histories.append(replies[-1]["history"])
    finally:
        ws.close()
    assert [h[0] for h in histories[1]] == ["first", "second"]
    assert [h[0] for h in histories[2]] == ["first", "second", "third"], "max_round=2 keeps two earlier rounds"


def test_pai_websocket_token_refused(api):
    import websocket

    with pytest.raises(websocket.WebSocketException):
        websocket.create_connection(api.url.replace("http", "ws") + "/", timeout=30,
                                    header=["Authorization: wrong"])


# ---------------------------------------------------------------- langchain-community

def test_langchain_pai_eas_endpoint_invoke_and_stream(api):
    from langchain_community.llms.pai_eas_endpoint import PaiEasEndpoint

    llm = PaiEasEndpoint(eas_service_url=api.url + "/", eas_service_token=TOKEN, max_new_tokens=MAX_NEW,
                         temperature=0.1)
    assert isinstance(llm.invoke("How do I install DeepSpeed?"), str)
    # stop_sequences=[]: langchain-community's _stream iterates params["stop"], which is None otherwise
    # (a client-side bug that fails against any server).
    llm_stream = PaiEasEndpoint(eas_service_url=api.url + "/", eas_service_token=TOKEN, max_new_tokens=MAX_NEW,
                                streaming=True, stop_sequences=[])
    chunks = list(llm_stream.stream("Say something"))
    assert len(chunks) > 1 and "".join(chunks)


def test_langchain_pai_eas_chat_endpoint_sends_history(api):
    from langchain_community.chat_models.pai_eas_endpoint import PaiEasChatEndpoint
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    chat = PaiEasChatEndpoint(eas_service_url=api.url + "/", eas_service_token=TOKEN, max_new_tokens=MAX_NEW)
    out = chat.invoke([SystemMessage(content="Be brief."), HumanMessage(content="hi"),
                       AIMessage(content="hello"), HumanMessage(content="install?")])
    assert isinstance(out.content, str) and out.content


def test_langchain_pai_eas_endpoint_wrong_token(api):
    from langchain_community.llms.pai_eas_endpoint import PaiEasEndpoint

    with pytest.raises(ValueError, match="401"):
        PaiEasEndpoint(eas_service_url=api.url + "/", eas_service_token="wrong").invoke("q")


# ---------------------------------------------------------------- OpenAI

def test_openai_client_models_completion_and_stream(api):
    import openai

    client = openai.OpenAI(base_url=api.url + "/v1", api_key=TOKEN)
    model = client.models.list().data[0].id
    assert model == "demo"
    out = client.chat.completions.create(model=model, max_tokens=MAX_NEW, temperature=0, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I install DeepSpeed?"}])
    assert out.choices[0].message.content
    assert out.choices[0].finish_reason == "length", "the demo model runs to max_tokens"
    assert 0 < out.usage.prompt_tokens and out.usage.completion_tokens >= MAX_NEW - 2
    again = client.chat.completions.create(model=model, max_tokens=MAX_NEW, temperature=0, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I install DeepSpeed?"}])
    assert again.choices[0].message.content == out.choices[0].message.content, "temperature 0 is greedy"

    stream = client.chat.completions.create(model=model, max_tokens=MAX_NEW, stream=True,
                                            stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "hi"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert chunks[-1].usage.completion_tokens > 0


def test_openai_client_errors(api):
    import openai

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=api.url + "/v1", api_key="wrong").models.list()
    client = openai.OpenAI(base_url=api.url + "/v1", api_key=TOKEN)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "q"}])
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="demo", temperature=5, messages=[{"role": "user", "content": "q"}])


def test_langchain_chat_openai_invoke_and_stream(api):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=api.url + "/v1", api_key=TOKEN, model="demo", max_tokens=MAX_NEW, temperature=0)
    assert llm.invoke("How do I install DeepSpeed?").content
    parts = [c.content for c in llm.stream("hello")]
    assert len([p for p in parts if p]) > 1
