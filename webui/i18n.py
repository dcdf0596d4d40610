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
    "score_threshold": "score threshold (least cosine similarity)",
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
    "score_threshold": "分数阈值（最低余弦相似度）",
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
