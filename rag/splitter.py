"""Cut Documents into chunks for embedding, for Chinese and English text.

Built on LangChain's ``RecursiveCharacterTextSplitter``: it tries the
separators in order (paragraph, line, sentence end, clause, word, character)
and keeps each sentence's closing punctuation at the end of its chunk.
"""
from __future__ import annotations

from typing import Iterable

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


def make_text_splitter(chunk_size: int = 500, chunk_overlap: int = 50) -> RecursiveCharacterTextSplitter:
    """A ``RecursiveCharacterTextSplitter`` for mixed Chinese/English text.

    Args:
        chunk_size: most characters in a chunk (``len(str)``, not tokens); >= 1.
            500 characters is about 125 English or 300-500 Chinese tokens of a
            BERT-style tokenizer.
        chunk_overlap: characters shared by neighbouring chunks; 0 <= overlap < chunk_size.

    Returns:
        The splitter, with :data:`SEPARATORS` and ``keep_separator="end"`` (a
        sentence keeps its closing "。" / ". ").

    Raises:
        ValueError: a size out of range; the message shows both numbers.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1 (got chunk_size={chunk_size!r}, "
                         f"chunk_overlap={chunk_overlap!r})")
    if (isinstance(chunk_overlap, bool) or not isinstance(chunk_overlap, int)
            or not 0 <= chunk_overlap < chunk_size):
        raise ValueError(f"chunk_overlap must be an integer with 0 <= chunk_overlap < chunk_size "
                         f"(got chunk_size={chunk_size!r}, chunk_overlap={chunk_overlap!r})")
    return RecursiveCharacterTextSplitter(
        separators=list(SEPARATORS),
        keep_separator="end",
        is_separator_regex=False,
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        length_function=len,
        strip_whitespace=True,
    )


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
