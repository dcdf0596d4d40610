"""The PAI-EAS ChatLLM protocol's side of the request lifecycle: reading a request
(JSON or a plain-text prompt), starting its answer, and the replies on its wire.

Wire format (PAI-EAS ChatLLM-WebUI, and langchain-community's PaiEasEndpoint): a reply
is ``{"response": str, "history": [[user, assistant], ...]}`` with the new round appended;
streamed replies are such JSON objects, ``response`` holding the text added since the
previous one, each followed by a NUL byte (``\\0``) over HTTP, one per message on the
WebSocket.
"""
from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from llm.base import GenerationParams

from ...services import ChatService
from ..errors import ApiError, check_max_new_tokens
from ..lifecycle import Encoder, Round
from ..protocol import Source
from .protocol import PaiChatRequest, PaiChatResponse

#: The request fields of :data:`~webui.api.errors.ERROR_TABLE`'s roles.
FIELDS = {"prompt": "prompt", "knowledge_base": "knowledge_base"}


def parse_request(body: bytes | str, content_type: str | None = None) -> PaiChatRequest:
    """A request from a raw body: a JSON object, or else plain text that is the prompt.

    Raises:
        ApiError: 422 naming the field and its limit when a JSON field is invalid,
            400 when the body is empty or not UTF-8.
    """
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "the request body is not UTF-8 text: send JSON or a UTF-8 prompt") from None
    text = body.strip()
    is_json = (content_type or "").split(";")[0].strip() == "application/json" or text.startswith("{")
    data: Any = text if text else {}  # an empty body is a request without a prompt
    if is_json and text:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ApiError(400, f"malformed JSON body ({exc.msg} at line {exc.lineno} column {exc.colno}): "
                                "send a JSON object such as {\"prompt\": \"...\"}") from None
        except RecursionError:
            raise ApiError(400, "the JSON body is nested too deeply: send a flat JSON object such as "
                                "{\"prompt\": \"...\"}") from None
        except ValueError as exc:  # e.g. an integer of more than 4300 digits (sys.get_int_max_str_digits)
            raise ApiError(400, f"the JSON body holds a value this server cannot read ({exc}); "
                                "send numbers of ordinary size") from None
    if isinstance(data, str):
        data = {"prompt": data}
    if not isinstance(data, dict):
        raise ApiError(422, f"the JSON body must be an object with a 'prompt' field, got {type(data).__name__}")
    try:
        return PaiChatRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError(422, f"{field}: {first['msg']}", param=field) from None


def generation_params(service: ChatService, req: PaiChatRequest) -> GenerationParams:
    """The request's sampling fields over the server's defaults.

    Raises:
        ApiError: 422 for a value out of range (``max_new_tokens`` above ``--max-new-tokens-limit``).
    """
    check_max_new_tokens(service.settings.max_new_tokens_limit, req.max_new_tokens, "max_new_tokens")
    try:
        return service.settings.generation_params(
            max_new_tokens=req.max_new_tokens, temperature=req.temperature, top_k=req.top_k, top_p=req.top_p,
            do_sample=req.do_sample, stop=tuple(req.stop or ()))
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None


def begin(service: ChatService, req: PaiChatRequest, params: GenerationParams, channel: str) -> Round:
    """Start answering ``req`` (blocking): from the knowledge base ``req.knowledge_base`` with
    ``langchain``, else the model alone.

    Raises:
        UnknownKnowledgeBase, PromptTooLongError, ValueError: mapped by the error table (404, 400).
    """
    history = [tuple(h) for h in req.history]
    if req.langchain:
        answer = service.answer_from_knowledge(
            req.prompt, history, top_k=req.retrieval_top_k, score_threshold=req.score_threshold,
            system_prompt=req.system_prompt, params=params, kb=req.knowledge_base)
        return Round(answer.pieces, answer.generation, channel, req.prompt, history, req.system_prompt,
                     sources=[Source(**r.to_dict()) for r in answer.sources])
    gen = service.stream_chat(req.prompt, history, system_prompt=req.system_prompt, params=params)
    return Round(gen, gen, channel, req.prompt, history, req.system_prompt)


class PaiEncoder(Encoder[dict]):
    """The protocol's replies as dicts: a streamed reply holds the text added since the
    previous one and, in ``history``, only the round so far (repeating the earlier rounds in
    every reply turned a 1.1 MB request into a 428 MB reply); the last streamed reply has
    ``response`` "" and the whole history, ``finish_reason`` and ``usage``; ``sources`` come
    with the first reply. Over HTTP each is JSON followed by NUL (:meth:`wire`)."""

    def __init__(self, req: PaiChatRequest):
        self.req = req
        self._sources_sent = False

    def _sources(self, round: Round) -> list[Source] | None:
        sources = None if self._sources_sent else round.sources
        self._sources_sent = True
        return sources

    def delta(self, round: Round, text: str, answer: str) -> dict:
        return PaiChatResponse(response=text, history=[(self.req.prompt, answer)],
                               sources=self._sources(round)).model_dump(exclude_none=True)

    def _ended(self, round: Round, response: str, answer: str, sources: list[Source] | None) -> dict:
        return PaiChatResponse(response=response, history=list(self.req.history) + [(self.req.prompt, answer)],
                               sources=sources, finish_reason=round.finish_reason(),
                               usage=round.usage()).model_dump(exclude_none=True)

    def closing(self, round: Round, answer: str) -> list[dict]:
        return [self._ended(round, "", answer, self._sources(round))]

    def failure(self, round: Round, error: ApiError) -> list[dict]:
        return [{**PaiChatResponse(response="", history=list(self.req.history)).model_dump(exclude_none=True),
                 "error": error.message}]

    def reply(self, round: Round, answer: str) -> dict:
        return self._ended(round, answer, answer, round.sources)

    def wire(self, frame: dict) -> bytes:
        return json.dumps(frame, ensure_ascii=False).encode("utf-8") + b"\0"
