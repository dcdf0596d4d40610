"""Reading an evaluation's data: a SQuAD-format file into articles (one document each)
and questions with their gold answer texts, and plain question lists (one per line)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..persistence import safe_file_name


class EvalFormatError(ValueError):
    """The evaluation file is not SQuAD-format JSON; the message names the file and what is wrong."""


@dataclass
class Article:
    """One document of the evaluation: ``name`` (the file name to store), ``text``."""

    id: str
    name: str
    text: str


@dataclass
class Question:
    """One evaluation question: its text, its gold answer texts, its article's id."""

    id: str
    text: str
    answers: list[str]
    article_id: str




def _document_name(title: str, used: set[str], article_id: str, by: str) -> str:
    base = article_id if by == "id" or not title.strip() else title
    base = re.sub(r"[\\/:*?\"<>|]", "_", base).strip() or article_id
    name = safe_file_name(f"{base}.txt")
    if name in used:
        name = safe_file_name(f"{base} ({article_id}).txt")
    used.add(name)
    return name


def load_squad(path: str | Path, *, doc_names: str = "title") -> tuple[list[Article], list[Question]]:
    """Read a SQuAD-format file into articles (one document each) and questions.

    Args:
        path: the JSON file.
        doc_names: ``"title"`` names each document after its article's title
            (as a user's file would be named), ``"id"`` after the article id.

    Returns:
        (articles, questions) in file order. Questions without an answer text are left out.

    Raises:
        EvalFormatError: unreadable JSON or a missing field; FileNotFoundError: no such file.
    """
    path = Path(path)
    if doc_names not in ("title", "id"):
        raise ValueError(f"doc_names must be 'title' or 'id', got {doc_names!r}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise EvalFormatError(f"{path}: not readable JSON ({exc}); give a SQuAD-format .json file") from exc
    articles, questions, used = [], [], set()
    try:
        for i, item in enumerate(data["data"]):
            article_id = str(item.get("id", f"article-{i}"))
            contexts = [p["context"] for p in item["paragraphs"]]
            name = _document_name(str(item.get("title", "")), used, article_id, doc_names)
            articles.append(Article(id=article_id, name=name, text="\n\n".join(contexts)))
            for p in item["paragraphs"]:
                for qa in p["qas"]:
                    answers = sorted({a["text"] for a in qa.get("answers", []) if a.get("text", "").strip()})
                    if answers:
                        questions.append(Question(id=str(qa.get("id", "")), text=qa["question"],
                                                  answers=answers, article_id=article_id))
    except (KeyError, TypeError, AttributeError) as exc:
        raise EvalFormatError(
            f"{path}: not SQuAD format (missing or wrong field: {exc!r}); expected "
            '{"data": [{"title", "paragraphs": [{"context", "qas": [{"question", "answers": [{"text"}]}]}]}]}'
        ) from exc
    if not articles:
        raise EvalFormatError(f"{path}: no articles under \"data\"")
    return articles, questions



def load_questions(path: str | Path) -> list[str]:
    """Questions from a text file, one per line (blank lines and lines starting with # skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
