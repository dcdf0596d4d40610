"""Ask a model for the intent of each test utterance: a local model folder or a running server.

Every predictor is a callable ``instruction -> answer text`` that sends the system
prompt (:data:`llm.intent.data.SYSTEM_PROMPT` by default) and the instruction as a
fresh conversation, with greedy decoding (temperature 0):

* :class:`ChatModelPredictor` -- a :class:`llm.base.ChatModel` in this process,
  e.g. :func:`load_local_predictor` (a model folder, optionally + a LoRA adapter,
  loaded exactly as the server loads it);
* :class:`PaiEasPredictor` -- a server speaking the PAI-EAS ChatLLM protocol:
  ``POST <url>`` with ``{"prompt", "system_prompt", "history": [], "temperature": 0,
  "max_new_tokens", "use_stream_chat": false}`` -> ``{"response": str, "history": [...]}``;
  a token is sent as ``Authorization: <token>``, as PAI-EAS expects;
* :class:`OpenAIPredictor` -- an OpenAI-compatible server: ``POST
  <base>/v1/chat/completions`` with the system and user messages, ``temperature: 0``;
  a key is sent as ``Authorization: Bearer <key>``.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from llm.base import ChatModel, GenerationParams
from llm.intent.data import SYSTEM_PROMPT, IntentExample
from llm.intent.evaluate import Prediction

#: Default answer budget (tokens): labels are short; a model that does not stop is cut here.
DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_TIMEOUT_S = 120.0

Predictor = Callable[[str], str]


class PredictionError(RuntimeError):
    """A server could not be asked or answered with something unexpected; the message names the URL and the fix."""


def _greedy(max_new_tokens: int) -> GenerationParams:
    return GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0, do_sample=False)


class ChatModelPredictor:
    """Predict with a :class:`~llm.base.ChatModel` in this process (greedy).

    Args:
        model: the chat model.
        system_prompt: sent as the system message.
        max_new_tokens: most tokens per answer.
    """

    def __init__(self, model: ChatModel, *, system_prompt: str = SYSTEM_PROMPT,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS):
        self.model = model
        self.system_prompt = system_prompt
        self.params = _greedy(max_new_tokens)

    def __call__(self, instruction: str) -> str:
        """The model's answer to ``instruction`` (raises :class:`llm.base.GenerationError` on failure)."""
        messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": instruction}]
        return self.model.chat(messages, self.params)


def load_local_predictor(model_path: str, *, lora_path: str | None = None, cpu: bool = False,
                         precision: str = "auto", model_type: str | None = None, trust_remote_code: bool = False,
                         system_prompt: str = SYSTEM_PROMPT,
                         max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> ChatModelPredictor:
    """Load a model folder (+ optional LoRA adapter) with :func:`llm.loader.load_chat_model`; wrap it.

    Raises:
        ModelLoadError: the model or the adapter cannot be loaded.
    """
    from llm.loader import load_chat_model

    model = load_chat_model(model_path, cpu=cpu, precision=precision, model_type=model_type,
                            trust_remote_code=trust_remote_code, lora_path=lora_path)
    return ChatModelPredictor(model, system_prompt=system_prompt, max_new_tokens=max_new_tokens)


class _HttpPredictor:
    """Shared HTTP plumbing: one ``httpx.Client``, JSON POST with clear errors."""

    def __init__(self, headers: dict[str, str], timeout: float):
        import httpx

        self._client = httpx.Client(headers=headers, timeout=timeout)

    def _request(self, method: str, url: str, payload: Any = None) -> Any:
        import httpx

        try:
            response = self._client.request(method, url, json=payload)
        except httpx.HTTPError as exc:
            raise PredictionError(f"cannot reach {url} ({exc!r}): is the server running and the URL right?") from exc
        if response.status_code in (401, 403):
            raise PredictionError(f"{url} refused the request (HTTP {response.status_code}): pass the server's "
                                  "access token with --api-key")
        if response.status_code >= 400:
            raise PredictionError(f"{url} answered HTTP {response.status_code}: {response.text[:500]}")
        try:
            return response.json()
        except ValueError as exc:
            raise PredictionError(f"{url} did not answer JSON: {response.text[:200]!r}") from exc

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PaiEasPredictor(_HttpPredictor):
    """Predict through a PAI-EAS ChatLLM endpoint (this project's ``POST /`` or a PAI-EAS service).

    Args:
        url: the endpoint, e.g. ``http://127.0.0.1:8000/`` (posted to as given).
        api_key: the service token, sent as ``Authorization: <token>``; ``None`` sends none.
        system_prompt / max_new_tokens: sent with every request.
        timeout: seconds per request.
    """

    def __init__(self, url: str, *, api_key: str | None = None, system_prompt: str = SYSTEM_PROMPT,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, timeout: float = DEFAULT_TIMEOUT_S):
        super().__init__({"Authorization": api_key} if api_key else {}, timeout)
        self.url = url
        self.system_prompt = system_prompt
        self.max_new_tokens = max_new_tokens

    def __call__(self, instruction: str) -> str:
        """The server's ``response`` text for ``instruction``.

        Raises:
            PredictionError: unreachable, HTTP error, or no ``response`` text in the reply.
        """
        reply = self._request("POST", self.url, {
            "prompt": instruction, "system_prompt": self.system_prompt, "history": [], "temperature": 0,
            "max_new_tokens": self.max_new_tokens, "use_stream_chat": False,
        })
        if not isinstance(reply, dict) or not isinstance(reply.get("response"), str):
            raise PredictionError(f"{self.url} answered without a 'response' text: {str(reply)[:200]!r} -- "
                                  "is it a PAI-EAS ChatLLM endpoint? (for an OpenAI API use --openai-url)")
        return reply["response"]


def openai_urls(base_url: str) -> tuple[str, str]:
    """``(chat completions URL, models URL)`` for an OpenAI-compatible base URL.

    ``http://h:8000``, ``http://h:8000/v1`` and ``http://h:8000/v1/chat/completions``
    all give ``("http://h:8000/v1/chat/completions", "http://h:8000/v1/models")``.
    """
    base = base_url.rstrip("/")
    if base.endswith("/chat/completions"):
        base = base[: -len("/chat/completions")]
    if not base.endswith("/v1"):
        base += "/v1"
    return base + "/chat/completions", base + "/models"


class OpenAIPredictor(_HttpPredictor):
    """Predict through an OpenAI-compatible chat completions API.

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:8000`` (see :func:`openai_urls`).
        model: the model name to ask for; ``None`` takes the first of ``GET /v1/models``.
        api_key: sent as ``Authorization: Bearer <key>``; ``None`` sends none.
        system_prompt / max_new_tokens: sent with every request (``max_tokens``).
        timeout: seconds per request.
    """

    def __init__(self, base_url: str, *, model: str | None = None, api_key: str | None = None,
                 system_prompt: str = SYSTEM_PROMPT, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 timeout: float = DEFAULT_TIMEOUT_S):
        super().__init__({"Authorization": f"Bearer {api_key}"} if api_key else {}, timeout)
        self.url, self.models_url = openai_urls(base_url)
        self.system_prompt = system_prompt
        self.max_new_tokens = max_new_tokens
        self.model = model

    def model_name(self) -> str:
        """The model to ask for: the one given, else the first ``id`` of ``GET /v1/models`` (cached).

        Raises:
            PredictionError: the server lists no model; pass ``model`` then.
        """
        if self.model is None:
            listing = self._request("GET", self.models_url)
            try:
                self.model = str(listing["data"][0]["id"])
            except (KeyError, IndexError, TypeError):
                raise PredictionError(f"{self.models_url} lists no model: pass the model name with --model") from None
        return self.model

    def __call__(self, instruction: str) -> str:
        """The assistant message content for ``instruction``.

        Raises:
            PredictionError: unreachable, HTTP error, or no ``choices[0].message.content``.
        """
        reply = self._request("POST", self.url, {
            "model": self.model_name(),
            "messages": [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": instruction}],
            "temperature": 0, "max_tokens": self.max_new_tokens, "stream": False,
        })
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise PredictionError(f"{self.url} answered without choices[0].message.content: "
                                  f"{str(reply)[:200]!r}") from None
        return content or ""


def predict(examples: Sequence[IntentExample], predictor: Predictor, *, progress: bool = True) -> list[Prediction]:
    """Ask ``predictor`` for every example's instruction, in order (a tqdm progress bar on stderr).

    Returns:
        One :class:`~llm.intent.evaluate.Prediction` per example.

    Raises:
        PredictionError / GenerationError: from the predictor; the run stops at the first failure.
    """
    from tqdm import tqdm

    return [Prediction(e.instruction, e.output, predictor(e.instruction))
            for e in tqdm(examples, desc="predicting", unit="example", disable=not progress)]
