"""The page's layout and wiring: a **Chat** tab and a **LangChain** tab, each with its
conversation sidebar (:mod:`webui.ui_conversations`), the handlers of
:class:`webui.ui.PageHandlers`, labels in English and Chinese (:mod:`webui.i18n`).

Event queues: answers (``chat``/``rag_chat``) share the ``answer`` queue (4 at once);
ingestion has its own ``ingest`` queue (1 at once), so an upload being embedded never
takes a slot from the chats; sidebar and knowledge-base clicks run outside both.
"""
from __future__ import annotations

import html

import gradio as gr

from rag.loaders import SUPPORTED_EXTENSIONS, upload_label

from .i18n import LANGUAGES, L, page_language, render, t
from .services import QUERY_MODES, ChatService
from .ui_conversations import EXPORT_FORMATS, browser_state_secret
from .ui_knowledge import FILE_COLUMNS

ANSWERS = dict(concurrency_id="answer", concurrency_limit=4)
INGESTION = dict(concurrency_id="ingest", concurrency_limit=2)
TRANSLATED_PROPS = ("label", "value", "placeholder", "info")


def translatable(page: gr.Blocks) -> list[tuple[gr.blocks.Block, dict[str, str]]]:
    """Every block with a static label (a ``gr.I18n`` key, see :func:`webui.i18n.L`): (block, prop -> text)."""
    found = []
    for block in page.blocks.values():
        props = {p: str(getattr(block, p)) for p in TRANSLATED_PROPS
                 if "__i18n__" in str(getattr(block, p, None) or "")}
        if props:
            found.append((block, props))
    return found


def relabel(targets, lang: str) -> list[dict]:
    """Updates that show every static label of ``targets`` (:func:`translatable`) in ``lang``."""
    return [gr.update(**{p: render(text, lang) for p, text in props.items()}) for _, props in targets]


def query_mode_choices(lang: str) -> list[tuple[str, str]]:
    """The query-mode radio's (label, value) choices in ``lang``."""
    return [(t(lang, "query_" + m), m) for m in QUERY_MODES]


def sidebar(prefix: str):
    """A tab's conversation column: (list, new, rename box, rename, delete, export format, export, file)."""
    with gr.Column(scale=1, min_width=220, elem_id=f"{prefix}-sidebar"):
        new = gr.Button(L("new_conversation"), size="sm", elem_id=f"{prefix}-conv-new")
        pick = gr.Radio(choices=[], value=None, label=L("conversations"), elem_id=f"{prefix}-conv-list")
        with gr.Accordion(L("manage_conversation"), open=False):
            title = gr.Textbox(show_label=False, placeholder=L("new_title"), elem_id=f"{prefix}-conv-title")
            with gr.Row():
                rename = gr.Button(L("rename"), size="sm", elem_id=f"{prefix}-conv-rename")
                delete = gr.Button(L("delete"), size="sm", variant="stop", elem_id=f"{prefix}-conv-delete")
            fmt = gr.Radio(list(EXPORT_FORMATS), value="markdown", label=L("export_format"))
            export = gr.Button(L("export"), size="sm", elem_id=f"{prefix}-conv-export")
            file = gr.File(label=L("download"), interactive=False, elem_id=f"{prefix}-conv-file")
    return pick, new, title, rename, delete, fmt, export, file


def account_line(user: str | None, lang: str) -> str:
    """The header's "Signed in as NAME · Sign out" (HTML, the name escaped; the link opens in the
    same tab, which Markdown links do not); empty when no one is signed in."""
    if not user:
        return ""
    who = html.escape(t(lang, "signed_in_as", user="\0")).replace("\0", f"<b>{html.escape(user)}</b>")
    return f'{who} · <a href="signout" target="_self" id="sign-out">{html.escape(t(lang, "sign_out"))}</a>'


def build_blocks(service: ChatService) -> gr.Blocks:
    """Build the page for ``service``. Returns unlaunched ``gr.Blocks``; mount it with
    ``gr.mount_gradio_app(..., i18n=webui.i18n.I18N)`` (see :func:`webui.app.create_app`).
    Every conversation event resolves its owner with ``gr.Request``
    (:meth:`webui.ui_conversations.ConversationHandlers.owner_of`): the signed-in user with
    ``--auth-file``, else the browser's id."""
    from .ui import PageHandlers

    h = PageHandlers(service)
    c = h.conversations
    k = h.knowledge
    s = service.settings
    secret = browser_state_secret(s.data_folder)

    def listed(tab: str):
        def update(owner, selected, request: gr.Request):
            return c.listing(c.owner_of(owner, request), tab, selected)
        return update
    with gr.Blocks(title="ChatLLM-WebUI", analytics_enabled=False) as page:
        owner_kept = gr.BrowserState(None, storage_key="chatllm-owner", secret=secret)
        owner = gr.State(None)  # this session's owner id, copied from the browser on load
        lang_kept = gr.BrowserState("auto", storage_key="chatllm-language")  # the switch's choice
        lang = gr.State("en")  # this session's language, for the text the server writes
        with gr.Row():
            gr.Markdown(f"## ChatLLM-WebUI  \n{L('model')}: `{html.escape(service.model.name)}`", scale=4)
            lang_pick = gr.Radio([("Auto / 自动", "auto"), ("English", "en"), ("中文", "zh-CN")], value="auto",
                                 label=t("en", "language"), scale=1, elem_id="language")
        account = gr.HTML(visible=c.accounts, elem_id="account")  # "Signed in as ... · Sign out"
        if service.model.is_demo:
            gr.Markdown(L("demo_banner"), elem_id="demo-banner")
        with gr.Tabs():
            with gr.Tab(L("tab_chat"), id="chat"):
                with gr.Row():
                    chat_side = sidebar("chat")
                    with gr.Column(scale=4):
                        chatbot = gr.Chatbot(label=L("tab_chat"), height=460, elem_id="chat-chatbot",
                                             buttons=["copy", "copy_all"])
                        history = gr.State([])
                        chat_conv = gr.State(None)
                        with gr.Row():
                            box = gr.Textbox(placeholder=L("ask_anything"), show_label=False, scale=8,
                                             elem_id="chat-input")
                            send = gr.Button(L("send"), variant="primary", scale=1, elem_id="chat-send")
                            stop = gr.Button(L("stop"), variant="stop", scale=1, visible=True, elem_id="chat-stop")
                        clear = gr.Button(L("clear_history"), elem_id="chat-clear")
                        with gr.Accordion(L("generation_settings"), open=False):
                            system_prompt = gr.Textbox(value=s.system_prompt, label=L("system_prompt"), lines=2)
                            with gr.Row():
                                max_new_tokens = gr.Slider(1, s.max_new_tokens_limit, value=s.max_new_tokens,
                                                           step=1, label="max_new_tokens")
                                max_round = gr.Slider(0, max(20, s.max_round), value=s.max_round, step=1,
                                                      label=L("max_round"))
                            with gr.Row():
                                temperature = gr.Slider(0, 2, value=s.temperature, step=0.05,
                                                        label=L("temperature"))
                                top_k = gr.Slider(0, 100, value=s.top_k, step=1, label="top_k")
                                top_p = gr.Slider(0.01, 1, value=s.top_p, step=0.01, label="top_p")
                gen = [system_prompt, max_new_tokens, temperature, top_k, top_p, max_round]
                chat_io = dict(fn=h.chat_kept, inputs=[box, history, *gen, owner, chat_conv, lang],
                               outputs=[chatbot, history, box, chat_conv], **ANSWERS)
                chat_events = [send.click(api_name="chat", **chat_io), box.submit(api_visibility="private", **chat_io)]
                for event in chat_events:
                    event.then(listed("chat"), [owner, chat_conv], [chat_side[0]],
                               api_visibility="private", queue=False)
                stop.click(None, cancels=chat_events, api_visibility="private", queue=False)
                chatbot.retry(h.regenerate_chat, inputs=[history, *gen, owner, chat_conv, lang],
                              outputs=[chatbot, history, box, chat_conv], api_visibility="private", **ANSWERS)
                clear.click(lambda: ([], [], None, gr.update(value=None)), outputs=[chatbot, history, chat_conv,
                            chat_side[0]], api_name="clear")

            with gr.Tab(L("tab_langchain"), id="langchain"):
                with gr.Row():
                    rag_side = sidebar("rag")
                    with gr.Column(scale=4):
                        kb_state = gr.State(k.default)  # this session's knowledge base (a name)
                        with gr.Row():
                            kb_pick = gr.Dropdown(choices=k.names(), value=k.default, label=L("knowledge_base"),
                                                  scale=2, elem_id="kb-pick")
                            kb_new = gr.Textbox(label=L("new_knowledge_base"), placeholder=L("kb_name_hint"),
                                                scale=2, elem_id="kb-new")
                            kb_create = gr.Button(L("create"), scale=1, elem_id="kb-create")
                        kb_status = gr.Markdown(h.kb_status(), elem_id="kb-status")
                        with gr.Row():
                            files = gr.File(file_count="multiple", file_types=list(SUPPORTED_EXTENSIONS),
                                            label=upload_label(), scale=3, elem_id="kb-files")
                            with gr.Column(scale=1):
                                ingest = gr.Button(L("vectorstore_knowledge"), variant="primary", elem_id="kb-ingest")
                                ingest_stop = gr.Button(L("cancel_upload"), variant="stop", size="sm",
                                                        elem_id="kb-ingest-cancel")
                                with gr.Accordion(L("retrieval_settings"), open=False):
                                    retrieval_mode = gr.Radio(["hybrid", "dense", "bm25"], value=s.retrieval_mode,
                                                              label=L("retriever"))
                                    rag_top_k = gr.Slider(1, 20, value=s.retrieval_top_k, step=1,
                                                          label=L("top_k_chunks"))
                                    threshold = gr.Slider(-1, 1, value=s.score_threshold, step=0.01,
                                                          label=L("score_threshold"))
                        # the upload's progress bar goes here, never over the status line
                        progress_line = gr.Markdown(min_height=40, elem_id="kb-progress")
                        report = gr.Markdown(elem_id="kb-report")
                        with gr.Accordion(L("files_in_kb"), open=False):
                            file_table = gr.Dataframe(value=k.files_table(), headers=FILE_COLUMNS, interactive=False,
                                                      elem_id="kb-file-table")
                            with gr.Row():
                                file_pick = gr.Dropdown(choices=[row[0] for row in k.files_table()], value=None,
                                                        label=L("file"), scale=3, elem_id="kb-file-pick")
                                file_delete = gr.Button(L("delete_file"), variant="stop", scale=1,
                                                        elem_id="kb-file-delete")
                                kb_delete = gr.Button(L("delete_kb"), variant="stop", scale=1, elem_id="kb-delete")
                            file_message = gr.Markdown(elem_id="kb-file-message")

                        rag_bot = gr.Chatbot(label=L("ask_the_kb"), height=400, elem_id="rag-chatbot",
                                             buttons=["copy", "copy_all"])
                        rag_history = gr.State([])
                        rag_conv = gr.State(None)
                        query_mode = gr.Radio(query_mode_choices("en"),
                                              value=QUERY_MODES[0], label=L("query_mode"), elem_id="rag-query-mode")
                        with gr.Row():
                            rag_box = gr.Textbox(placeholder=L("ask_documents"), show_label=False, scale=8,
                                                 elem_id="rag-input")
                            rag_send = gr.Button(L("send"), variant="primary", scale=1, elem_id="rag-send")
                            rag_stop = gr.Button(L("stop"), variant="stop", scale=1, elem_id="rag-stop")
                        rag_clear = gr.Button(L("clear_history"), elem_id="rag-clear")
                        sources = gr.Markdown(elem_id="rag-sources")
                view = [kb_state, kb_status, file_table, file_pick]
                kb_pick.change(k.select, inputs=[kb_pick, lang], outputs=view, api_name="kb_select")
                kb_create.click(k.create, inputs=[kb_new, kb_state, lang], outputs=[kb_pick, *view, kb_new],
                                api_name="kb_create")
                kb_delete.click(k.delete, inputs=[kb_state, lang], outputs=[kb_pick, *view], api_name="kb_delete")
                file_delete.click(k.delete_file, inputs=[kb_state, file_pick, lang],
                                  outputs=[file_message, kb_status, file_table, file_pick], api_name="kb_delete_file")

                def ingest_files(files, kb_name, language, request: gr.Request, progress=gr.Progress()):
                    return h.ingest(files, kb_name, progress, lang=language, upload_id=request.session_hash)

                ingest_event = ingest.click(ingest_files, inputs=[files, kb_state, lang], outputs=[report, kb_status],
                                            api_name="ingest", show_progress_on=[progress_line], **INGESTION)
                ingest_event.then(lambda name: (k.files_table(name), k.file_choices(name)), inputs=[kb_state],
                                  outputs=[file_table, file_pick], api_visibility="private", queue=False)
                def cancel_upload(request: gr.Request):
                    k.cancel(request.session_hash)

                ingest_stop.click(cancel_upload, api_name="ingest_cancel", queue=False)

                rag_io = dict(fn=h.rag_chat_kept, inputs=[rag_box, rag_history, rag_top_k, threshold, *gen, kb_state,
                                                          query_mode, retrieval_mode, owner, rag_conv, lang],
                              outputs=[rag_bot, rag_history, rag_box, sources, rag_conv], **ANSWERS)
                rag_events = [rag_send.click(api_name="rag_chat", **rag_io), rag_box.submit(api_visibility="private", **rag_io)]
                for event in rag_events:
                    event.then(listed("langchain"), [owner, rag_conv], [rag_side[0]],
                               api_visibility="private", queue=False)
                rag_stop.click(None, cancels=rag_events, api_visibility="private", queue=False)
                rag_clear.click(lambda: ([], [], "", None, gr.update(value=None)),
                                outputs=[rag_bot, rag_history, sources, rag_conv, rag_side[0]], api_name="rag_clear")

            # the sidebars: new, open, rename, delete, export
            for tab, side, conv, shown, opener in (
                    ("chat", chat_side, chat_conv, [chatbot, history], h.open_chat),
                    ("langchain", rag_side, rag_conv, [rag_bot, rag_history, sources], h.open_rag)):
                pick, new, title, rename, delete, fmt, export, file = side
                blank = [[]] * 2 + ([""] if tab == "langchain" else [])
                opened = [*shown, conv] + ([kb_pick, *view] if tab == "langchain" else [])
                new.click(lambda b=blank: (*b, None, gr.update(value=None)), outputs=[*shown, conv, pick],
                          api_visibility="private", queue=False)
                pick.input(opener, inputs=[owner, pick, lang], outputs=opened, api_name=f"conversation_open_{tab}")

                def rename_it(o, i, title_, lg, request: gr.Request, tab=tab):
                    return c.rename(c.owner_of(o, request), i, title_, tab, lg)

                def delete_it(o, i, lg, request: gr.Request, tab=tab, b=blank):
                    return (c.delete(c.owner_of(o, request), i, tab, lg), *b, None)

                def export_it(o, i, fmt_, lg, request: gr.Request):
                    return c.export(c.owner_of(o, request), i, fmt_, lg)

                rename.click(rename_it, inputs=[owner, conv, title, lang], outputs=[pick, title],
                             api_visibility="private")
                delete.click(delete_it, inputs=[owner, conv, lang], outputs=[pick, *shown, conv],
                             api_visibility="private")
                export.click(export_it, inputs=[owner, conv, fmt, lang], outputs=[file], api_visibility="private")

        targets = translatable(page)
        labelled = [block for block, _ in targets]

        def in_language(language: str):
            """Updates of everything static that changes with the language: labels, query modes."""
            return (*relabel(targets, language), gr.update(choices=query_mode_choices(language)))

        language_outputs = [*labelled, query_mode]

        def start(kept_owner, choice, request: gr.Request):
            browser = c.start(kept_owner)
            me = c.owner_of(browser, request)  # with accounts: the signed-in user
            choice = choice if choice in LANGUAGES else "auto"
            language = page_language(choice, request.headers.get("accept-language"))
            kb_view = k.select(None, language)
            return (browser, me, language, gr.update(value=choice), c.listing(me, "chat"), c.listing(me, "langchain"),
                    gr.update(choices=k.names(), value=k.default), *kb_view, *in_language(language),
                    account_line(request.username if c.accounts else None, language))

        page.load(start, inputs=[owner_kept, lang_kept],
                  outputs=[owner_kept, owner, lang, lang_pick, chat_side[0], rag_side[0], kb_pick, *view,
                           *language_outputs, account], api_name="conversations_init", queue=False,
                  show_progress="hidden")

        def switch(choice, kb_name, request: gr.Request):
            language = page_language(choice, request.headers.get("accept-language"))
            return (choice, language, k.status(kb_name, language), *in_language(language),
                    account_line(request.username if c.accounts else None, language))

        lang_pick.input(switch, inputs=[lang_pick, kb_state],
                        outputs=[lang_kept, lang, kb_status, *language_outputs, account],
                        api_name="language", queue=False, show_progress="hidden")
    return page
