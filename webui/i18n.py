"""The page in Simplified Chinese and English.

Static labels are ``gr.I18n`` keys (:data:`I18N`, passed to ``gr.mount_gradio_app``):
the browser translates them to its language (``zh*`` -> Chinese, anything else ->
English), and Gradio's *Settings* panel (page footer) switches the language.  Text the
server writes (reports, status lines, errors) comes from :func:`t`, in the language the
page tells it (:func:`page_language`).  Tab names and the main buttons stay close to
the PAI-EAS page: "Chat", "LangChain", "Vectorstore knowledge", 发送 (Send), 清空历史
(Clear history).
"""
from __future__ import annotations

import gradio as gr

LANGUAGES = ("en", "zh-CN")

EN: dict[str, str] = {
    "model": "Model",
    "demo_banner": (
        "⚠️ **Demo model.** No `--model-path` was given and the default model could not be loaded "
        "(not cached, no network), so a tiny random-weight model answers: its answers are meaningless. "
        "Restart with `--model-path Qwen/Qwen2.5-7B-Instruct` (or a local model folder) for real answers."),
    "tab_chat": "Chat",
    "tab_langchain": "LangChain",
    "ask_anything": "Ask anything…",
    "send": "Send",
    "stop": "Stop",
    "clear_history": "Clear history",
    "generation_settings": "Generation settings (also used by the LangChain tab)",
    "system_prompt": "System prompt",
    "max_round": "max_round (history rounds kept)",
    "temperature": "temperature (0 = greedy)",
    "new_conversation": "➕ New conversation",
    "conversations": "Conversations",
    "manage_conversation": "Rename, delete, export",
    "new_title": "new title",
    "rename": "Rename",
    "delete": "Delete",
    "export_format": "Export as",
    "export": "Export",
    "download": "Download",
    "knowledge_base": "Knowledge base",
    "new_knowledge_base": "New knowledge base",
    "kb_name_hint": "name, e.g. manuals-2024",
    "create": "Create",
    "vectorstore_knowledge": "Vectorstore knowledge",
    "cancel_upload": "Cancel upload",
    "retrieval_settings": "Retrieval settings",
    "retriever": "retriever (hybrid = dense + BM25, fused)",
    "top_k_chunks": "top_k (chunks)",
    "score_threshold": "score threshold (least relevance, 0-1; -1 keeps all)",
    "files_in_kb": "Files in this knowledge base",
    "file": "File",
    "delete_file": "Delete file",
    "delete_kb": "Delete this knowledge base",
    "ask_the_kb": "Ask the knowledge base",
    "query_mode": "Query mode",
    "ask_documents": "Ask about your documents…",
}

ZH: dict[str, str] = {
    "model": "模型",
    "demo_banner": (
        "⚠️ **演示模型。** 未指定 `--model-path`，且默认模型无法加载（未缓存、无网络），所以由一个随机权重的"
        "微型模型作答：它的回答没有意义。请用 `--model-path Qwen/Qwen2.5-7B-Instruct`（或本地模型目录）重新启动以获得真实回答。"),
    "tab_chat": "Chat",
    "tab_langchain": "LangChain",
    "ask_anything": "请输入问题…",
    "send": "发送",
    "stop": "停止",
    "clear_history": "清空历史",
    "generation_settings": "生成参数（LangChain 页也使用）",
    "system_prompt": "系统提示词",
    "max_round": "max_round（保留的历史轮数）",
    "temperature": "temperature（0 = 贪心解码）",
    "new_conversation": "➕ 新对话",
    "conversations": "对话",
    "manage_conversation": "重命名、删除、导出",
    "new_title": "新标题",
    "rename": "重命名",
    "delete": "删除",
    "export_format": "导出格式",
    "export": "导出",
    "download": "下载",
    "knowledge_base": "知识库",
    "new_knowledge_base": "新建知识库",
    "kb_name_hint": "名称，例如 manuals-2024",
    "create": "创建",
    "vectorstore_knowledge": "Vectorstore knowledge（向量化知识）",
    "cancel_upload": "取消上传",
    "retrieval_settings": "检索参数",
    "retriever": "检索方式（hybrid = 向量 + BM25 融合）",
    "top_k_chunks": "top_k（文本块数）",
    "score_threshold": "分数阈值（最低相关度，0-1；-1 全部保留）",
    "files_in_kb": "知识库中的文件",
    "file": "文件",
    "delete_file": "删除文件",
    "delete_kb": "删除此知识库",
    "ask_the_kb": "向知识库提问",
    "query_mode": "查询模式",
    "ask_documents": "询问你的文档…",
}

#: zh-CN for mainland Chinese browsers; plain "zh" catches zh-TW/zh-HK too (better than English).
I18N = gr.I18n(en=EN, **{"zh-CN": ZH, "zh": ZH})


def L(key: str) -> gr.i18n.I18nData:  # noqa: N802 - short, as gettext's _()
    """A static label: the key, translated by the browser (raises KeyError for an unknown key)."""
    EN[key]  # noqa: B018 - fail at build time on a typo, not in the browser
    return I18N(key)


# ---- text the server writes (handlers' reports, status lines, warnings and errors)

MESSAGES: dict[str, dict[str, str]] = {
    "en": {
        "type_message": "Type a message first.",
        "generation_failed": "Generation failed: {error}",
        "type_question": "Type a question first.",
        "kb_empty": "The knowledge base is empty: upload files and click 'Vectorstore knowledge' first.",
        "llm_only": "LLM only: the knowledge base was not searched.",
        "no_relevant": "**No relevant passage** in the knowledge base{limit}.",
        "no_relevant_limit": " (least relevance {threshold:g})",
        "sources_heading": "**Sources**",
        "page": ", page {page}",
        "sources_title": "📚 Sources ({n})",
        "status_new": "Knowledge base **{name}**: 0 file(s), 0 chunk(s) (created by the first upload).",
        "status": ("Knowledge base **{name}**: {files} file(s), {chunks} chunk(s); embedding model `{model}`; "
                   "retrieval `{mode}`, reranker `{reranker}`."),
        "embedding_fallback": ("⚠️ The default embedding model could not be loaded offline, so `{model}`, "
                               "which ships inside a package, is used instead. Pass `--embedding-model` to choose "
                               "another."),
        "no_files": "No file uploaded: choose {types} files first.",
        "report_header": "| file | status | chunks added | reason |",
        "added": "added", "skipped": "skipped", "refused": "refused",
        "not_uploaded": "not a file uploaded through this page: upload it with the file picker",
        "type_kb_name": "Type a name for the new knowledge base first.",
        "kb_deleted": "Knowledge base {name} deleted.",
        "pick_file": "Pick a file to delete first.",
        "file_deleted": "Deleted **{file}** ({chunks} chunks).",
        "progress_file": "File {i}/{n}: {name}",
        "progress_chunks": "File {i}/{n}: {name} · chunks {done}/{total}",
        "progress_ocr": "File {i}/{n}: {name} · OCR page {done}/{total}",
        "upload_cancelled": "Upload cancelled: the file being embedded was not added.",
        "conversation_gone": "This conversation does not exist (any more): pick another one.",
        "open_first": "Open a conversation first (or ask a question to start one).",
        "not_saved": "This answer could not be saved (see the server log).",
        "title_empty": "The title is empty: type a new title.",
        "query_retrieval+llm": "Retrieval + LLM", "query_llm": "LLM only", "query_retrieval": "Retrieval only",
        "language": "Language / 语言",
        "signin_title": "Sign in",
        "signin_prompt": "Sign in to see your conversations.",
        "signin_name": "User name",
        "signin_password": "Password",
        "signin_button": "Sign in",
        "signin_failed": "Wrong user name or password.",
        "signin_busy": "Too many sign-ins at this moment: try again in a few seconds.",
        "signin_other_site": "This sign-in form was sent from another site: open this page's own sign-in page.",
        "signed_in_as": "Signed in as {user}",
        "sign_out": "Sign out",
    },
    "zh-CN": {
        "type_message": "请先输入消息。",
        "generation_failed": "生成失败：{error}",
        "type_question": "请先输入问题。",
        "kb_empty": "知识库为空：请先上传文件并点击“Vectorstore knowledge”。",
        "llm_only": "仅 LLM：未检索知识库。",
        "no_relevant": "知识库中**没有相关段落**{limit}。",
        "no_relevant_limit": "（最低相关度 {threshold:g}）",
        "sources_heading": "**来源**",
        "page": "，第 {page} 页",
        "sources_title": "📚 来源（{n}）",
        "status_new": "知识库 **{name}**：0 个文件，0 个文本块（首次上传时创建）。",
        "status": ("知识库 **{name}**：{files} 个文件，{chunks} 个文本块；嵌入模型 `{model}`；"
                   "检索 `{mode}`，重排序 `{reranker}`。"),
        "embedding_fallback": ("⚠️ 默认的嵌入模型无法离线加载，已改用软件包内置的 `{model}`。"
                               "如需其他模型，请指定 `--embedding-model`。"),
        "no_files": "未上传文件：请先选择 {types} 文件。",
        "report_header": "| 文件 | 状态 | 新增文本块 | 原因 |",
        "added": "已添加", "skipped": "已跳过", "refused": "已拒绝",
        "not_uploaded": "不是通过本页面上传的文件：请用文件选择器上传",
        "type_kb_name": "请先输入新知识库的名称。",
        "kb_deleted": "知识库 {name} 已删除。",
        "pick_file": "请先选择要删除的文件。",
        "file_deleted": "已删除 **{file}**（{chunks} 个文本块）。",
        "progress_file": "文件 {i}/{n}：{name}",
        "progress_chunks": "文件 {i}/{n}：{name} · 文本块 {done}/{total}",
        "progress_ocr": "文件 {i}/{n}：{name} · OCR 第 {done}/{total} 页",
        "upload_cancelled": "上传已取消：正在向量化的文件未被添加。",
        "conversation_gone": "该对话不存在（或已删除）：请选择其他对话。",
        "open_first": "请先打开一个对话（或提问以开始新对话）。",
        "not_saved": "此回答未能保存（见服务器日志）。",
        "title_empty": "标题为空：请输入新标题。",
        "query_retrieval+llm": "检索 + LLM", "query_llm": "仅 LLM", "query_retrieval": "仅检索",
        "language": "Language / 语言",
        "signin_title": "登录",
        "signin_prompt": "登录后可查看你的对话。",
        "signin_name": "用户名",
        "signin_password": "密码",
        "signin_button": "登录",
        "signin_failed": "用户名或密码错误。",
        "signin_busy": "此刻登录的人太多：请几秒后再试。",
        "signin_other_site": "此登录表单来自其他网站：请打开本站自己的登录页面。",
        "signed_in_as": "已登录：{user}",
        "sign_out": "退出登录",
    },
}
STATIC: dict[str, dict[str, str]] = {"en": EN, "zh-CN": ZH}


def language(lang: str | None) -> str:
    """``lang`` if it is one of :data:`LANGUAGES`, any other ``zh*`` -> zh-CN, else en."""
    if lang in LANGUAGES:
        return lang
    return "zh-CN" if isinstance(lang, str) and lang.lower().startswith("zh") else "en"


def t(lang: str | None, key: str, **values) -> str:
    """Server text ``key`` in ``lang`` (see :func:`language`), formatted with ``values``.

    Raises:
        KeyError: an unknown key (both tables have the same keys; a test checks it).
    """
    return MESSAGES[language(lang)][key].format(**values)


def page_language(choice: str | None, accept_language: str | None) -> str:
    """The page's language: the user's switch (``en`` / ``zh-CN``), else the browser's first
    ``Accept-Language`` tag (RFC 9110; ``zh*`` -> zh-CN, anything else -> en)."""
    if choice in LANGUAGES:
        return choice
    first = (accept_language or "").split(",")[0].split(";")[0].strip()
    return language(first)


def render(text, lang: str) -> str:
    """A static label (a ``gr.I18n`` key, or a string with keys inside) as plain text in ``lang``."""
    import json
    import re

    table = STATIC[language(lang)]
    return re.sub(r"__i18n__(\{[^}]*\})", lambda m: table[json.loads(m.group(1))["key"]], str(text))
