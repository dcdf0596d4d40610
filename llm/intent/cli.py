"""``python -m llm.intent convert|check|finetune|evaluate``: the intent-recognition loop on the command line.

Exit status: 0 on success; 1 when a command ran but its result is not usable
(nothing converted, ``check --strict`` with warnings); 2 on bad input (unreadable
data, a model that cannot be loaded, a server that cannot be reached, QLoRA
without a GPU), with the reason on stderr.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from llm.intent.data import SYSTEM_PROMPT

#: Environment variable read for ``--api-key`` when the flag is not given (the server's token variable).
API_KEY_ENV = "CHATLLM_API_TOKEN"

_EPILOG = "Data format, defaults and the whole loop: docs/intent.md"


def _convert(args: argparse.Namespace) -> int:
    from llm.intent.data import save_examples
    from llm.intent.manifest import convert_manifest_file

    examples, read, skipped = [], 0, 0
    for manifest in args.manifests:
        result = convert_manifest_file(manifest, label_key=args.label_key)
        examples += result.examples
        read += result.lines
        skipped += len(result.skipped)
        for bad in result.skipped:
            print(f"{manifest}: skipped {bad}", file=sys.stderr)
    if not examples:
        print(f"error: no example converted from {read} line(s)", file=sys.stderr)
        return 1
    save_examples(examples, args.output)
    print(f"wrote {len(examples)} example(s) to {args.output} ({read} line(s) read, {skipped} skipped)")
    return 0


def _check(args: argparse.Namespace) -> int:
    from llm.intent.check import check_examples, format_report
    from llm.intent.data import load_examples

    report = check_examples(load_examples(args.data), min_per_intent=args.min_per_intent,
                            max_imbalance=args.max_imbalance, min_multi_turn_ratio=args.min_multi_turn_ratio)
    print(format_report(report))
    return 1 if args.strict and report.warnings else 0


def _finetune(args: argparse.Namespace) -> int:
    from llm.intent.data import load_examples
    from llm.intent.finetune import FinetuneConfig, finetune

    targets = args.lora_target_modules
    config = FinetuneConfig(
        method=args.method, epochs=args.epochs, learning_rate=args.learning_rate,
        global_batch_size=args.global_batch_size, per_device_batch_size=args.per_device_batch_size,
        max_length=args.max_length, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        lora_target_modules=targets if targets == "all-linear" else tuple(t for t in targets.split(",") if t),
        lora_modules_to_save=tuple(m for m in (args.lora_modules_to_save or "").split(",") if m),
        merge=args.merge, system_prompt=args.system_prompt, cpu=args.cpu, precision=args.precision,
        gradient_checkpointing=args.gradient_checkpointing, warmup_ratio=args.warmup_ratio, seed=args.seed,
        model_type=args.model_type, trust_remote_code=args.trust_remote_code,
    )
    result = finetune(args.model_path, load_examples(args.train_file), args.output_dir, config)
    first, last = (result.losses[0], result.losses[-1]) if result.losses else (float("nan"), float("nan"))
    print(f"trained {result.steps} steps on {result.examples} examples in {result.runtime_s:.0f} s; "
          f"training loss {first:.4f} -> {last:.4f}")
    if result.method == "full":
        print(f"serve it:  python run.py --model-path {result.output_dir}")
    else:
        print(f"serve it:  python run.py --model-path {args.model_path} --lora-path {result.output_dir}")
        if result.merged_dir:
            print(f"       or: python run.py --model-path {result.merged_dir}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from llm.intent.data import load_examples
    from llm.intent.evaluate import evaluate_predictions, format_report
    from llm.intent.predict import OpenAIPredictor, PaiEasPredictor, load_local_predictor, predict

    examples = load_examples(args.test_file)
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    common = {"system_prompt": args.system_prompt, "max_new_tokens": args.max_new_tokens}
    if args.pai_url:
        predictor = PaiEasPredictor(args.pai_url, api_key=api_key, timeout=args.timeout, **common)
    elif args.openai_url:
        predictor = OpenAIPredictor(args.openai_url, model=args.model, api_key=api_key, timeout=args.timeout,
                                    **common)
    else:
        predictor = load_local_predictor(args.model_path, lora_path=args.lora_path, cpu=args.cpu,
                                         precision=args.precision, model_type=args.model_type,
                                         trust_remote_code=args.trust_remote_code, **common)
    try:
        report = evaluate_predictions(predict(examples, predictor))
    finally:
        if hasattr(predictor, "close"):
            predictor.close()
    print(format_report(report, max_misses=args.max_misses))
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(report.to_dict(), ensure_ascii=False, indent=1), encoding="utf-8")
        print(f"report written to {args.report}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cpu", action="store_true", help="use the CPU even when a GPU is present")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="weights' dtype; auto = bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU")
    p.add_argument("--model-type", default=None,
                   help="chat template family for a tokenizer without one (chatml, llama2, llama3, plain)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (trusted models only)")
    p.add_argument("--system-prompt", default=SYSTEM_PROMPT, help="system prompt (default: the published one)")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m llm.intent``: one sub-command per step."""
    from llm.intent.check import MAX_IMBALANCE, MIN_MULTI_TURN_RATIO, MIN_PER_INTENT
    from llm.intent.finetune import LORA_ALPHA, LORA_RANK, METHODS
    from llm.intent.predict import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TIMEOUT_S

    parser = argparse.ArgumentParser(
        prog="python -m llm.intent",
        description="Intent recognition: convert labelled data, check it, fine-tune a chat model, evaluate it.",
        epilog=_EPILOG)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{convert,check,finetune,evaluate}")

    p = sub.add_parser(
        "convert", help="iTAG manifest(s) (JSON Lines) -> training JSON", epilog=_EPILOG, parents=[common],
        description='Convert exported iTAG manifests (either export shape) to a JSON list of {"instruction", '
        '"output"}. Bad lines are reported with their numbers and skipped.')
    p.add_argument("manifests", nargs="+", metavar="MANIFEST", help="exported .manifest (JSON Lines) file(s)")
    p.add_argument("-o", "--output", required=True, help="the JSON file to write")
    p.add_argument("--label-key", default=None,
                   help="the 'label-<id>' key to read (default: the first 'label-' key that holds a label)")
    p.set_defaults(run=_convert)

    p = sub.add_parser(
        "check", help="per-intent counts and warnings against the published data guidance", epilog=_EPILOG,
        parents=[common], description="Count examples per intent and warn where PAI's data guidance is not met "
        "(examples per intent, balance, multi-turn share and coverage).")
    p.add_argument("data", help="training JSON file")
    p.add_argument("--min-per-intent", type=_positive_int, default=MIN_PER_INTENT,
                   help=f"warn below this many examples per intent (default {MIN_PER_INTENT}; guidance: 50-100)")
    p.add_argument("--max-imbalance", type=_positive_float, default=MAX_IMBALANCE,
                   help="warn when the largest intent has more than this times the smallest "
                   f"(default {MAX_IMBALANCE:g})")
    p.add_argument("--min-multi-turn-ratio", type=float, default=MIN_MULTI_TURN_RATIO,
                   help=f"warn when multi-turn examples are fewer than this share of single-turn ones "
                   f"(default {MIN_MULTI_TURN_RATIO:g})")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when there are warnings")
    p.set_defaults(run=_check)

    p = sub.add_parser(
        "finetune", help="full / LoRA / QLoRA fine-tuning with the published defaults", epilog=_EPILOG,
        parents=[common], description="Fine-tune a chat model on intent data (transformers Trainer + peft). "
        "Defaults: LoRA rank 64, alpha 16, lr 3e-4, 5 epochs; full lr 5e-5, 3 epochs; global batch 256 reduced "
        "for small data; sequence length from the data.")
    p.add_argument("--model-path", required=True, help="base chat model: local folder or hub id")
    p.add_argument("--train-file", required=True, help="training JSON file")
    p.add_argument("--output-dir", required=True, help="folder for the adapter (lora/qlora) or model (full)")
    p.add_argument("--method", default="lora", choices=METHODS, help="default lora; qlora needs a CUDA GPU")
    p.add_argument("--epochs", type=_positive_float, default=None, help="default 5 (LoRA/QLoRA), 3 (full)")
    p.add_argument("--learning-rate", type=_positive_float, default=None, help="default 3e-4 (LoRA/QLoRA), 5e-5 (full)")
    p.add_argument("--global-batch-size", type=_positive_int, default=None,
                   help="examples per optimizer step (default 256, reduced so an epoch has >= 8 steps)")
    p.add_argument("--per-device-batch-size", type=_positive_int, default=None,
                   help="examples per forward pass (default min(8, global batch)); accumulation makes up the rest")
    p.add_argument("--max-length", type=_positive_int, default=None,
                   help="tokens per example (default: next power of two >= the longest example)")
    p.add_argument("--lora-rank", type=_positive_int, default=LORA_RANK, help=f"LoRA r (default {LORA_RANK})")
    p.add_argument("--lora-alpha", type=_positive_int, default=LORA_ALPHA, help=f"LoRA alpha (default {LORA_ALPHA})")
    p.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout (default 0.05)")
    p.add_argument("--lora-target-modules", default="all-linear",
                   help="comma-separated module names, or all-linear (default: every linear layer but the output)")
    p.add_argument("--lora-modules-to-save", default=None,
                   help="comma-separated modules trained in full and saved with the adapter (e.g. lm_head)")
    p.add_argument("--merge", action="store_true", help="lora/qlora: also write a merged model to OUTPUT_DIR/merged")
    p.add_argument("--gradient-checkpointing", action="store_true", help="save GPU memory at some speed")
    p.add_argument("--warmup-ratio", type=float, default=0.0, help="share of steps with linear warm-up (default 0)")
    p.add_argument("--seed", type=int, default=42)
    _model_flags(p)
    p.set_defaults(run=_finetune)

    p = sub.add_parser(
        "evaluate", help="intent and parameter accuracy of a model or a running server", epilog=_EPILOG,
        parents=[common], description="Score a model on a test JSON file (greedy decoding): intent accuracy, "
        "parameter accuracy, a per-intent table and the misses. The model is a local folder (optionally + a LoRA "
        "adapter) or a running server (PAI-EAS or OpenAI API).")
    p.add_argument("--test-file", required=True, help="test JSON file")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--model-path", help="local model folder or hub id (loaded here)")
    where.add_argument("--pai-url", help="PAI-EAS ChatLLM endpoint, e.g. http://127.0.0.1:8000/")
    where.add_argument("--openai-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000 (or .../v1)")
    p.add_argument("--lora-path", default=None, help="with --model-path: a LoRA adapter to apply")
    p.add_argument("--model", default=None, help="with --openai-url: model name (default: the first /v1/models)")
    p.add_argument("--api-key", default=None, help=f"server access token (default: ${API_KEY_ENV})")
    p.add_argument("--timeout", type=_positive_float, default=DEFAULT_TIMEOUT_S, help="seconds per request")
    p.add_argument("--max-new-tokens", type=_positive_int, default=DEFAULT_MAX_NEW_TOKENS,
                   help=f"most tokens per answer (default {DEFAULT_MAX_NEW_TOKENS})")
    p.add_argument("--report", default=None, help="write the scores, misses and all predictions to this JSON file")
    p.add_argument("--max-misses", type=int, default=50, help="misses printed (default 50)")
    _model_flags(p)
    p.set_defaults(run=_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sub-command; return the exit status (module docstring)."""
    from llm.base import GenerationError, ModelLoadError
    from llm.intent.data import IntentDataError
    from llm.intent.finetune import FinetuneError
    from llm.intent.predict import PredictionError

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "lora_path", None) and not getattr(args, "model_path", None):
        parser.error("--lora-path needs --model-path")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "DEBUG":
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    try:
        return args.run(args)
    except (IntentDataError, ModelLoadError, FinetuneError, PredictionError, GenerationError, ValueError) as exc:
        print(f"python -m llm.intent {args.command}: error: {exc}", file=sys.stderr)
        return 2
