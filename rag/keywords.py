"""Keyword search: tokens for BM25 and the BM25 index itself.

Tokens come from jieba (``jieba.lcut``, precise mode): Chinese text is cut into
words, runs of Latin letters and digits stay whole words, so one tokenizer
serves Chinese, English and mixed text. Tokens are lowercased; punctuation,
whitespace and stop words (the English and Chinese lists that ship with bm25s)
are dropped.  Questions are the queries, so the longer English list (179
words, with "how", "what", "do", "i") is used rather than Lucene's 33.

The index is `bm25s <https://github.com/xhluca/bm25s>`_ (Lucene's BM25 variant,
k1 = 1.5, b = 0.75): sparse, numpy-only, maintained, and it scores every chunk
of a 10k-chunk knowledge base in about a millisecond. It cannot be updated in
place, so :class:`KeywordIndex` keeps each chunk's tokens and rebuilds the
bm25s index lazily, at the first search after a change (a vectorised step of
~0.1 s for 1,200 CMRC chunks; see docs/benchmarks.md).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

#: Changes whenever :func:`tokenize` would cut a text differently; stored with
#: the tokens of a knowledge base so stale tokens are recomputed, not trusted. v2: chunks are
#: tokenized by their rag.splitter.searchable_text (no URLs, HTML tags).
TOKENIZER_ID = "jieba-lcut/lower/no-punct/bm25s-stopwords-en_plus-zh/searchable-text/v2"
#: BM25 parameters (the bm25s defaults, Lucene's choice).
BM25_K1 = 1.5
BM25_B = 0.75


def _quiet_library_logger(name: str) -> None:
    """jieba and bm25s set their loggers to DEBUG when imported, which overrides
    the application's log level (every index rebuild would print "Building
    index from tokens"). Hand the level back to the application (NOTSET)."""
    logging.getLogger(name).setLevel(logging.NOTSET)


def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_CHINESE, STOPWORDS_EN_PLUS

    return frozenset(STOPWORDS_EN_PLUS) | frozenset(STOPWORDS_CHINESE)


def tokenize(text: str, stopwords: frozenset[str] | None = None) -> list[str]:
    """Cut ``text`` into BM25 tokens.

    Args:
        text: Chinese, English or mixed text.
        stopwords: tokens to drop; default the English (``STOPWORDS_EN_PLUS``,
            179 words) and Chinese (``STOPWORDS_CHINESE``, 841 words) lists of
            ``bm25s.stopwords``.

    Returns:
        Lowercased jieba tokens, in order, without whitespace, punctuation (a
        token counts when it holds at least one letter, digit or CJK character)
        and stop words. E.g. ``"如何安装DeepSpeed？"`` -> ``["安装", "deepspeed"]``.
    """
    import jieba

    _quiet_library_logger("jieba")
    stop = _stopwords() if stopwords is None else stopwords
    tokens = []
    for raw in jieba.lcut(text):
        token = raw.strip().lower()
        if token and token not in stop and any(ch.isalnum() for ch in token):
            tokens.append(token)
    return tokens


def chunk_tokens(text: str, source: str, stopwords: frozenset[str] | None = None) -> list[str]:
    """Tokens indexed for one chunk: those of its file's name (without the
    extension, e.g. ``"潘淑"`` for ``潘淑.txt``) followed by those of its text.

    The file name acts as a header: a chunk in the middle of a document rarely
    repeats the document's subject, its name often does (measured on CMRC 2018
    dev, BM25 hit@5 rises from 0.987 to 0.994; docs/benchmarks.md).
    """
    stop = _stopwords() if stopwords is None else stopwords
    return tokenize(Path(source).stem, stop) + tokenize(text, stop)


class KeywordIndex:
    """BM25 over the tokens of a knowledge base's chunks, found by chunk id.

    Not thread-safe by itself: :class:`rag.store.KnowledgeBase` calls it under
    its lock.
    """

    def __init__(self, k1: float = BM25_K1, b: float = BM25_B):
        """An empty index; ``k1``, ``b``: the BM25 parameters."""
        self.k1 = k1
        self.b = b
        self._tokens: dict[int, list[str]] = {}
        self._bm25 = None  # bm25s.BM25, rebuilt lazily
        self._ids = np.zeros(0, dtype=np.int64)
        self._df: dict[str, int] = {}
        self._dirty = True

    def __len__(self) -> int:
        """Number of chunks indexed."""
        return len(self._tokens)

    def add(self, chunk_id: int, tokens: Sequence[str]) -> None:
        """Index (or re-index) one chunk's tokens."""
        self._tokens[int(chunk_id)] = list(tokens)
        self._dirty = True

    def remove(self, chunk_ids: Iterable[int]) -> None:
        """Forget these chunks (unknown ids are ignored)."""
        for cid in chunk_ids:
            self._tokens.pop(int(cid), None)
        self._dirty = True

    def ids(self) -> set[int]:
        """The chunk ids indexed."""
        return set(self._tokens)

    def tokens(self) -> Mapping[int, list[str]]:
        """Read-only view of chunk id -> tokens (for persisting them)."""
        return dict(self._tokens)

    def _ensure_built(self) -> None:
        if not self._dirty:
            return
        import bm25s

        _quiet_library_logger("bm25s")
        ids = sorted(self._tokens)
        self._ids = np.asarray(ids, dtype=np.int64)
        df: dict[str, int] = {}
        for toks in self._tokens.values():
            for t in set(toks):
                df[t] = df.get(t, 0) + 1
        self._df = df
        if ids:
            bm25 = bm25s.BM25(k1=self.k1, b=self.b)
            bm25.index([self._tokens[i] for i in ids], show_progress=False)
            self._bm25 = bm25
        else:
            self._bm25 = None
        self._dirty = False

    def idf(self, tokens: Sequence[str]) -> dict[str, float]:
        """BM25's (Lucene's) inverse document frequency of each distinct token:
        ``log(1 + (N - df + 0.5) / (df + 0.5))`` over the N chunks; a token found in no
        chunk gets the largest value, ``log(1 + (N + 0.5) / 0.5)``."""
        self._ensure_built()
        n = len(self._tokens)
        return {t: float(np.log1p((n - self._df.get(t, 0) + 0.5) / (self._df.get(t, 0) + 0.5))) for t in set(tokens)}

    def chunk_token_set(self, chunk_id: int) -> frozenset[str]:
        """The distinct tokens of one chunk (empty for an unknown id)."""
        return frozenset(self._tokens.get(int(chunk_id), ()))

    def scores(self, query_tokens: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """BM25 score of every indexed chunk for a tokenized query.

        Returns:
            ``(ids, scores)``: int64 and float32 arrays of the same length (the
            number of chunks), ids ascending. Scores are >= 0 and unbounded
            (they grow with the query's length and the matched words' rarity),
            so they compare chunks for one query, not across queries. All zeros
            when no query token occurs in any chunk.
        """
        self._ensure_built()
        if self._bm25 is None:
            return self._ids, np.zeros(0, dtype=np.float32)
        known = self._bm25.get_tokens_ids(list(query_tokens))
        if not known:
            return self._ids, np.zeros(len(self._ids), dtype=np.float32)
        return self._ids, np.asarray(self._bm25.get_scores_from_ids(known), dtype=np.float32)

    def top(self, query_tokens: Sequence[str], n: int) -> list[tuple[int, float]]:
        """The ``n`` best chunks with a score > 0, as (chunk id, BM25 score), best first
        (ties: lower id first)."""
        ids, scores = self.scores(query_tokens)
        if len(scores) == 0 or n < 1:
            return []
        order = np.lexsort((ids, -scores))[:n]
        return [(int(ids[i]), float(scores[i])) for i in order if scores[i] > 0]
