"""The page of issue 15 in a real browser (headless Debian Chromium, Playwright):
conversations kept across a reload and a server restart, private to each browser;
the Chinese page for a zh-CN browser and the English one for en-US, with the switch;
a chat that answers while a 117-page PDF is ingesting, and the upload cancelled; stop halting a long answer.

Screenshots of both languages go to ``$CHATLLM_SCREENSHOTS`` when it is set.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from .test_browser import ARGS, CHROMIUM, TIMEOUT_MS

pytestmark = pytest.mark.slow
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]' brings playwright")
expect = sync_api.expect


@pytest.fixture
def browser():
    if not CHROMIUM:
        pytest.skip("Chromium is not installed: install Debian's chromium package (apt-get install chromium)")
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def open_page(browser, url: str, locale: str = "en-US"):
    """A fresh browser profile (its own localStorage) on the page, loaded."""
    page = browser.new_context(locale=locale, viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url + "/")
    expect(page.locator("#chat-send")).to_be_visible()
    return page


def ask(page, text: str) -> None:
    page.locator("#chat-input textarea").fill(text)
    page.locator("#chat-send").click()
    expect(page.locator("#chat-chatbot [data-testid='user']").last).to_have_text(text)


def test_conversations_survive_reload_and_restart_and_stay_private(server, browser):
    srv = server("--max-new-tokens=6")
    srv.wait()
    alice = open_page(browser, srv.url)
    ask(alice, "Alice keeps this question")
    conversations = alice.locator("#chat-conv-list")
    expect(conversations).to_contain_text("Alice keeps this question")

    alice.reload()
    expect(conversations).to_contain_text("Alice keeps this question")
    expect(alice.locator("#chat-chatbot [data-testid='user']")).to_have_count(0)
    conversations.get_by_text("Alice keeps this question").click()
    expect(alice.locator("#chat-chatbot [data-testid='user']")).to_have_text("Alice keeps this question")

    bob = open_page(browser, srv.url)  # another browser profile
    ask(bob, "Bob asks something else")
    expect(bob.locator("#chat-conv-list")).to_contain_text("Bob asks something else")
    expect(bob.locator("#chat-conv-list")).not_to_contain_text("Alice keeps this question")
    expect(conversations).not_to_contain_text("Bob asks something else")

    url = srv.url
    srv.stop()
    again = server(f"--port={srv.port}", "--max-new-tokens=6")  # the same address: the browser keeps its id
    again.url = url
    again.wait()
    alice.reload()
    expect(conversations).to_contain_text("Alice keeps this question")
    expect(conversations).not_to_contain_text("Bob asks something else")
    conversations.get_by_text("Alice keeps this question").click()
    expect(alice.locator("#chat-chatbot [data-testid='user']")).to_have_text("Alice keeps this question")
    expect(alice.locator("#chat-chatbot [data-testid='bot']")).not_to_have_text("")


def test_chinese_and_english_pages_and_the_switch(server, browser):
    srv = server("--max-new-tokens=6")
    srv.wait()
    shots = os.environ.get("CHATLLM_SCREENSHOTS")
    zh = open_page(browser, srv.url, locale="zh-CN")
    expect(zh.locator("#chat-send")).to_have_text("发送")
    expect(zh.locator("#chat-clear")).to_have_text("清空历史")
    expect(zh.get_by_role("tab", name="LangChain")).to_be_visible()
    expect(zh.get_by_text("演示模型。")).to_be_visible()
    if shots:
        zh.screenshot(path=str(Path(shots) / "page-zh-CN.png"), full_page=True)
    en = open_page(browser, srv.url, locale="en-US")
    expect(en.locator("#chat-send")).to_have_text("Send")
    expect(en.locator("#chat-clear")).to_have_text("Clear history")
    if shots:
        en.screenshot(path=str(Path(shots) / "page-en-US.png"), full_page=True)
    # the server's own text follows too
    zh.get_by_role("tab", name="LangChain").click()
    expect(zh.locator("#kb-status")).to_contain_text("个文件")
    # the switch: English on a Chinese browser, kept across a reload
    zh.locator("#language").get_by_text("English").click()
    expect(zh.locator("#rag-send")).to_have_text("Send")
    expect(zh.locator("#kb-status")).to_contain_text("file(s)")
    zh.reload()
    expect(zh.locator("#chat-send")).to_have_text("Send")
    assert "发送" not in zh.locator("#chat-send").inner_text()


def test_chat_answers_while_a_large_pdf_is_ingesting(server, browser, corpus):
    srv = server("--max-new-tokens=6")
    srv.wait()
    page = open_page(browser, srv.url)
    page.get_by_role("tab", name="LangChain").click()
    page.locator("#kb-files input[type=file]").set_input_files(str(corpus / "pdf" / "GeoTopo-komprimiert.pdf"))
    expect(page.locator("#kb-files")).to_contain_text("GeoTopo")
    page.locator("#kb-ingest").click()
    expect(page.locator("#kb-progress")).to_contain_text("GeoTopo")  # the progress line, in its own place
    expect(page.locator("#kb-status")).to_be_visible()
    page.get_by_role("tab", name="Chat").click()
    ask(page, "Are you still there?")
    expect(page.locator("#chat-chatbot [data-testid='bot']")).not_to_have_text("")
    assert page.locator("#kb-report").inner_text().strip() == "", "the answer came while the PDF was ingesting"
    # cancel: the file being embedded is not added, the base stays as it was
    page.get_by_role("tab", name="LangChain").click()
    page.locator("#kb-ingest-cancel").click()
    expect(page.locator("#kb-report")).to_contain_text("Upload cancelled")
    expect(page.locator("#kb-status")).to_contain_text("0 file(s)")


def test_stop_halts_a_long_answer(server, browser):
    srv = server("--max-new-tokens=4000")
    srv.wait()
    page = open_page(browser, srv.url)
    ask(page, "Write a very long answer")
    bot = page.locator("#chat-chatbot [data-testid='bot']")
    expect(bot).not_to_have_text("")
    page.locator("#chat-stop").click()
    time.sleep(1)  # let an update in flight land
    stopped = bot.inner_text()
    time.sleep(3)
    assert bot.inner_text() == stopped, "no more text after stop"
    ask(page, "and a new question")  # the page takes the next question


def test_sign_in_with_accounts_and_each_user_has_their_own_conversations(server, browser, tmp_path):
    """Issue 15, item 2: users written by ``python -m webui users add``, the sign-in page
    (a wrong password refused, in the browser's language), a conversation per user, sign-out."""
    import subprocess
    import sys

    from .server_utils import ROOT, server_env

    users = tmp_path / "users.json"
    for name in ("alice", "bob"):
        subprocess.run([sys.executable, "-m", "webui", "users", "add", name, "--password-stdin", "--auth-file",
                        str(users)], input=f"{name}-password\n", text=True, cwd=ROOT, env=server_env(tmp_path),
                       check=True, capture_output=True)
    srv = server("--max-new-tokens=6", f"--auth-file={users}")
    srv.wait()

    def sign_in(name: str, password: str, locale: str = "en-US"):
        page = browser.new_context(locale=locale, viewport={"width": 1400, "height": 1000}).new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(srv.url + "/")
        page.locator("#signin-name").fill(name)
        page.locator("#signin-password").fill(password)
        page.locator("#signin-submit").click()
        return page

    wrong = sign_in("alice", "bob-password", locale="zh-CN")
    expect(wrong.locator("#signin-error")).to_have_text("用户名或密码错误。")
    alice = sign_in("alice", "alice-password")
    expect(alice.locator("#account")).to_contain_text("Signed in as alice")
    ask(alice, "Alice keeps this question")
    expect(alice.locator("#chat-conv-list")).to_contain_text("Alice keeps this question")

    bob = sign_in("bob", "bob-password")
    expect(bob.locator("#chat-send")).to_be_visible()
    expect(bob.locator("#account")).to_contain_text("Signed in as bob")
    expect(bob.locator("#chat-conv-list")).not_to_contain_text("Alice keeps this question")

    alice.locator("#sign-out").click()
    expect(alice.locator("#signin-form")).to_be_visible()
    alice.goto(srv.url + "/")
    expect(alice.locator("#signin-form")).to_be_visible()
    again = sign_in("alice", "alice-password")  # another browser profile: her conversations follow her
    expect(again.locator("#chat-conv-list")).to_contain_text("Alice keeps this question")
