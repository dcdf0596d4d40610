"""The page in Chinese and English (issue 15, item 3): both tables carry the same keys,
the page config carries both, and the server's own text follows the page's language."""
from __future__ import annotations

import re
import string

import pytest

from rag.registry import KnowledgeBaseRegistry
from rag.types import FileReport
from webui.i18n import EN, MESSAGES, ZH, language, page_language, render, t
from webui.services import ChatService
from webui.settings import Settings
from webui.ui import PageHandlers, build_blocks
from webui.ui_knowledge import format_report
from webui.ui_page import relabel, translatable

from .conftest import FakeChatModel

GEN = ("sys", 16, 0.7, 20, 0.8, 5)


def fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_both_languages_have_the_same_keys_and_placeholders():
    assert EN.keys() == ZH.keys()
    assert MESSAGES["en"].keys() == MESSAGES["zh-CN"].keys()
    for key, text in MESSAGES["en"].items():
        assert fields(text) == fields(MESSAGES["zh-CN"][key]), key
    chinese = [k for k, v in ZH.items() if re.search(r"[\u4e00-\u9fff]", v)]
    assert len(chinese) > len(ZH) * 0.8, "the Chinese table is Chinese"
    # recognisable from the PAI-EAS page
    assert (ZH["send"], ZH["clear_history"], ZH["tab_chat"], ZH["tab_langchain"]) == ("发送", "清空历史", "Chat",
                                                                                       "LangChain")
    assert "Vectorstore knowledge" in ZH["vectorstore_knowledge"]


@pytest.mark.parametrize("header, choice, expected", [
    ("zh-CN,zh;q=0.9,en;q=0.8", "auto", "zh-CN"), ("zh-TW", None, "zh-CN"), ("en-US,en;q=0.9", "auto", "en"),
    ("fr-FR", "auto", "en"), (None, None, "en"), ("zh-CN", "en", "en"), ("en-US", "zh-CN", "zh-CN")])
def test_page_language_follows_the_switch_then_the_browser(header, choice, expected):
    assert page_language(choice, header) == expected


@pytest.fixture
def service(tmp_path, embedder):
    registry = KnowledgeBaseRegistry(tmp_path / "knowledge", embedder)
    return ChatService(FakeChatModel("答案 ."), registry, Settings(knowledge_dir=tmp_path / "knowledge"))


def test_page_config_carries_both_languages_and_every_label_translates(service):
    from fastapi.testclient import TestClient

    from webui.app import create_app

    config = TestClient(create_app(service)).get("/config").json()
    assert {"en", "zh-CN"} <= set(config["i18n_translations"])
    assert config["i18n_translations"]["zh-CN"]["send"] == "发送"
    page = build_blocks(service)
    targets = translatable(page)
    assert len(targets) > 30, "labels, buttons, placeholders, banner"
    chinese = [u for u in relabel(targets, "zh-CN")]
    english = [u for u in relabel(targets, "en")]
    texts_zh = {v for u in chinese for k, v in u.items() if k != "__type__"}
    texts_en = {v for u in english for k, v in u.items() if k != "__type__"}
    assert {"发送", "清空历史", "Chat", "LangChain"} <= texts_zh
    assert {"Send", "Clear history", "Vectorstore knowledge"} <= texts_en
    assert not any("__i18n__" in v for v in texts_zh | texts_en)
    header = next(props["value"] for _, props in targets if props.get("value", "").startswith("## ChatLLM-WebUI"))
    assert render(header, "zh-CN") == "## ChatLLM-WebUI  \n模型: `fake`"


def test_server_text_follows_the_language(service, tmp_path):
    h = PageHandlers(service)
    assert "0 个文件" in h.kb_status(None, "zh-CN") and "0 file(s)" in h.kb_status(None, "en")
    report = format_report([FileReport("a.md", "added", chunks=3), FileReport("b.pdf", "refused", reason="x")],
                           "zh-CN")
    assert "| 文件 | 状态 |" in report and "已添加" in report and "已拒绝" in report
    assert "未上传文件" in format_report([], "zh-CN")
    steps = list(h.rag_chat("问题", [], 3, 0.0, *GEN, None, "llm", None, lang="zh-CN"))
    assert steps[-1][3] == t("zh-CN", "llm_only") == "仅 LLM：未检索知识库。"
    import gradio as gr
    with pytest.raises(gr.Error, match="请先输入新知识库的名称"):
        h.knowledge.create("  ", None, "zh-CN")
    with pytest.raises(gr.Error, match="该对话不存在"):
        h.open_chat(h.conversations.start(None), "no-such-conversation-id", "zh-CN")
    assert language("zh-HK") == "zh-CN" and language("de") == "en"

