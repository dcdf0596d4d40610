"""Texts a model family wants before queries and passages (from the model cards).

e5 models want ``query: `` / ``passage: ``; bge-*-zh/en v1.5 want an instruction before
short queries; bge-m3 and all-MiniLM-L6-v2 want nothing.
"""
from __future__ import annotations

import re
from pathlib import Path

from .e5_offline import E5_PASSAGE_PREFIX, E5_QUERY_PREFIX, OFFLINE_EMBEDDING_MODEL

# Query instructions recommended by the BGE model cards (FlagEmbedding README,
# "Using Sentence-Transformers"): prepended to short queries, not to passages.
# bge-m3 needs none; neither does all-MiniLM-L6-v2.
BGE_ZH_QUERY_INSTRUCTION = "为这个句子生成表示以用于检索相关文章："
BGE_EN_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "


_E5_NAME = re.compile(r"^(multilingual-)?e5-(small|base|large)(-v2)?$")


def is_e5(model_name: str) -> bool:
    """True for the e5 models that want ``query: `` / ``passage: `` prefixes:
    ``[multilingual-]e5-{small,base,large}[-v2]`` (hub id or folder) and
    :data:`OFFLINE_EMBEDDING_MODEL`; not e5-mistral or the -instruct models."""
    return model_name == OFFLINE_EMBEDDING_MODEL or bool(_E5_NAME.match(Path(model_name.rstrip("/\\")).name.lower()))


def passage_prefix_for(model_name: str) -> str:
    """Text prepended to chunks before embedding: :data:`E5_PASSAGE_PREFIX` for e5 models
    (:func:`is_e5`), "" for every other family."""
    return E5_PASSAGE_PREFIX if is_e5(model_name) else ""


def query_instruction_for(model_name: str) -> str:
    """The query instruction a model family needs, or "" if none.

    e5 models (:func:`is_e5`) -> :data:`E5_QUERY_PREFIX` ("query: ", the e5 model card),
    ``bge-{small,base,large}-zh[-v1.5]`` -> :data:`BGE_ZH_QUERY_INSTRUCTION`,
    ``bge-{small,base,large}-en[-v1.5]`` -> :data:`BGE_EN_QUERY_INSTRUCTION`
    (source: the BAAI/bge-*-v1.5 model cards); everything else, including
    bge-m3, gets none. ``model_name`` may be a hub id or a local folder.
    """
    if is_e5(model_name):
        return E5_QUERY_PREFIX
    base = Path(model_name.rstrip("/\\")).name.lower()
    if not base.startswith("bge-") or "m3" in base or "reranker" in base:
        return ""
    if "-zh" in base:
        return BGE_ZH_QUERY_INSTRUCTION
    if "-en" in base:
        return BGE_EN_QUERY_INSTRUCTION
    return ""
