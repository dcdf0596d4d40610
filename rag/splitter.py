"""Cut Documents into chunks for embedding, for Chinese and English text.

Built on LangChain's ``RecursiveCharacterTextSplitter``: it tries the
separators in order (paragraph, line, sentence end, clause, word, character)
and keeps each sentence's closing punctuation at the end of its chunk.

Chunk sizes count either **tokens** of the embedding model's own tokenizer
(``RecursiveCharacterTextSplitter.from_huggingface_tokenizer``; the default
wherever the model has a tokenizer), so that a chunk fits what the model embeds
in Chinese and English alike, or **characters** (``len(str)``).
:func:`chunk_settings` picks the defaults for a model.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Iterable

from langchain_core.documents import Document
from langchain_text_splitters import RecursiveCharacterTextSplitter

#: Tried in this order; full-width Chinese marks need no following space,
#: ASCII ones do (so "3.14" or "e.g." inside a word are not split).
SEPARATORS = (
    "\n\n", "\n",
    "。", "！", "？", "；",
    ". ", "! ", "? ", "; ",
    "，", ", ",
    " ", "",
)


logger = logging.getLogger(__name__)

#: Units a chunk size can be given in.
CHUNK_UNITS = ("tokens", "chars")
#: Default chunk size in characters (and overlap) when sizes count characters.
DEFAULT_CHUNK_CHARS = 500
DEFAULT_CHUNK_OVERLAP_CHARS = 50
#: Longest default chunk in tokens, for models that embed more than this (bge-m3 embeds
#: 8192): a chunk stays about a passage, and three of them a short prompt.
MAX_DEFAULT_CHUNK_TOKENS = 512
#: Default overlap as a share of the chunk size in tokens (50 of 500 characters before).
DEFAULT_OVERLAP_SHARE = 0.1


def chunk_settings(embedder: Any, chunk_size: int | None = None, chunk_overlap: int | None = None,
                   chunk_unit: str | None = None) -> tuple[int, int, str]:
    """Fill in the chunk settings that are None for ``embedder``.

    Args:
        embedder: an :class:`rag.embeddings.Embedder` (its ``tokenizer``, ``max_seq_length``
            and ``token_overhead()`` are used when present).
        chunk_unit: "tokens" (default where the embedder has a tokenizer) or "chars".
        chunk_size: None = in tokens, the most that fits the model: ``min(max_seq_length,``
            :data:`MAX_DEFAULT_CHUNK_TOKENS` ``) - token_overhead()`` (507 for multilingual-e5-small:
            512 minus ``<s>``, ``</s>`` and the ``passage: `` prefix; 254 for all-MiniLM-L6-v2);
            in characters :data:`DEFAULT_CHUNK_CHARS`.
        chunk_overlap: None = :data:`DEFAULT_OVERLAP_SHARE` of a token size,
            :data:`DEFAULT_CHUNK_OVERLAP_CHARS` characters.

    Returns:
        ``(chunk_size, chunk_overlap, chunk_unit)``.

    Raises:
        ValueError: an unknown unit, or "tokens" for an embedder without a tokenizer.
    """
    tokenizer = getattr(embedder, "tokenizer", None)
    unit = chunk_unit or ("tokens" if tokenizer is not None else "chars")
    if unit not in CHUNK_UNITS:
        raise ValueError(f"unknown chunk unit {unit!r}: use one of {', '.join(CHUNK_UNITS)}")
    if unit == "tokens" and tokenizer is None:
        raise ValueError(f"embedding model {getattr(embedder, 'name', embedder)!r} has no tokenizer to count "
                         "tokens with: use --chunk-unit chars")
    if chunk_size is None:
        if unit == "chars":
            chunk_size = DEFAULT_CHUNK_CHARS
        else:
            limit = min(getattr(embedder, "max_seq_length", None) or MAX_DEFAULT_CHUNK_TOKENS, MAX_DEFAULT_CHUNK_TOKENS)
            overhead = embedder.token_overhead() if hasattr(embedder, "token_overhead") else 2
            chunk_size = max(limit - overhead, 1)
    max_len = getattr(embedder, "max_seq_length", None)
    if unit == "tokens" and max_len and hasattr(embedder, "token_overhead") \
            and chunk_size + embedder.token_overhead() > max_len:
        logger.warning("chunk_size %d tokens is more than %s embeds (%d with its prefix and special tokens): the "
                       "end of longer chunks is not embedded", chunk_size, getattr(embedder, "name", "the model"),
                       max_len)
    if chunk_overlap is None:
        chunk_overlap = (DEFAULT_CHUNK_OVERLAP_CHARS if unit == "chars"
                         else int(chunk_size * DEFAULT_OVERLAP_SHARE))
        chunk_overlap = min(chunk_overlap, chunk_size - 1)
    return chunk_size, chunk_overlap, unit


def make_text_splitter(chunk_size: int = DEFAULT_CHUNK_CHARS, chunk_overlap: int = DEFAULT_CHUNK_OVERLAP_CHARS,
                       unit: str = "chars", tokenizer: Any = None) -> RecursiveCharacterTextSplitter:
    """A ``RecursiveCharacterTextSplitter`` for mixed Chinese/English text.

    Args:
        chunk_size: most units in a chunk; >= 1. 500 characters are about 125 English
            or 300-500 Chinese tokens of a BERT-style tokenizer.
        chunk_overlap: units shared by neighbouring chunks; 0 <= overlap < chunk_size.
        unit: "chars" (``len(str)``) or "tokens" (tokens of ``tokenizer``, without the
            special tokens: ``from_huggingface_tokenizer``).
        tokenizer: a Hugging Face tokenizer; needed for "tokens".

    Returns:
        The splitter, with :data:`SEPARATORS` and ``keep_separator="end"`` (a
        sentence keeps its closing "。" / ". ").

    Raises:
        ValueError: a size out of range (the message shows both numbers), an unknown
            unit, or "tokens" without a tokenizer.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1 (got chunk_size={chunk_size!r}, "
                         f"chunk_overlap={chunk_overlap!r})")
    if (isinstance(chunk_overlap, bool) or not isinstance(chunk_overlap, int)
            or not 0 <= chunk_overlap < chunk_size):
        raise ValueError(f"chunk_overlap must be an integer with 0 <= chunk_overlap < chunk_size "
                         f"(got chunk_size={chunk_size!r}, chunk_overlap={chunk_overlap!r})")
    if unit not in CHUNK_UNITS:
        raise ValueError(f"unknown chunk unit {unit!r}: use one of {', '.join(CHUNK_UNITS)}")
    options = dict(separators=list(SEPARATORS), keep_separator="end", is_separator_regex=False,
                   chunk_size=chunk_size, chunk_overlap=chunk_overlap, strip_whitespace=True)
    if unit == "tokens":
        if tokenizer is None:
            raise ValueError("chunk sizes in tokens need the embedding model's tokenizer; use unit 'chars'")
        return RecursiveCharacterTextSplitter.from_huggingface_tokenizer(tokenizer, **options)
    return RecursiveCharacterTextSplitter(length_function=len, **options)


_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_TAG = re.compile(r"<[^>\n]{1,500}>")
_BARE_URL = re.compile(r"https?://\S+")


def visible_markdown(text: str) -> str:
    """Markdown reduced to the text a reader sees: images (badges) dropped, links
    (``[label](url)`` -> ``label``) and HTML tags removed. Markdown files are chunked
    from it, so the link targets neither fill a chunk's token budget nor bury its words.

    Why: in DeepSpeed's README the news lines and badges repeat "deepspeed" in every
    URL; "如何安装deepspeed" ranked the install section 12th of 40 chunks by cosine
    (multilingual-e5-small, 507-token chunks) and first of 16 without them.
    """
    text = _IMAGE.sub("", text)
    text = _LINK.sub(r"\1", text)
    return _TAG.sub(" ", text)


def searchable_text(text: str) -> str:
    """The text a chunk is embedded and keyword-indexed by: :func:`visible_markdown` of it,
    without bare URLs either (the chunk itself, shown and handed to the chat model, keeps them)."""
    return _BARE_URL.sub(" ", visible_markdown(text))


def split_documents(docs: Iterable[Document], splitter: RecursiveCharacterTextSplitter) -> list[Document]:
    """Split Documents into chunk Documents.

    Each chunk keeps its Document's metadata (``source``, ``page``, ...) and
    gets ``chunk_index``: 0, 1, 2, ... counted per ``source`` across all the
    Documents (pages) of that file, in order. Whitespace-only chunks are dropped.

    Returns:
        The chunks, in document order.
    """
    counters: dict[str, int] = {}
    chunks = []
    for doc in docs:
        source = str(doc.metadata.get("source", ""))
        for text in splitter.split_text(doc.page_content):
            if not text.strip():
                continue
            index = counters.get(source, 0)
            counters[source] = index + 1
            chunks.append(Document(page_content=text, metadata={**doc.metadata, "chunk_index": index}))
    return chunks
