"""Knowledge-base endpoints under ``/v1/knowledge``: upload, list, delete files; search; list bases."""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from fastapi import APIRouter, Depends, File, UploadFile
from starlette.concurrency import run_in_threadpool

from rag.loaders.registry import describe_types
from rag.persistence import FolderBusyError, safe_file_name
from rag.registry import check_name
from rag.store import KnowledgeBase
from rag.types import FileReport

from ...services import ChatService
from ..admission import WorkLimiter, get_limiter, get_service
from ..errors import api_errors
from ..protocol import ErrorResponse, Source
from .protocol import (DeleteReply, FileInfo, FileList, FileReportModel, KnowledgeBaseDeleteReply, KnowledgeBaseInfo,
                       KnowledgeBaseList, SearchReply, SearchRequest, UploadReply)

router = APIRouter(prefix="/v1/knowledge", tags=["knowledge"])
ERRORS = {400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
          409: {"model": ErrorResponse, "description": "deleted meanwhile, or another process is writing it"},
          422: {"model": ErrorResponse, "description": "a field is invalid; the message names it"},
          503: {"model": ErrorResponse, "description": "too many searches and uploads at once; retry later"}}
#: API uploads save the knowledge base after this many added files (and at the end): each
#: save rewrites the whole state, so saving after every file made 1,000 tiny files take 260 s.
UPLOAD_COMMIT_EVERY = 50
#: ... and at least this often (seconds), so a slow batch (large PDFs, OCR) is saved as it goes
#: and a crash loses at most the files of the last few seconds.
UPLOAD_COMMIT_INTERVAL_S = 2.0
_COPY_BLOCK = 1 << 20
#: Where uploads wait while they are ingested: inside the knowledge folder (not /tmp), so
#: what a killed server left there is found and removed at the next start
#: (:func:`clear_stale_uploads`); not a valid knowledge-base name, so never listed as one.
UPLOADS_DIR = ".uploads"
log = logging.getLogger(__name__)


def clear_stale_uploads(knowledge_dir: Path) -> None:
    """Remove the upload folders a previous server process left behind (killed mid-upload).
    Call at start-up: one server owns a knowledge folder at a time."""
    stale = Path(knowledge_dir) / UPLOADS_DIR
    if stale.is_dir() and any(stale.iterdir()):
        log.info("removing uploads left by a previous run in %s", stale)
        shutil.rmtree(stale, ignore_errors=True)


def knowledge_errors():
    """What the block raises, as API errors by :data:`~webui.api.errors.ERROR_TABLE`: a bad
    name 400, an unknown base or file 404, a base that cannot be read or written now 409;
    anything else (a ``KeyError`` from a bug included) 500."""
    return api_errors(knowledge_base="kb", file="name")


def _kb(service: ChatService, name: str, create: bool = False) -> KnowledgeBase:
    with knowledge_errors():
        return service.knowledge_base(name, create=create)


@router.get("", response_model=KnowledgeBaseList, responses=ERRORS)
def list_knowledge_bases(service: ChatService = Depends(get_service)) -> KnowledgeBaseList:
    """The knowledge bases, with their file and chunk counts and embedding model."""
    out = []
    for name in service.knowledge_bases.names():
        kb = _kb(service, name)
        out.append(KnowledgeBaseInfo(name=name, files=len(kb.files()), chunks=len(kb),
                                     embedding_model=kb.embedding_model))
    return KnowledgeBaseList(knowledge_bases=out)


async def _save_upload(upload: UploadFile, folder: Path, limit: int) -> Path | None:
    """Copy an upload to ``folder`` under a safe name; None when it exceeds ``limit`` bytes."""
    target = folder / safe_file_name(upload.filename or "upload")
    size = 0
    with open(target, "wb") as out:
        while block := await upload.read(_COPY_BLOCK):
            size += len(block)
            if size > limit:
                return None
            out.write(block)
    return target


@router.post("/{kb}/files", response_model=UploadReply, responses=ERRORS)
async def upload_files(kb: str, files: list[UploadFile] = File(..., description="repeat the field for several files; "
                                                               f"types read: {describe_types()}"),
                       service: ChatService = Depends(get_service),
                       limiter: WorkLimiter = Depends(get_limiter)) -> UploadReply:
    """Add files (multipart, field ``files`` repeated) to knowledge base ``kb``, created by the first
    upload that adds a file (one whose files are all refused creates nothing). One report per file,
    in order; a refused file never stops the others. Saved every 50 files or 2 s, and at the end."""
    with knowledge_errors():
        check_name(kb)
    limit_mb = service.settings.max_upload_mb
    reports: list[FileReport | None] = []
    staging = Path(service.settings.knowledge_dir) / UPLOADS_DIR
    staging.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="upload-", dir=staging) as tmp:
        to_add: list[tuple[int, Path, str]] = []
        for i, upload in enumerate(files):
            name = upload.filename or f"file-{i}"
            folder = Path(tmp) / str(i)  # one folder each: two uploads may share a name
            folder.mkdir()
            path = await _save_upload(upload, folder, limit_mb * 1024 * 1024)
            if path is None:
                reports.append(FileReport(name=name, status="refused", reason=(
                    f"{name}: larger than the {limit_mb} MB upload limit; split it or start the "
                    "server with a larger --max-upload-mb")))
            else:
                reports.append(None)
                to_add.append((i, path, name))
        added = await run_in_threadpool(_add, service, limiter, kb, to_add) if to_add else []
    for (i, _, _), report in zip(to_add, added):
        reports[i] = report
    return UploadReply(knowledge_base=kb, files=[FileReportModel(**vars(r)) for r in reports])


def _add(service: ChatService, limiter: WorkLimiter, kb: str, to_add: list[tuple[int, Path, str]]) -> list[FileReport]:
    """Add the saved uploads (in a worker thread, in turn with other searches and uploads);
    a base this upload created and left empty (every file refused) is removed again."""
    with limiter.slot():
        existed = service.knowledge_bases.exists(kb)
        base = _kb(service, kb, create=True)
        reports = base.add_files([p for _, p, _ in to_add], [n for _, _, n in to_add],
                                 commit_every=UPLOAD_COMMIT_EVERY, commit_interval=UPLOAD_COMMIT_INTERVAL_S)
        if not existed and not any(r.status == "added" for r in reports):
            try:
                service.knowledge_bases.discard_if_empty(kb)
            except (OSError, FolderBusyError):
                log.warning("could not remove the empty knowledge base %s again", kb, exc_info=True)
        return reports


@router.delete("/{kb}", response_model=KnowledgeBaseDeleteReply, responses=ERRORS)
def delete_knowledge_base(kb: str, service: ChatService = Depends(get_service)) -> KnowledgeBaseDeleteReply:
    """Delete knowledge base ``kb`` with all its files. An upload to it that is running stops
    before its next file (its remaining files are reported refused) and nothing of it comes
    back; a later upload to the same name starts a new, empty base."""
    base = _kb(service, kb)
    files, chunks = len(base.files()), len(base)
    with knowledge_errors():
        service.knowledge_bases.delete(kb)
    return KnowledgeBaseDeleteReply(knowledge_base=kb, files=files, chunks=chunks)


@router.get("/{kb}/files", response_model=FileList, responses=ERRORS)
def list_files(kb: str, service: ChatService = Depends(get_service)) -> FileList:
    """The files of knowledge base ``kb`` with chunk counts, sizes (bytes) and times added (UTC)."""
    return FileList(knowledge_base=kb, files=[FileInfo(**f) for f in _kb(service, kb).files()])


@router.delete("/{kb}/files/{name}", response_model=DeleteReply, responses=ERRORS)
def delete_file(kb: str, name: str, service: ChatService = Depends(get_service)) -> DeleteReply:
    """Remove file ``name`` and its chunks from the index of ``kb``."""
    base = _kb(service, kb)
    with knowledge_errors():
        removed = base.delete_file(name)
    return DeleteReply(knowledge_base=kb, deleted=name, chunks_removed=removed)


@router.post("/{kb}/search", response_model=SearchReply, responses=ERRORS)
def search(kb: str, req: SearchRequest, service: ChatService = Depends(get_service),
           limiter: WorkLimiter = Depends(get_limiter)) -> SearchReply:
    """The best chunks of ``kb`` for ``query``, best first, found as the page finds them
    (the server's retriever and reranker, or ``mode``); ``score_threshold`` is on the relevance
    (rag.fusion.relevance). Searches and uploads take turns (two at a time); 503 with ``Retry-After``
    when too many wait."""
    _kb(service, kb)  # 400 / 404 for a bad or unknown name
    with limiter.slot():
        results = service.retrieve(req.query, top_k=req.top_k, score_threshold=req.score_threshold, kb=kb,
                                   mode=req.mode)
    return SearchReply(results=[Source(**r.to_dict()) for r in results])
