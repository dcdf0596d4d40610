"""Start chatllm-webui: ``python webui/webui_server.py --port=8000 --model-path=Qwen/Qwen2.5-7B-Instruct``.

Parses the flags into :class:`~webui.settings.Settings`, loads the chat model,
the embedding model and the knowledge base, then serves the page (and API) with
uvicorn.  ``python run.py`` is the same program.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: make the project's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LOOPBACK = ("127.0.0.1", "localhost", "::1")
log = logging.getLogger("webui")


def load_model(settings):
    """The chat model ``settings`` asks for, from the ``--llm-backend`` registry
    (:mod:`llm.backends`: ``transformers`` -- a local model, continuously batched where
    ``--batching`` says so -- or ``openai``, a remote OpenAI-compatible server).

    Raises:
        llm.base.ModelLoadError: the model or the remote server cannot be loaded or reached.
    """
    from llm.backends import load_chat_model_for

    return load_chat_model_for(settings)


def settle_hub(settings) -> str:
    """Look in the local caches for the models start-up loads; when one is missing, probe
    the hub once and work offline if it cannot be reached (:func:`llm.hub.settle_offline_mode`).
    Returns that function's verdict."""
    from llm.hub import settle_offline_mode
    from llm.loader import DEFAULT_MODEL_PATH
    from rag.embeddings import BUNDLED_ALIASES, OFFLINE_ALIASES

    needed = [settings.reranker_model]
    if settings.llm_backend == "transformers" and not settings.lora_path:
        needed.append(settings.model_path or DEFAULT_MODEL_PATH)
    embedding = wanted_embedding_model(settings)
    if embedding not in BUNDLED_ALIASES + OFFLINE_ALIASES:  # the packaged models need no hub
        needed.append(embedding)
    return settle_offline_mode(needed)


def wanted_embedding_model(settings) -> str:
    """The embedding model ``settings`` ask for, "auto" resolved for the device it will run on."""
    from rag.embeddings import default_device, default_embedding_model, is_auto

    if not is_auto(settings.embedding_model):
        return settings.embedding_model
    return default_embedding_model("cpu" if settings.cpu else default_device())


def load_service(settings):
    """Load the chat model, embedding model and knowledge base named by ``settings``.

    Returns:
        webui.services.ChatService

    Raises:
        llm.base.ModelLoadError: ``--model-path`` was given and cannot be loaded.
        rag.embeddings.EmbeddingLoadError: ``--embedding-model`` was named and cannot be loaded,
            or ``--embedding-backend onnx`` cannot work here.
        rag.store.EmbeddingMismatchError: the knowledge base was built with another embedding model.
    """
    import rag.loaders
    from rag.embeddings import check_backend, is_auto, load_embedder
    from rag.registry import KnowledgeBaseRegistry
    from webui.services import ChatService

    check_backend(settings.embedding_backend)  # before minutes of loading the chat model
    settle_hub(settings)
    rag.loaders.configure(ocr=settings.ocr)
    model = load_model(settings)
    embedder = load_embedder(settings.embedding_model, device="cpu" if settings.cpu else None,
                             backend=settings.embedding_backend)
    fallback = is_auto(settings.embedding_model) and embedder.name != wanted_embedding_model(settings)
    registry = KnowledgeBaseRegistry(settings.knowledge_dir, embedder, chunk_size=settings.chunk_size,
                                     chunk_overlap=settings.chunk_overlap, chunk_unit=settings.chunk_unit,
                                     vector_store=settings.vector_store, milvus_uri=settings.milvus_uri,
                                     milvus_token=settings.milvus_token)
    exporter = None
    if settings.export_history_path:
        from webui.export import HistoryExporter

        exporter = HistoryExporter(settings.export_history_path, settings.export_interval)
    service = ChatService(model, registry, settings, embedding_fallback=fallback, exporter=exporter)
    kb = service.knowledge_base()  # opens (or creates) the default one now: a mismatch fails at start
    log.info("knowledge base %s: %d file(s), %d chunk(s)", kb.directory, len(kb.files()), len(kb))
    return service


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, load everything, serve until interrupted. Returns the exit status:
    0 after a normal shutdown, 2 when the model, embedding model, knowledge base or auth file cannot be opened."""
    from dataclasses import replace

    from llm.base import ModelLoadError
    from rag.embeddings import EmbeddingLoadError
    from rag.store import EmbeddingMismatchError, VectorStoreMismatchError
    from webui.auth import ENV_VAR, access_log_config
    from webui.settings import parse_settings

    settings = parse_settings(argv)
    if not settings.api_token and os.environ.get(ENV_VAR):
        settings = replace(settings, api_token=os.environ[ENV_VAR])
    # A self-hosted tool phones no one: Gradio's usage analytics stay off unless asked for.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its "could not load AVX512" lines are noise
    # transformers' batching manager logs its cache sizing, seed and thread stops at INFO in its own
    # format; llm.loader logs the one line that matters ("continuous batching on (KV cache: ...)")
    if settings.log_level.upper() != "DEBUG":
        logging.getLogger("ContinuousBatchingLogger").setLevel(logging.WARNING)
    if settings.auth_file is not None:
        from webui.accounts import AuthFile, AuthFileError

        try:  # before minutes of loading the model
            AuthFile.load(settings.auth_file, missing_ok=False)
        except AuthFileError as exc:
            print(f"chatllm-webui: error: {exc}", file=sys.stderr)
            return 2
    try:
        service = load_service(settings)
    except (ModelLoadError, EmbeddingLoadError, EmbeddingMismatchError, VectorStoreMismatchError) as exc:
        log.error("%s", exc)
        print(f"chatllm-webui: error: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    from webui.app import create_app

    from webui.accounts import AuthFileError

    try:
        app = create_app(service)
    except AuthFileError as exc:  # --auth-file is not an auth file
        print(f"chatllm-webui: error: {exc}", file=sys.stderr)
        return 2
    if not settings.api_token and settings.host in LOOPBACK:
        # no token on a loopback address: answer only requests addressed to it, so a web page
        # cannot reach this server through DNS rebinding (a foreign Host header gets 400)
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=["localhost", "127.0.0.1", "::1", "[::1]"])
    if not settings.api_token and not settings.auth_file and settings.host not in LOOPBACK:
        log.warning("serving on %s with no access token: anyone who can reach this port can use the model "
                    "and the knowledge bases; set --api-token or $%s, or --auth-file", settings.host, ENV_VAR)
    log.info("serving http://%s:%d", "localhost" if settings.host in ("127.0.0.1", "localhost") else settings.host,
             settings.port)
    # Open streams (a browser's queue connection) get 5 s to end on shutdown, not forever.
    # Connections beyond limit_concurrency get 503 at once instead of being held open (900 slow
    # clients were); idle keep-alive connections close after 5 s (uvicorn's default).
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                timeout_graceful_shutdown=5, limit_concurrency=max(256, 4 * settings.max_queue),
                access_log=True, log_config=access_log_config(settings.log_level))
    return 0


if __name__ == "__main__":
    sys.exit(main())
