"""Load a chat model from a local folder or a Hugging Face hub id (``--model-path``).

The path is the one ``AutoTokenizer.from_pretrained`` / ``AutoModelForCausalLM.
from_pretrained`` take.  With no path, :data:`DEFAULT_MODEL_PATH` is used if it is
in the local Hugging Face cache (or can be downloaded); otherwise the built-in demo
model (:mod:`llm.demo`) is, with a warning, so the server always starts.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from llm.backends import Backend, Flag
from llm.base import ModelLoadError
from llm.templates import template_for

logger = logging.getLogger(__name__)

#: The PAI-EAS ChatLLM-WebUI default model family; a Hugging Face hub id.
DEFAULT_MODEL_PATH = "Qwen/Qwen2.5-7B-Instruct"

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "name" or "org/name"


def resolve_device(cpu: bool) -> str:
    """Pick the device: ``"cpu"`` if ``cpu`` is set or no CUDA GPU is available, else ``"cuda"``.

    Logs a warning when a GPU was wanted (``cpu`` False) but none is found.
    """
    import torch

    if cpu:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    logger.warning("no CUDA GPU found: running the model on the CPU (slow; pass --cpu to silence this)")
    return "cpu"


def resolve_dtype(precision: str, device: str) -> Any:
    """Map ``--precision`` to a ``torch.dtype``.

    Args:
        precision: ``"fp32"``, ``"fp16"``, ``"bf16"`` or ``"auto"`` (case-insensitive).
            ``auto`` is bf16 on a CUDA GPU that supports it, else fp16 on CUDA, and
            fp32 on the CPU (half precision on CPU is slow and, for fp16, lossy).
        device: ``"cpu"`` or ``"cuda"`` (see :func:`resolve_device`).

    Returns:
        ``torch.float32``, ``torch.float16`` or ``torch.bfloat16``.  An explicit
        ``fp16`` on the CPU is kept (torch >= 2.1 has CPU kernels for it) but logs
        a warning that it is slow; use fp32 or bf16 there.

    Raises:
        ValueError: unknown ``precision``; the message lists the choices.
    """
    import torch

    key = precision.strip().lower()
    if key not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    on_cuda = device.startswith("cuda")
    if key == "auto":
        if not on_cuda:
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if key == "fp16" and not on_cuda:
        logger.warning("fp16 on the CPU is slow and may be inaccurate; fp32 or bf16 are better there")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[key]


def _offline() -> bool:
    """True when the Hugging Face hub is switched off (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    from huggingface_hub import constants

    transformers_offline = os.environ.get("TRANSFORMERS_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    return bool(constants.HF_HUB_OFFLINE) or transformers_offline


def _fix_hint(path: str) -> str:
    """The "how to fix it" half of a :class:`ModelLoadError` message."""
    return (
        f"check that {path!r} is a local folder holding config.json, the weights (*.safetensors) and the "
        "tokenizer files, or a Hugging Face hub id (like 'Qwen/Qwen2.5-7B-Instruct') that is in the local "
        "HF cache or can be downloaded (network access, HF_HUB_OFFLINE unset)"
    )


def _looks_local(path: str) -> bool:
    """True for a filesystem path, False for something shaped like a hub id ("org/name")."""
    return Path(path).expanduser().exists() or path.startswith((".", "/", "~")) or not _HUB_ID.match(path)


def _attempts(path: str) -> list[bool]:
    """The ``local_files_only`` values to try: the HF cache first, then the hub (if online)."""
    return [True] if _looks_local(path) or _offline() else [True, False]


def load_config(path: str, trust_remote_code: bool) -> tuple[Any, bool]:
    """Load the model config, from the local cache first; return ``(config, local_files_only)``.

    Raises:
        ModelLoadError: the path is not a model folder, or the hub id is neither
            cached nor downloadable.
    """
    from transformers import AutoConfig

    if _looks_local(path) and not Path(path).expanduser().is_dir():
        raise ModelLoadError(f"model path {path!r} is not a folder: {_fix_hint(path)}")
    error: Exception | None = None
    for local_only in _attempts(path):
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=local_only, trust_remote_code=trust_remote_code)
            return config, local_only
        except Exception as exc:  # noqa: BLE001 -- OSError, ValueError, KeyError...: all mean "cannot load"
            error = exc
            logger.debug("config of %r not loaded (local_files_only=%s): %r", path, local_only, exc)
    raise ModelLoadError(f"cannot load the model config from {path!r} ({error}): {_fix_hint(path)}") from error


def pick_template(tokenizer: Any, config: Any, model_type: str | None) -> str | None:
    """The chat template to pass to :class:`HFChatModel`: ``None`` keeps the tokenizer's own;
    else the one named by ``model_type`` (``--model-type``), else a guess from the config's
    model family (Qwen: ChatML; Llama: Llama 2 or 3 by its vocabulary), else the plain
    "User: ... Assistant: ..." format with a warning.

    Raises:
        ValueError: ``model_type`` is not a known template family (``llm.templates``).
    """
    if getattr(tokenizer, "chat_template", None):
        if model_type:
            logger.info("the tokenizer has a chat template: --model-type %s is ignored", model_type)
        return None
    if model_type:
        return template_for(model_type)
    family = getattr(config, "model_type", "") or ""
    guess = {"qwen2": "chatml", "qwen2_moe": "chatml", "qwen3": "chatml", "mistral": "llama2"}.get(family)
    if family == "llama":
        guess = "llama3" if "<|start_header_id|>" in tokenizer.get_vocab() else "llama2"
    if guess is None:
        logger.warning(
            "the tokenizer has no chat template and model type %r is not known: using the plain "
            "'User: ... Assistant: ...' format (pass --model-type to choose another)", family
        )
        guess = "plain"
    else:
        logger.info("the tokenizer has no chat template: using the %s format (model type %r)", guess, family)
    return template_for(guess)


def _lora_fix_hint(lora_path: str) -> str:
    """The "how to fix it" half of a :class:`ModelLoadError` about ``--lora-path``."""
    return (
        f"--lora-path {lora_path!r} must be a folder holding a peft LoRA adapter (adapter_config.json and "
        "adapter_model.safetensors, as 'python -m llm.intent finetune --method lora' writes it), trained on the "
        "--model-path model"
    )


def adapter_base_model(lora_path: str | Path) -> str | None:
    """The base model a peft adapter records (``base_model_name_or_path`` in ``adapter_config.json``).

    Returns:
        The recorded folder or hub id, or ``None`` when there is none.

    Raises:
        ModelLoadError: ``lora_path`` has no readable ``adapter_config.json``.
    """
    config_file = Path(lora_path).expanduser() / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {str(config_file)!r} ({exc}): {_lora_fix_hint(str(lora_path))}") from exc
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    return base or None


def apply_lora(model: Any, lora_path: str | Path, *, base: str) -> Any:
    """Apply the peft LoRA adapter in ``lora_path`` to ``model`` and merge it into the weights.

    Merging (``merge_and_unload``) makes inference as fast as the base model's; the
    result is a plain transformers model.  A warning is logged when the adapter
    records a different base model than ``base``.

    Args:
        model: the loaded base model (``PreTrainedModel``), on its device.
        lora_path: the adapter folder.
        base: the ``--model-path`` the model came from (for the messages).

    Returns:
        The merged model.

    Raises:
        ModelLoadError: the folder is not an adapter, or the adapter does not fit the
            model (other architecture or sizes); the message names the folder and the fix.
    """
    recorded = adapter_base_model(lora_path)
    if recorded and Path(recorded).expanduser().resolve() != Path(base).expanduser().resolve() and recorded != base:
        logger.warning("the LoRA adapter %s was trained on %r, it is applied to %r", lora_path, recorded, base)
    try:
        from peft import PeftModel

        merged = PeftModel.from_pretrained(model, str(Path(lora_path).expanduser()), is_trainable=False)
        merged = merged.merge_and_unload()
    except Exception as exc:  # noqa: BLE001 -- size mismatch, missing weights, unknown modules: all "does not fit"
        raise ModelLoadError(
            f"cannot apply the LoRA adapter {str(lora_path)!r} to {base!r} ({exc!r}): {_lora_fix_hint(str(lora_path))}"
        ) from exc
    logger.info("applied and merged the LoRA adapter %s", lora_path)
    return merged


def _load(path: str, found: tuple[Any, bool] | None = None, *, name: str, cpu: bool, precision: str,
          use_template: bool, model_type: str | None, trust_remote_code: bool, is_demo: bool = False,
          lora_path: str | Path | None = None):
    """Load tokenizer + model from ``path`` into an :class:`HFChatModel`; errors as :class:`ModelLoadError`.

    ``found`` is ``load_config(path, ...)``'s result when the caller already has it;
    ``lora_path`` an adapter to apply with :func:`apply_lora`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm.hf import HFChatModel

    config, local_only = found or load_config(path, trust_remote_code)
    device = resolve_device(cpu)
    dtype = resolve_dtype(precision, device)
    # A cached config does not mean cached weights (an interrupted download): then try the hub.
    attempts = _attempts(path) if local_only else [False]
    for i, local_only in enumerate(attempts):
        common = {"local_files_only": local_only, "trust_remote_code": trust_remote_code}
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **common)
            model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype, **common)
            break
        except Exception as exc:  # noqa: BLE001 -- any failure here means the folder is not a usable model
            if i + 1 == len(attempts):
                raise ModelLoadError(f"cannot load the model from {path!r} ({exc!r}): {_fix_hint(path)}") from exc
            logger.info("%s is not complete in the HF cache (%r); trying the hub", path, exc)
    model.to(device)
    if lora_path is not None:
        model = apply_lora(model, lora_path, base=path)
    model.eval()
    template = pick_template(tokenizer, config, model_type) if use_template else None
    logger.info("loaded %s (%s) on %s as %s", path, type(model).__name__, device, dtype)
    return HFChatModel(model, tokenizer, name=name, use_template=use_template, chat_template=template, is_demo=is_demo)


def load_chat_model(
    model_path: str | None = None,
    *,
    cpu: bool = False,
    precision: str = "auto",
    use_template: bool = True,
    model_type: str | None = None,
    demo_dir: str | Path | None = None,
    trust_remote_code: bool = False,
    lora_path: str | Path | None = None,
):
    """Load the chat model for ``--model-path`` (the server's model loading).

    Args:
        model_path: local folder or hub id.  ``None`` tries :data:`DEFAULT_MODEL_PATH`
            (from the local HF cache first, then the hub unless ``HF_HUB_OFFLINE``)
            and, if that is not available, falls back to the demo model with a
            WARNING (``is_demo`` True, name ``"demo"``).
        cpu: run on the CPU even if a GPU is there (``--cpu``).
        precision: ``auto``/``fp32``/``fp16``/``bf16``, see :func:`resolve_dtype`.
        use_template: False is ``--no-template`` (raw prompts, see
            :meth:`HFChatModel.render_prompt`).
        model_type: chat template family (``--model-type``, one of
            :data:`llm.templates.MODEL_TYPES`) for tokenizers without a chat
            template; without it the family is guessed from ``config.model_type``
            (qwen2 -> chatml, llama -> llama3 or llama2, mistral -> llama2, else plain).
            Ignored (logged) when the tokenizer has its own template.
        demo_dir: where the demo model is built/cached (default
            :func:`llm.demo.default_demo_dir`).
        trust_remote_code: passed to ``from_pretrained``; only for models you trust.
        lora_path: folder of a peft LoRA adapter (``--lora-path``) applied to the model
            and merged into its weights (:func:`apply_lora`).  With no ``model_path``,
            the base model the adapter records is loaded (never the demo fallback).

    Returns:
        An :class:`~llm.hf.HFChatModel`, on its device, in eval mode; its ``name`` is
        ``model_path`` as given (or ``"demo"``).

    Raises:
        ModelLoadError: ``model_path`` was given and cannot be loaded, or ``lora_path``
            is not an adapter for it; the message names the path and the fix.
        ValueError: unknown ``precision`` or ``model_type``.
    """
    if model_type is not None:
        template_for(model_type)  # reject a bad --model-type before any loading
    resolve_dtype(precision, "cpu")  # likewise a bad --precision
    options = {"cpu": cpu, "precision": precision, "use_template": use_template, "model_type": model_type,
               "trust_remote_code": trust_remote_code}
    if lora_path is not None:
        if model_path is None:
            model_path = adapter_base_model(lora_path)
            if model_path is None:
                raise ModelLoadError(f"the LoRA adapter {str(lora_path)!r} does not record its base model: "
                                     "pass --model-path with the model it was trained on")
            logger.info("no --model-path given: loading %s, the base model of the LoRA adapter", model_path)
        else:
            adapter_base_model(lora_path)  # reject a folder that is not an adapter before loading the model
        return _load(model_path, name=model_path, lora_path=lora_path, **options)
    if model_path is not None:
        return _load(model_path, name=model_path, **options)
    try:
        found = load_config(DEFAULT_MODEL_PATH, trust_remote_code)
    except ModelLoadError as exc:
        from llm.demo import DEMO_MODEL_NAME, build_demo_model

        logger.debug("default model not loaded: %r", exc.__cause__ or exc)
        logger.warning(
            "no --model-path given and %s is not in the local cache%s: serving the built-in DEMO model "
            "(meaningless random answers); pass --model-path <folder or hub id>",
            DEFAULT_MODEL_PATH, " and the hub cannot be reached" if _offline() else " nor downloadable",
        )
        demo_path = build_demo_model(demo_dir)
        options.update(model_type=None, trust_remote_code=False)
        return _load(str(demo_path), name=DEMO_MODEL_NAME, is_demo=True, **options)
    # The default model is there: a failure now is an error, not hidden behind the demo.
    return _load(DEFAULT_MODEL_PATH, found, name=DEFAULT_MODEL_PATH, **options)


def use_batching(batching: str) -> bool:
    """Whether ``--batching`` (``on``/``off``/``auto``) serves with continuous batching:
    ``auto`` and ``on`` do, ``off`` does not.  On a CPU ``auto`` serves a lone
    request with plain ``generate`` and batches only when several run at once
    (:func:`plain_when_alone`)."""
    return batching in ("on", "auto")


def plain_when_alone(batching: str, device: str) -> bool:
    """Whether a lone request is served by plain ``generate`` (``BatchedHFChatModel``'s
    ``plain_when_alone``): with ``--batching auto`` on a CPU, where the manager's per-step
    scheduling makes one stream alone 4-18% slower than ``generate`` while 8 streams batched give
    3.6-4x one plain stream with SmolLM2-135M (docs/benchmarks.md, 'Batching by default?').  Not
    on a GPU, where the manager's CUDA graphs are meant for one stream too (unmeasured here)."""
    return batching == "auto" and not device.startswith("cuda")


def load_backend(settings: Any):
    """The ``transformers`` backend: :func:`load_chat_model` with the settings' model flags,
    then continuous batching (:class:`llm.batching.BatchedHFChatModel`) where :func:`use_batching`
    says so; a model batching cannot serve is served one request at a time (logged).

    Raises:
        ModelLoadError: see :func:`load_chat_model`.
    """
    model = load_chat_model(settings.model_path, cpu=settings.cpu, precision=settings.precision,
                            use_template=not settings.no_template, model_type=settings.model_type,
                            demo_dir=settings.demo_dir, lora_path=settings.lora_path)
    if not use_batching(settings.batching):
        if settings.compile:
            model.use_static_cache()
        return model
    from llm.batching import BatchedHFChatModel

    device = model.model.device.type
    try:
        batched = BatchedHFChatModel.wrap(model, max_memory_percent=settings.kv_cache_memory,
                                          max_sequences=settings.max_queue, max_batch_tokens=settings.max_batch_tokens,
                                          compile_level=1 if settings.compile else 0,
                                          plain_when_alone=plain_when_alone(settings.batching, device))
    except Exception:  # noqa: BLE001 - an unsupported model still serves, one request at a time
        logger.exception("continuous batching could not start; serving one request at a time")
        return model
    alone = "; a request alone: plain generate" if batched.plain_when_alone else ""
    if batched.kv_budget is None:
        logger.info("continuous batching on (KV cache: --kv-cache-memory %s of the device's memory%s)",
                    settings.kv_cache_memory, alone)
    else:
        budget = batched.kv_budget
        logger.info("continuous batching on (KV cache: %d tokens, %.0f MiB%s%s)", budget.tokens, budget.bytes / 2**20,
                    ", capped by the device: longer waits when busy" if budget.capped else "", alone)
    return batched


def _check_backend(settings: Any) -> list[str]:
    if settings.kv_cache_memory is not None and not 0 < settings.kv_cache_memory <= 1:
        return [f"--kv-cache-memory must be in (0, 1], got {settings.kv_cache_memory}"]
    return []


BACKEND = Backend(
    name="transformers",
    summary="a local transformers model (--model-path), continuous batching per --batching",
    load=load_backend,
    check=_check_backend,
    flags=(
        Flag("batching", dict(choices=["auto", "on", "off"], help=(
            "serve concurrent requests in shared forward passes (transformers' continuous batching); "
            "auto = on; on a CPU a request alone is served by plain generate (faster there) until "
            "another comes; on = every request batched; off = one request at a time"))),
        Flag("kv-cache-memory", dict(type=float, metavar="FRACTION",
                                     help="size the batched KV cache as this share (0-1] of the device's memory "
                                          "(free GPU memory; total RAM on CPU) instead of from --max-queue full "
                                          "contexts (the default)")),
        Flag("max-batch-tokens", dict(type=int, help="most tokens in one batched forward pass")),
        Flag("compile", dict(action="store_true",
                             help="static KV cache + torch.compile (GPU; with --batching, transformers' compiled "
                                  "paths)")),
    ),
)
