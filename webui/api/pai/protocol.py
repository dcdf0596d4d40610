"""Wire models of the PAI-EAS ChatLLM protocol (``POST /`` and the WebSocket at ``/``),
as the request scripts published with PAI-EAS and langchain-community's
``PaiEasEndpoint`` / ``PaiEasChatEndpoint`` send it: ``prompt``, ``system_prompt``,
``history`` as ``[user, assistant]`` pairs, sampling fields, ``use_stream_chat``;
unknown fields and nulls are ignored and booleans may arrive as strings ("True")."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..protocol import Source, Usage, no_bool_number

#: Most earlier rounds a PAI-EAS request may carry in ``history`` (the model sees only the
#: last ``--max_round`` of them anyway); more is refused with 422 rather than echoed back.
MAX_HISTORY_ROUNDS = 256


#: The roles an OpenAI-style ``history`` message may have (``system`` messages are skipped).
HISTORY_ROLES = ("user", "assistant", "system")


def _history_schema(schema: dict) -> None:
    """JSON schema of ``history``: ``[user, assistant]`` pairs (the protocol), OpenAI-style
    ``{"role", "content"}`` messages (LangChain's ``PaiEasChatEndpoint``), or null (the
    protocol's clients send null for 'not given')."""
    if "anyOf" not in schema:
        pairs = {k: schema.pop(k) for k in ("type", "items", "maxItems") if k in schema}
        message = {"type": "object", "required": ["role", "content"],
                   "properties": {"role": {"type": "string", "enum": list(HISTORY_ROLES)},
                                  "content": {"type": "string"}}}
        messages = {"type": "array", "items": message, "minItems": 1, "maxItems": 2 * MAX_HISTORY_ROUNDS}
        schema["anyOf"] = [pairs, messages, {"type": "null"}]


def _stop_schema(schema: dict) -> None:
    """JSON schema of ``stop``: a list of strings, one string, or null."""
    schema.setdefault("anyOf", []).append({"type": "string"})


def _bool_or_string(schema: dict) -> None:
    """JSON schema of a flag: PAI-EAS clients also send booleans as strings ("True", "0") or as
    0/1, and null for "not given"."""
    options = [o for o in (schema.pop("anyOf", None) or [{"type": schema.pop("type", "boolean")}])
               if o.get("type") != "null"]
    schema["anyOf"] = options + [{"type": "string", "description": "true/false, 1/0, yes/no"},
                                 {"type": "number", "enum": [0, 1]}, {"type": "null"}]


class PaiChatRequest(BaseModel):
    """One ChatLLM request (``POST /`` body, or one WebSocket message).

    ``history`` holds earlier rounds as ``[user, assistant]`` pairs, oldest first.
    Sampling fields left out (or null) take the server's defaults (the flags).
    ``langchain`` answers from the knowledge base ``knowledge_base`` (default:
    the server's default one) and adds ``sources`` to the reply.
    """

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, description="the user's message")
    system_prompt: str | None = None
    history: list[tuple[str, str]] = Field(default_factory=list, max_length=MAX_HISTORY_ROUNDS,
                                           description="earlier rounds as [user, assistant] pairs (null: none)",
                                           json_schema_extra=_history_schema)
    max_new_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    do_sample: bool | None = Field(None, json_schema_extra=_bool_or_string)
    use_cache: bool | None = Field(None, description="accepted for compatibility; the KV cache is always used",
                                   json_schema_extra=_bool_or_string)
    use_stream_chat: bool = Field(False, json_schema_extra=_bool_or_string)
    langchain: bool = Field(False, json_schema_extra=_bool_or_string)
    stop: list[str] | None = Field(None, description="strings that end the answer (one string is taken as [it])",
                                   json_schema_extra=_stop_schema)
    knowledge_base: str | None = Field(None, description="knowledge base for langchain mode")
    retrieval_top_k: int | None = Field(None, ge=1, le=100, description="chunks retrieved in langchain mode")
    score_threshold: float | None = Field(None, ge=-1, le=1, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        # LangChain sends "stop": null and "stop_sequences": []: a null means "not given".
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data

    @field_validator("max_new_tokens", "temperature", "top_k", "top_p", "retrieval_top_k", "score_threshold",
                     mode="before")
    @classmethod
    def _no_bool_numbers(cls, v: Any) -> Any:
        return no_bool_number(v)

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("history", mode="before")
    @classmethod
    def _pairs(cls, v: Any) -> Any:
        """Accept ``[[u, a], ...]`` (the protocol) and ``[{"role", "content"}, ...]`` (OpenAI style)."""
        if isinstance(v, list) and v and all(isinstance(m, dict) for m in v):
            if len(v) > 2 * MAX_HISTORY_ROUNDS:
                raise ValueError(f"at most {2 * MAX_HISTORY_ROUNDS} messages (the server keeps "
                                 f"{MAX_HISTORY_ROUNDS} rounds): send fewer earlier rounds")
            for m in v:
                if m.get("role") not in HISTORY_ROLES or not isinstance(m.get("content"), str):
                    raise ValueError("each history message needs a role (user, assistant or system) and a "
                                     "string content, or send [user, assistant] pairs")
            users = [m["content"] for m in v if m["role"] == "user"]
            answers = [m["content"] for m in v if m["role"] == "assistant"]
            return list(zip(users, answers))
        return v


class PaiChatResponse(BaseModel):
    """The reply: the answer (or, when streaming, the text added since the last
    chunk) and the history with this round appended."""

    response: str
    history: list[tuple[str, str]]
    sources: list[Source] | None = None
    #: In the last reply only: how the model stopped (``stop`` or ``length``) and its token counts.
    finish_reason: Literal["stop", "length"] | None = None
    usage: Usage | None = None
