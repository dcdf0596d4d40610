"""Accounts, when wanted (issue 15, item 2): ``python -m webui users`` writes the auth file,
``--auth-file`` puts a sign-in page in front of the page, each user sees only their own
conversations, and the API token keeps working beside it.

The app tests write their auth file with scrypt at N = 2**10 (a hash in ~1 ms) so they stay
fast; the CLI test uses the real default (N = 2**17, ~0.6 s a hash)."""
from __future__ import annotations

import io
import json
import stat

import gradio as gr
import pytest
from fastapi.testclient import TestClient

from rag.registry import KnowledgeBaseRegistry
from webui import users_cli
from webui.accounts import AuthFile, verify_password
from webui.app import create_app
from webui.conversations import ConversationStore, new_owner_id
from webui.services import ChatService
from webui.settings import Settings
from webui.signin import USER_COOKIE
from webui.ui import PageHandlers

from .conftest import FakeChatModel

GEN = ("You are terse.", 16, 0.7, 20, 0.8, 5)
PASSWORDS = {"alice": "alice-password-1", "bob": "bob-password-22"}
FAST = {"log2_n": 10}  # tests only; the file stores the parameters of each hash


def cli(tmp_path, *argv: str, stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    code = users_cli.main([*argv, "--auth-file", str(tmp_path / "users.json")], stdin=io.StringIO(stdin), out=out)
    return code, out.getvalue()


def test_users_cli_writes_a_private_file_that_verifies_only_the_right_password(tmp_path, capsys):
    code, said = cli(tmp_path, "add", "alice", "--password-stdin", stdin="correct horse battery\n")
    assert code == 0 and "added alice" in said
    path = tmp_path / "users.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = json.loads(path.read_text())["users"]["alice"]["password"]
    assert stored.startswith("$scrypt$ln=17,r=8,p=1$") and "correct horse" not in path.read_text()
    assert verify_password("correct horse battery", stored)
    assert not verify_password("correct horse batterY", stored)
    assert [p.name for p in tmp_path.iterdir()] == ["users.json"], "no temporary file is left behind"
    # bad input: a clear error naming the fix, the file unchanged
    assert cli(tmp_path, "add", "alice", "--password-stdin", stdin="another password\n")[0] == 1
    assert "users passwd alice" in capsys.readouterr().err
    assert cli(tmp_path, "add", "bob", "--password-stdin", stdin="short\n")[0] == 1
    assert "at least 8 characters" in capsys.readouterr().err
    assert cli(tmp_path, "add", "bad name", "--password-stdin", stdin="long enough\n")[0] == 1
    assert cli(tmp_path, "remove", "carol")[0] == 1 and "no user 'carol'" in capsys.readouterr().err
    assert cli(tmp_path, "list") == (0, f"alice\t{json.loads(path.read_text())['users']['alice']['created']}\n")
    assert cli(tmp_path, "passwd", "alice", "--password-stdin", stdin="a brand new one\n")[0] == 0
    changed = json.loads(path.read_text())["users"]["alice"]["password"]
    assert changed != stored and verify_password("a brand new one", changed)
    assert cli(tmp_path, "remove", "alice")[0] == 0 and AuthFile.load(path).users == {}


def test_users_cli_asks_the_password_twice(tmp_path, monkeypatch, capsys):
    answers = iter(["one password", "another one"])
    monkeypatch.setattr(users_cli.getpass, "getpass", lambda prompt: next(answers))
    assert cli(tmp_path, "add", "alice")[0] == 1
    assert "the two passwords differ" in capsys.readouterr().err and not (tmp_path / "users.json").exists()


@pytest.fixture
def auth_file(tmp_path):
    accounts = AuthFile(tmp_path / "users.json")
    for name, password in PASSWORDS.items():
        accounts.add(name, password, **FAST)
    accounts.save()
    return accounts


@pytest.fixture
def make_client(tmp_path, embedder, auth_file):
    def make(**settings) -> TestClient:
        s = Settings(knowledge_dir=tmp_path / "knowledge", auth_file=auth_file.path, **settings)
        service = ChatService(FakeChatModel("Noted ."), KnowledgeBaseRegistry(s.knowledge_dir, embedder), s)
        return TestClient(create_app(service))
    return make


def sign_in(client: TestClient, name: str, password: str, **extra):
    return client.post("/signin", data={"username": name, "password": password, "next": "/", **extra},
                       follow_redirects=False)


def test_the_page_needs_a_signed_in_user(make_client, auth_file):
    client = make_client()
    r = client.get("/?lang=zh&token=leaked", headers={"accept": "text/html"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/signin?next=%2F%3Flang%3Dzh", "no token kept"
    assert client.get("/config").status_code == 401, "Gradio's own routes too"
    assert client.get("/health").status_code == 200
    form = client.get("/signin", headers={"accept-language": "zh-CN,zh;q=0.9"})
    assert form.status_code == 200 and "用户名" in form.text and 'name="password"' in form.text
    assert "User name" in client.get("/signin").text

    wrong_password, unknown_user = sign_in(client, "alice", "bob-password-22"), sign_in(client, "zed", "x" * 9)
    for r in (wrong_password, unknown_user):
        assert r.status_code == 401 and "Wrong user name or password." in r.text and USER_COOKIE not in r.cookies
    assert wrong_password.text.replace("alice", "zed") == unknown_user.text, "no hint which of the two was wrong"
    assert client.get("/", headers={"accept": "text/html"}, follow_redirects=False).status_code == 303

    r = sign_in(client, "alice", PASSWORDS["alice"], next="//evil.example/x")
    assert r.status_code == 303 and r.headers["location"] == "/", "only a path on this server"
    assert "HttpOnly" in r.headers["set-cookie"] and "samesite=lax" in r.headers["set-cookie"].lower()
    assert client.get("/", headers={"accept": "text/html"}).status_code == 200
    assert client.get("/config").json()["username"] == "alice", "Gradio's auth_dependency sees the user"

    r = client.get("/signout", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/signin"
    assert client.get("/", headers={"accept": "text/html"}, follow_redirects=False).status_code == 303

    sign_in(client, "alice", PASSWORDS["alice"])
    assert client.get("/config").status_code == 200
    auth_file.set_password("alice", "a new password", **FAST)
    auth_file.save()
    assert client.get("/config").status_code == 401, "a new password ends the sessions (the file is re-read)"
    client.cookies.clear()
    client.cookies.set(USER_COOKIE, "eyJ1IjoiYm9iIn0.forged")
    assert client.get("/config").status_code == 401
    client.cookies.clear()
    r = client.post("/signin", data={"username": "bob", "password": PASSWORDS["bob"]},
                    headers={"origin": "https://evil.example"})
    assert r.status_code == 403 and USER_COOKIE not in r.cookies, "a sign-in posted from another site"


def test_the_api_token_works_beside_the_accounts(make_client):
    client = make_client(api_token="s3cret")
    assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    r = client.post("/", json={"prompt": "q"}, headers={"Authorization": "s3cret"})
    assert r.status_code == 200 and "Noted" in r.text, "PAI-EAS POST / is an API route, not the page"
    denied = client.get("/v1/models", headers={"Authorization": "Bearer wrong"})
    assert denied.status_code == 401 and denied.json()["error"]["type"] == "authentication_error"
    with client.websocket_connect("/", headers={"Authorization": "s3cret"}) as ws:
        ws.send_text(json.dumps({"prompt": "q"}))
        assert "Noted" in json.loads(ws.receive_text())["response"]
    # the page needs a user: the token does not stand in for one
    assert client.get("/config", headers={"Authorization": "s3cret"}).status_code == 401
    sign_in(client, "bob", PASSWORDS["bob"])
    assert client.get("/v1/models").status_code == 200, "a signed-in user may use the API too"

    no_token = make_client()
    assert no_token.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 401
    sign_in(no_token, "bob", PASSWORDS["bob"])
    assert no_token.get("/v1/models").status_code == 200


def test_two_users_never_see_each_others_conversations_through_the_page(make_client, tmp_path):
    """Through the real app: Gradio's queue, the page's own event names, the sign-in cookie.
    Bob even sends the hash of Alice's Gradio session (whose state holds her owner id and
    whose sidebar lists her conversation): he still acts as himself."""
    def call(client, api_name, data, session):
        r = client.post(f"/gradio_api/call/{api_name}", json={"data": data, "session_hash": session})
        assert r.status_code == 200, r.text
        events = client.get(f"/gradio_api/call/{api_name}/{r.json()['event_id']}").text
        kind, payload = [block for block in events.split("\n\n") if block.strip()][-1].split("\n", 1)
        return kind.removeprefix("event: "), json.loads(payload.removeprefix("data: "))

    def listed(client, session):
        _, outputs = call(client, "conversations_init", [None, "en"], session)
        return [c[1] for c in outputs[4]["choices"]]  # the Chat tab's sidebar

    alice, bob = make_client(), make_client()
    with alice, bob:
        sign_in(alice, "alice", PASSWORDS["alice"])
        sign_in(bob, "bob", PASSWORDS["bob"])
        assert listed(alice, "alice-session") == []
        assert call(alice, "chat", ["my secret plan", *GEN], "alice-session")[0] == "complete"
        store = ConversationStore(tmp_path / "data" / "conversations.sqlite3")
        [kept] = store.list("user:alice")
        assert store.get("user:alice", kept.id).rounds == [["my secret plan", "Noted ."]]
        assert listed(alice, "alice-session") == [kept.id] and listed(bob, "bob-session") == []
        assert listed(alice, "another-browser") == [kept.id], "the user's conversations from any browser"

        kind, said = call(bob, "conversation_open_chat", [kept.id], "alice-session")
        assert kind == "error" and "my secret plan" not in json.dumps(said), said
        assert listed(bob, "alice-session") == [], "alice's session hash lists bob's conversations to bob"
        kind, opened = call(alice, "conversation_open_chat", [kept.id], "another-browser")
        assert kind == "complete" and "my secret plan" in json.dumps(opened)
        assert store.list("user:bob") == [] and len(store.list("user:alice")) == 1
        store.close()


def test_handlers_take_the_owner_from_the_request_not_the_session_state(tmp_path, embedder, auth_file):
    """A client that sends another session's hash gets that session's state (the owner
    ``user:alice``), but the handlers still act for the request's signed-in user."""
    s = Settings(knowledge_dir=tmp_path / "knowledge", auth_file=auth_file.path)
    h = PageHandlers(ChatService(FakeChatModel("Noted ."), KnowledgeBaseRegistry(s.knowledge_dir, embedder), s))
    as_alice, as_bob = gr.Request(username="alice"), gr.Request(username="bob")
    *_, (_, _, _, cid) = h.chat_kept("alice's question", [], *GEN, None, None, "en", as_alice)
    assert [c.id for c in h.conversations.store.list("user:alice")] == [cid]
    with pytest.raises(gr.Error):
        h.open_chat("user:alice", cid, "en", as_bob)
    c = h.conversations
    for attempt in (lambda: c.rename(c.owner_of("user:alice", as_bob), cid, "mine", "chat"),
                    lambda: c.delete(c.owner_of("user:alice", as_bob), cid, "chat"),
                    lambda: c.export(c.owner_of("user:alice", as_bob), cid, "json")):
        with pytest.raises(gr.Error):
            attempt()
    *_, (_, _, _, bobs) = h.chat_kept("bob writes", [], *GEN, "user:alice", cid, "en", as_bob)
    assert bobs != cid and h.conversations.store.get("user:alice", cid).rounds == [["alice's question", "Noted ."]]
    assert h.open_chat(None, cid, "en", as_alice)[2] == cid
    assert c.owner_of("user:alice", gr.Request()) is None, "signed out: nothing listed or kept"
    # a browser id can never name a user: the page's start() refuses it and makes a new one
    assert c.start("user:alice") != "user:alice"


def test_without_accounts_the_owner_is_still_the_browser(tmp_path, embedder):
    s = Settings(knowledge_dir=tmp_path / "knowledge")
    h = PageHandlers(ChatService(FakeChatModel("Noted ."), KnowledgeBaseRegistry(s.knowledge_dir, embedder), s))
    me = new_owner_id()
    *_, (_, _, _, cid) = h.chat_kept("hello", [], *GEN, me, None, "en", gr.Request(username=None))
    assert [x.id for x in h.conversations.store.list(me)] == [cid]


def test_a_file_that_is_not_an_auth_file_stops_the_server_before_loading_anything(tmp_path, capsys):
    from webui.webui_server import main

    bad = tmp_path / "users.json"
    bad.write_text('{"alice": "hunter2"}', encoding="utf-8")
    assert main([f"--auth-file={bad}", f"--knowledge-dir={tmp_path / 'knowledge'}"]) == 2
    assert "python -m webui users add NAME" in capsys.readouterr().err
    assert not (tmp_path / "knowledge").exists(), "nothing was loaded or created"


def test_a_flood_of_sign_ins_is_told_to_wait_and_a_proxied_form_is_accepted(make_client):
    from webui.signin import SIGNIN_WAITING

    client = make_client()
    limiter = client.app.state.accounts._hashing
    leaves = [limiter.gate.enter() for _ in range(2 + SIGNIN_WAITING)]  # every turn taken
    try:
        r = sign_in(client, "alice", PASSWORDS["alice"])
        assert r.status_code == 503 and "try again" in r.text and r.headers["retry-after"] == "5"
    finally:
        for leave in leaves:
            leave()
    r = client.post(
        "/signin", data={"username": "alice", "password": PASSWORDS["alice"]}, follow_redirects=False,
        headers={"origin": "https://chat.example.org", "x-forwarded-host": "chat.example.org"})
    assert r.status_code == 303 and USER_COOKIE in r.cookies, "behind a proxy the Origin names the forwarded host"
