"""A chat model served elsewhere: any OpenAI-compatible server (vLLM, SGLang, an EAS
vLLM deployment, another chatllm-webui), reached with the official ``openai`` client.

``--llm-backend openai --llm-base-url URL`` swaps this in for the local model; the
page, the knowledge bases and the API work unchanged on top of it.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterator, Sequence

from llm.backends import Backend, Flag
from llm.base import ChatModel, Generation, GenerationError, GenerationParams, Message, ModelLoadError

logger = logging.getLogger(__name__)


class OpenAIChatModel(ChatModel):
    """Generation through ``POST {base_url}/chat/completions`` with ``stream=True``.

    Args:
        base_url: the server's OpenAI base URL, e.g. ``http://gpu-box:8000/v1``.
        model: the model id to ask for; None takes the first of ``GET /models``.
        api_key: sent as ``Authorization: Bearer <api_key>`` (``"EMPTY"`` for servers without keys).
        timeout: seconds for connecting and between streamed chunks.
        context_length: tokens the remote model accepts (the API does not say; used for
            history trimming only).
        client: a ready ``openai.OpenAI`` (tests); built from the above when None.

    Raises:
        ModelLoadError: the server cannot be reached or lists no model; the message
            names the URL and the fix.

    Token counts (:meth:`count_tokens`) are whitespace-word estimates: the tokenizer
    lives on the remote server.
    """

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 timeout: float = 120.0, context_length: int = 32768, client: Any = None):
        import openai

        self.client = client or openai.OpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout,
                                              max_retries=1)
        self.base_url = base_url
        self.context_length = context_length
        if model is None:
            try:
                models = self.client.models.list().data
            except openai.OpenAIError as exc:
                raise ModelLoadError(
                    f"cannot reach the OpenAI-compatible server at {base_url} ({exc}); check --llm-base-url "
                    "(it usually ends in /v1), that the server is up, and --llm-api-key") from exc
            if not models:
                raise ModelLoadError(f"the server at {base_url} lists no model: pass --llm-model")
            model = models[0].id
        self.name = model
        logger.info("remote model %s at %s", model, base_url)

    def stream(self, messages: Sequence[Message], params: GenerationParams) -> Iterator[str]:
        """Stream the remote answer (see :meth:`ChatModel.stream`). Greedy maps to temperature 0;
        top_k is not part of the OpenAI API and is sent as vLLM's ``extra_body`` field."""
        import openai

        kwargs: dict[str, Any] = dict(model=self.name, messages=[dict(m) for m in messages], stream=True,
                                      max_tokens=params.max_new_tokens, stream_options={"include_usage": True})
        if params.greedy:
            kwargs["temperature"] = 0
        else:
            kwargs.update(temperature=params.temperature, top_p=params.top_p)
            if params.top_k:
                kwargs["extra_body"] = {"top_k": params.top_k}
        if params.stop:
            kwargs["stop"] = list(params.stop)
        gen = Generation()
        return gen.run(self._pieces(kwargs, openai.OpenAIError, gen, messages, params))

    def _pieces(self, kwargs: dict[str, Any], api_error: type[Exception], gen: Generation,
                messages: Sequence[Message], params: GenerationParams) -> Iterator[str]:
        """The remote answer's pieces; ``gen`` gets the server's ``finish_reason`` (anything but
        ``length`` counts as ``stop``) and ``usage``; a server that sends no usage chunk gets
        whitespace-word estimates (:meth:`ChatModel.count_tokens`)."""
        try:
            stream = self.client.chat.completions.create(**kwargs)
        except api_error as exc:
            raise GenerationError(f"the remote model {self.name!r} at {self.base_url} failed: {exc}") from exc
        text, reason = [], None
        try:
            for chunk in stream:
                usage = getattr(chunk, "usage", None)
                if usage is not None:
                    gen.prompt_tokens, gen.completion_tokens = usage.prompt_tokens, usage.completion_tokens
                if not chunk.choices:
                    continue
                reason = chunk.choices[0].finish_reason or reason
                piece = chunk.choices[0].delta.content
                if piece:
                    text.append(piece)
                    yield piece
            if gen.prompt_tokens is None:
                gen.prompt_tokens = self.count_prompt_tokens(messages)
            if gen.completion_tokens is None:
                gen.completion_tokens = self.count_tokens("".join(text))
            gen.finish_reason = "length" if reason == "length" else "stop"
        except api_error as exc:
            raise GenerationError(f"the remote model {self.name!r} at {self.base_url} failed: {exc}") from exc
        finally:
            stream.close()  # closing early ends the remote generation too


def load_backend(settings: Any) -> OpenAIChatModel:
    """The ``openai`` backend: an :class:`OpenAIChatModel` at ``--llm-base-url``
    (key: ``--llm-api-key``, else ``$OPENAI_API_KEY``).

    Raises:
        ModelLoadError: the server cannot be reached or lists no model.
    """
    return OpenAIChatModel(settings.llm_base_url, model=settings.llm_model,
                           api_key=settings.llm_api_key or os.environ.get("OPENAI_API_KEY"))


def _check_backend(settings: Any) -> list[str]:
    if not settings.llm_base_url:
        return ["--llm-backend openai needs --llm-base-url (e.g. http://host:8000/v1)"]
    return []


BACKEND = Backend(
    name="openai",
    summary="an OpenAI-compatible server (vLLM, SGLang, another chatllm-webui) at --llm-base-url",
    load=load_backend,
    check=_check_backend,
    flags=(
        Flag("llm-base-url", dict(metavar="URL", help="with --llm-backend openai, e.g. http://host:8000/v1")),
        Flag("llm-api-key", dict(help="with --llm-backend openai (default $OPENAI_API_KEY)")),
        Flag("llm-model", dict(help="with --llm-backend openai: model id (default: the server's first)")),
    ),
)
