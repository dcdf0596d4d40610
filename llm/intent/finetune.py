"""Fine-tune a chat model on intent data: full, LoRA or QLoRA, with transformers' ``Trainer`` and peft.

Defaults are the published recommendations of PAI's LLM-based intent recognition
solution (https://help.aliyun.com/zh/pai/use-cases/llm-based-intent-recognition-solution):
LoRA rank 64, alpha 16, learning rate 3e-4, 5 epochs; full fine-tuning 5e-5,
3 epochs; a global batch of 256 (per-device batch x gradient accumulation x GPUs),
reduced for small data sets; a sequence length taken from the data.

Each example becomes the chat ``[system: SYSTEM_PROMPT, user: instruction,
assistant: output]`` rendered with the model's chat template (the same template
the server uses, see :func:`llm.loader.load_chat_model`); the loss is on the
assistant's tokens only -- the output and the template's end-of-turn token
(``<|im_end|>`` for Qwen), so the tuned model learns to stop after the call.

Why ``Trainer`` and not a hand-written loop: it already does gradient
accumulation, mixed precision, multi-GPU (``torchrun``/``accelerate launch``),
gradient checkpointing, the learning-rate schedule, the progress bar and the loss
log, and peft models plug straight into it.

What is written to ``output_dir``:

* ``lora`` / ``qlora``: the peft adapter (``adapter_config.json``,
  ``adapter_model.safetensors``) and the tokenizer -- serve it with
  ``--model-path <base> --lora-path <output_dir>``; with ``merge`` also
  ``output_dir/merged``, a full model for ``--model-path`` alone;
* ``full``: the whole model and tokenizer -- serve it with ``--model-path``;
* always ``training_log.json`` (the Trainer's log history: loss, learning rate,
  epoch per logging step) and ``intent_finetune.json`` (the settings used).
"""
from __future__ import annotations

import gc
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from llm.base import ModelLoadError
from llm.intent.data import SYSTEM_PROMPT, IntentExample

logger = logging.getLogger(__name__)

METHODS = ("full", "lora", "qlora")
#: Published defaults per method: learning rate and epochs.
METHOD_DEFAULTS = {
    "full": {"learning_rate": 5e-5, "epochs": 3.0},
    "lora": {"learning_rate": 3e-4, "epochs": 5.0},
    "qlora": {"learning_rate": 3e-4, "epochs": 5.0},
}
LORA_RANK = 64
LORA_ALPHA = 16
GLOBAL_BATCH_SIZE = 256
#: Our rule for small data: the global batch is cut so that an epoch has at least this many optimizer steps.
MIN_STEPS_PER_EPOCH = 8
#: Per-device batch when none is given (our choice; gradient accumulation makes up the rest).
PER_DEVICE_BATCH_SIZE = 8
IGNORE_INDEX = -100  # label value the loss skips (transformers' convention)
TRAINING_LOG = "training_log.json"
SETTINGS_FILE = "intent_finetune.json"
MERGED_SUBDIR = "merged"


class FinetuneError(RuntimeError):
    """Fine-tuning cannot run as asked; the message names the fix."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tuning run; ``None`` means "the published default" (module docstring).

    Attributes:
        method: ``"full"``, ``"lora"`` or ``"qlora"`` (4-bit base, CUDA GPU and bitsandbytes only).
        epochs: passes over the data (default 3 full, 5 LoRA/QLoRA).
        learning_rate: peak learning rate, linear decay to 0 (default 5e-5 full, 3e-4 LoRA/QLoRA).
        global_batch_size: examples per optimizer step over all devices (default
            :func:`default_global_batch_size`).
        per_device_batch_size: examples per device per forward pass (default
            min(8, global batch)); gradient accumulation makes up the global batch.
        max_length: most tokens per example (default: the next power of two >= the
            longest example); longer examples are dropped with a warning.
        lora_rank / lora_alpha / lora_dropout: the LoRA ``r``, ``lora_alpha`` (64, 16
            published) and dropout (0.05, our choice).
        lora_target_modules: peft ``target_modules``; ``"all-linear"`` (default) is every
            linear layer but the output layer.
        lora_modules_to_save: modules trained in full and saved with the adapter
            (peft ``modules_to_save``), e.g. ``("lm_head",)``; empty by default.
        merge: LoRA/QLoRA only: also write a merged full model to ``output_dir/merged``.
        system_prompt: the system message of every example.
        cpu: train on the CPU even when a GPU is present.
        precision: ``auto``/``fp32``/``fp16``/``bf16`` as in :func:`llm.loader.resolve_dtype`.
        gradient_checkpointing: trade compute for GPU memory.
        warmup_ratio: fraction of the steps with a linear warm-up (0 = none).
        seed: seed of the data order and the adapter's initial weights.
        model_type: chat template family for a tokenizer without one (``--model-type``).
        trust_remote_code: passed to ``from_pretrained``.
        logging_steps: log the loss every this many optimizer steps (default: about 50
            log points over the run).

    Raises:
        ValueError: from ``__post_init__`` for an unknown method or a non-positive
            number; the message names the field.
    """

    method: str = "lora"
    epochs: float | None = None
    learning_rate: float | None = None
    global_batch_size: int | None = None
    per_device_batch_size: int | None = None
    max_length: int | None = None
    lora_rank: int = LORA_RANK
    lora_alpha: int = LORA_ALPHA
    lora_dropout: float = 0.05
    lora_target_modules: str | tuple[str, ...] = "all-linear"
    lora_modules_to_save: tuple[str, ...] = ()
    merge: bool = False
    system_prompt: str = SYSTEM_PROMPT
    cpu: bool = False
    precision: str = "auto"
    gradient_checkpointing: bool = False
    warmup_ratio: float = 0.0
    seed: int = 42
    model_type: str | None = None
    trust_remote_code: bool = False
    logging_steps: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown fine-tuning method {self.method!r}; choose one of: {', '.join(METHODS)}")
        for name in ("epochs", "learning_rate", "global_batch_size", "per_device_batch_size", "max_length",
                     "logging_steps"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.lora_rank < 1 or self.lora_alpha <= 0:
            raise ValueError(f"lora_rank must be >= 1 and lora_alpha > 0, got {self.lora_rank}, {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1 or not 0 <= self.warmup_ratio < 1:
            raise ValueError("lora_dropout and warmup_ratio must be in [0, 1)")
        if self.merge and self.method == "full":
            raise ValueError("merge applies to lora/qlora; a full fine-tune already is a whole model")
        if isinstance(self.lora_modules_to_save, str):
            object.__setattr__(self, "lora_modules_to_save", (self.lora_modules_to_save,))


@dataclass(frozen=True)
class FinetuneResult:
    """What :func:`finetune` did.

    Attributes:
        output_dir: the adapter (LoRA/QLoRA) or model (full) folder.
        merged_dir: the merged full model, when ``merge`` was asked, else ``None``.
        method, epochs, learning_rate: as used.
        examples: examples trained on (after dropping too-long ones).
        max_length: the sequence length in tokens.
        global_batch_size, per_device_batch_size, gradient_accumulation_steps: as used.
        steps: optimizer steps run.
        losses: the logged training losses, in order (mean token cross-entropy, nats).
        runtime_s: wall-clock seconds of the training loop.
    """

    output_dir: Path
    merged_dir: Path | None
    method: str
    epochs: float
    learning_rate: float
    examples: int
    max_length: int
    global_batch_size: int
    per_device_batch_size: int
    gradient_accumulation_steps: int
    steps: int
    losses: tuple[float, ...] = field(default_factory=tuple)
    runtime_s: float = 0.0


def next_power_of_two(n: int) -> int:
    """The smallest power of two >= ``n`` (``n`` >= 1): 37 -> 64, 64 -> 64, 65 -> 128.

    Raises:
        ValueError: ``n`` < 1.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return 1 << (n - 1).bit_length()


def default_global_batch_size(n_examples: int, *, published: int = GLOBAL_BATCH_SIZE) -> int:
    """The published global batch (256), reduced for small data sets.

    Our reduction rule: the largest power of two <= ``n_examples / MIN_STEPS_PER_EPOCH``
    (so an epoch has at least 8 optimizer steps), at least 1 and at most ``published``.
    2,048 examples or more -> 256; 1,000 -> 64; 100 -> 8; 20 -> 2.
    """
    target = max(1, n_examples // MIN_STEPS_PER_EPOCH)
    return min(published, 1 << (target.bit_length() - 1))


def render_prompt(tokenizer: Any, instruction: str, *, system_prompt: str = SYSTEM_PROMPT,
                  chat_template: str | None = None) -> str:
    """The chat-template text the model continues for ``instruction`` (generation prompt included)."""
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": instruction}]
    return tokenizer.apply_chat_template(messages, chat_template=chat_template, add_generation_prompt=True,
                                         tokenize=False)


def answer_text(tokenizer: Any, example: IntentExample, *, system_prompt: str = SYSTEM_PROMPT,
                chat_template: str | None = None) -> str:
    """The assistant's part of the rendered example: the output and the template's end-of-turn marker.

    Rendered as the whole conversation minus the prompt of :func:`render_prompt`, with
    trailing whitespace cut (``"play_music()<|im_end|>"`` for ChatML).  When the
    template does not render the prompt as a prefix of the conversation, falls back
    to ``output + tokenizer.eos_token``.
    """
    prompt = render_prompt(tokenizer, example.instruction, system_prompt=system_prompt, chat_template=chat_template)
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": example.instruction},
                {"role": "assistant", "content": example.output}]
    full = tokenizer.apply_chat_template(messages, chat_template=chat_template, tokenize=False)
    if full.startswith(prompt) and example.output in full[len(prompt):]:
        return full[len(prompt):].rstrip()
    return example.output + (tokenizer.eos_token or "")


def encode_example(tokenizer: Any, example: IntentExample, *, system_prompt: str = SYSTEM_PROMPT,
                   chat_template: str | None = None) -> dict[str, list[int]]:
    """Token ids of one training example, loss on the answer only.

    Returns:
        ``{"input_ids", "attention_mask", "labels"}``, lists of equal length (tokens);
        ``labels`` is :data:`IGNORE_INDEX` (-100) over the prompt and the answer's ids
        over :func:`answer_text`.  No special tokens are added beyond the template's own
        (as :class:`llm.hf.HFChatModel` encodes templated prompts).
    """
    prompt = render_prompt(tokenizer, example.instruction, system_prompt=system_prompt, chat_template=chat_template)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer_text(tokenizer, example, system_prompt=system_prompt, chat_template=chat_template),
                           add_special_tokens=False)["input_ids"]
    input_ids = list(prompt_ids) + list(answer_ids)
    return {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + list(answer_ids),
    }


def _check_qlora(cpu: bool) -> None:
    """Refuse QLoRA where it cannot run: no CUDA GPU, or no bitsandbytes."""
    import torch

    if cpu or not torch.cuda.is_available():
        raise FinetuneError(
            "QLoRA trains on a 4-bit (bitsandbytes) base model, which needs a CUDA GPU; none is used here"
            + (" (--cpu was given)" if cpu else "")
            + ": use --method lora (or full) on this machine, or run QLoRA on a GPU machine"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise FinetuneError(
            "QLoRA needs the bitsandbytes package: pip install 'chatllm-webui[qlora]' (or pip install bitsandbytes)"
        ) from exc


def _base_path(model_path: str | Path) -> str:
    """A local folder as an absolute path (recorded in the adapter as its base), a hub id as is."""
    path = Path(model_path).expanduser()
    return str(path.resolve()) if path.exists() else str(model_path)


def _train_dtypes(method: str, precision: str, device: str) -> tuple[Any, dict[str, bool]]:
    """The dtype to load the weights in and the ``TrainingArguments`` mixed-precision flags."""
    import torch

    from llm.loader import resolve_dtype

    dtype = resolve_dtype(precision, device)
    if device == "cpu":
        return dtype, {}
    if dtype == torch.bfloat16:
        return dtype, {"bf16": True}
    if dtype == torch.float16:
        # fp16 weights cannot be trained by the AdamW/GradScaler path: full fine-tuning keeps
        # fp32 weights with fp16 autocast; LoRA keeps the frozen base in fp16 (adapters are fp32).
        return (torch.float32 if method == "full" else dtype), {"fp16": True}
    return dtype, {}


def _load_for_training(path: str, config: FinetuneConfig, device: str) -> tuple[Any, Any, str | None, dict]:
    """Load tokenizer and (peft-wrapped) model; return ``(model, tokenizer, chat_template, precision_flags)``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    from llm.loader import load_config, pick_template

    hf_config, local_only = load_config(path, config.trust_remote_code)
    common = {"local_files_only": local_only, "trust_remote_code": config.trust_remote_code}
    dtype, flags = _train_dtypes(config.method, config.precision, device)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if config.method == "qlora":
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if flags.get("bf16") else torch.float16
        kwargs.update(
            quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                   bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute),
            device_map={"": int(os.environ.get("LOCAL_RANK", "0"))},  # this process's GPU under torchrun
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **common)
        model = AutoModelForCausalLM.from_pretrained(path, config=hf_config, **kwargs, **common)
    except Exception as exc:  # noqa: BLE001 -- any failure means "not a usable model"
        raise ModelLoadError(f"cannot load the model to fine-tune from {path!r} ({exc!r}): check --model-path") from exc
    template = pick_template(tokenizer, hf_config, config.model_type)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model.config.use_cache = False  # no KV cache while training (and needed with gradient checkpointing)
    if config.method == "full":
        return model, tokenizer, template, flags
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if config.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    elif config.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings: let checkpointed blocks see a grad-requiring input
    target = config.lora_target_modules
    lora = LoraConfig(
        r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=target if isinstance(target, str) else list(target),
        modules_to_save=list(config.lora_modules_to_save) or None, task_type="CAUSAL_LM",
    )
    set_seed(config.seed)  # the adapter's initial weights
    model = get_peft_model(model, lora)
    trainable, total = model.get_nb_trainable_parameters()
    logger.info("LoRA: %d trainable parameters of %d (%.2f%%)", trainable, total, 100 * trainable / total)
    return model, tokenizer, template, flags


def merge_adapter(base_path: str | Path, adapter_dir: str | Path, out_dir: str | Path, *, cpu: bool = False,
                  precision: str = "auto", trust_remote_code: bool = False) -> Path:
    """Merge a LoRA adapter into its (unquantised) base model and save a full model folder.

    Args:
        base_path: the base model (folder or hub id).
        adapter_dir: the peft adapter folder; its tokenizer is saved with the model.
        out_dir: the folder to write (``--model-path`` serves it).
        cpu / precision: where and in which dtype to load the base (as the server would).
        trust_remote_code: passed to ``from_pretrained``.

    Returns:
        ``out_dir``.

    Raises:
        ModelLoadError: the base model or the adapter cannot be loaded.
    """
    from transformers import AutoTokenizer

    from llm.loader import load_chat_model

    chat = load_chat_model(str(base_path), cpu=cpu, precision=precision, lora_path=adapter_dir,
                           trust_remote_code=trust_remote_code)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chat.model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(out_dir)
    return out_dir


def _checkpointing_flag(enabled: bool) -> dict[str, bool]:
    """``TrainingArguments`` kwargs for gradient checkpointing: ``activation_checkpointing`` where this
    transformers has it (the newer name), else ``gradient_checkpointing``; nothing when off."""
    import dataclasses

    from transformers import TrainingArguments

    if not enabled:
        return {}
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": True}


def _losses(log_history: list[dict]) -> tuple[float, ...]:
    """The training losses from ``trainer.state.log_history``."""
    return tuple(float(entry["loss"]) for entry in log_history if "loss" in entry)


def finetune(
    model_path: str | Path,
    examples: Sequence[IntentExample],
    output_dir: str | Path,
    config: FinetuneConfig | None = None,
    *,
    callbacks: list | None = None,
) -> FinetuneResult:
    """Fine-tune ``model_path`` on ``examples`` and save the result to ``output_dir``.

    Args:
        model_path: base chat model, local folder or hub id.
        examples: the training set (see :mod:`llm.intent.data`).
        output_dir: where to save (module docstring); created if missing.
        config: settings; ``None`` is :class:`FinetuneConfig` ``()`` (LoRA, published defaults).
        callbacks: extra ``transformers.TrainerCallback`` objects.

    Returns:
        A :class:`FinetuneResult` with the losses and the folders written.

    Raises:
        FinetuneError: QLoRA without a CUDA GPU or bitsandbytes; no example fits ``max_length``.
        ModelLoadError: the model cannot be loaded.
        ValueError: no examples.
    """
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from llm.loader import resolve_device

    config = config or FinetuneConfig()
    if not examples:
        raise ValueError("no training examples")
    if config.method == "qlora":
        _check_qlora(config.cpu)
    device = "cuda" if config.method == "qlora" else resolve_device(config.cpu)
    base = _base_path(model_path)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    model, tokenizer, template, precision_flags = _load_for_training(base, config, device)
    encoded = [encode_example(tokenizer, e, system_prompt=config.system_prompt, chat_template=template)
               for e in examples]
    longest = max(len(e["input_ids"]) for e in encoded)
    max_length = config.max_length or next_power_of_two(longest)
    dataset = [e for e in encoded if len(e["input_ids"]) <= max_length]
    if len(dataset) < len(encoded):
        logger.warning("%d example(s) longer than %d tokens are left out", len(encoded) - len(dataset), max_length)
    if not dataset:
        raise FinetuneError(f"no example fits in max_length={max_length} tokens (the longest has {longest}): "
                            "raise --max-length or leave it out")

    method_defaults = METHOD_DEFAULTS[config.method]
    epochs = config.epochs or method_defaults["epochs"]
    learning_rate = config.learning_rate or method_defaults["learning_rate"]
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    global_batch = config.global_batch_size or default_global_batch_size(len(dataset))
    per_device = min(config.per_device_batch_size or PER_DEVICE_BATCH_SIZE, max(1, global_batch // world_size))
    accumulation = max(1, math.ceil(global_batch / (per_device * world_size)))
    steps_per_epoch = max(1, math.ceil(len(dataset) / (per_device * world_size * accumulation)))
    total_steps = math.ceil(steps_per_epoch * epochs)
    logging_steps = config.logging_steps or max(1, total_steps // 50)
    logger.info(
        "fine-tuning %s (%s) on %d examples: max_length %d, global batch %d (%d per device x %d accumulation x %d "
        "device(s)), %g epochs (~%d steps), learning rate %g",
        base, config.method, len(dataset), max_length, per_device * accumulation * world_size, per_device,
        accumulation, world_size, epochs, total_steps, learning_rate,
    )

    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=config.warmup_ratio,
        logging_steps=logging_steps,
        logging_first_step=True,
        save_strategy="no",
        report_to="none",
        seed=config.seed,
        use_cpu=device == "cpu",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=False,
        **precision_flags,
        **_checkpointing_flag(config.gradient_checkpointing),
    )
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX,
                                      pad_to_multiple_of=8 if device != "cpu" else None)
    trainer = Trainer(model=model, args=args, data_collator=collator, train_dataset=dataset,
                      processing_class=tokenizer, callbacks=callbacks)
    started = time.monotonic()
    trainer.train()
    runtime = time.monotonic() - started

    if template is not None:
        tokenizer.chat_template = template  # the fallback template the server would pick, made explicit
    model.config.use_cache = True
    trainer.save_model(str(output_dir))  # the adapter (peft) or the whole model, and the tokenizer; rank 0 only
    main_process = trainer.is_world_process_zero()
    log_history = trainer.state.log_history
    result = FinetuneResult(
        output_dir=output_dir, merged_dir=None, method=config.method, epochs=epochs, learning_rate=learning_rate,
        examples=len(dataset), max_length=max_length, global_batch_size=per_device * accumulation * world_size,
        per_device_batch_size=per_device, gradient_accumulation_steps=accumulation,
        steps=trainer.state.global_step, losses=_losses(log_history), runtime_s=runtime,
    )
    if main_process:
        tokenizer.save_pretrained(str(output_dir))
        (output_dir / TRAINING_LOG).write_text(json.dumps(log_history, indent=1), encoding="utf-8")
        settings = {"base_model": base, "config": asdict(config), "result": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}}
        (output_dir / SETTINGS_FILE).write_text(json.dumps(settings, ensure_ascii=False, indent=1), encoding="utf-8")

    del trainer, model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if config.merge and main_process:
        merged = merge_adapter(base, output_dir, output_dir / MERGED_SUBDIR, cpu=config.cpu or device == "cpu",
                               precision=config.precision, trust_remote_code=config.trust_remote_code)
        result = replace(result, merged_dir=merged)
    first, last = (f"{result.losses[0]:.4f}", f"{result.losses[-1]:.4f}") if result.losses else ("?", "?")
    logger.info("saved to %s%s; training loss %s -> %s", output_dir,
                f" (merged model in {result.merged_dir})" if result.merged_dir else "", first, last)
    return result
