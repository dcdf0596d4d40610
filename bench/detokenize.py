"""What streaming an answer's text costs per token: decoding every token so far at each new
token (what the batched path did) against :class:`llm.hf.IncrementalDecoder` (the tokenizers
library's ``DecodeStream``), side by side, at several answer lengths.  Under batching this
work runs in the request threads and holds the GIL the generation loop needs.

    python bench/detokenize.py                 # the demo model's tokenizer (Qwen2.5's)
    python bench/detokenize.py --model-path FOLDER
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, write_result  # noqa: E402

#: Mixed Chinese and English text, repeated to the longest answer measured.
TEXT = ("DeepSpeed 的 ZeRO 把优化器状态、梯度和参数切分到各个数据并行进程上。 ZeRO stage 3 partitions the "
        "parameters too, so a 7B model fits on GPUs that could not hold it whole; 通信量与 stage 2 相近。\n")


def per_token_us(tokenizer, ids: list[int], incremental: bool) -> float:
    """Microseconds per token to stream ``ids`` one token at a time."""
    from llm.hf import IncrementalDecoder

    start = time.perf_counter()
    if incremental:
        decoder = IncrementalDecoder(tokenizer)
        for i, token in enumerate(ids):
            decoder.step([token], final=i == len(ids) - 1)
    else:
        sent = ""
        for i in range(1, len(ids) + 1):
            text = tokenizer.decode(ids[:i], skip_special_tokens=True)
            if not text.endswith("\ufffd"):
                sent = text
        assert sent
    return (time.perf_counter() - start) / len(ids) * 1e6


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", help="a model folder whose tokenizer to use (default: the demo model)")
    p.add_argument("--lengths", default="256,1024,4096", help="answer lengths in tokens, comma-separated")
    p.add_argument("--out", help="also write the JSON result here")
    args = p.parse_args(argv)
    from transformers import AutoTokenizer

    from llm.demo import build_demo_model

    tokenizer = AutoTokenizer.from_pretrained(args.model_path or str(build_demo_model()))
    lengths = [int(n) for n in args.lengths.split(",")]
    ids = tokenizer.encode(TEXT * (max(lengths) // 20 + 1), add_special_tokens=False)
    rows = []
    for n in lengths:
        full = per_token_us(tokenizer, ids[:n], incremental=False)
        incremental = per_token_us(tokenizer, ids[:n], incremental=True)
        rows.append({"answer_tokens": n, "decode_all_us_per_token": round(full, 1),
                     "incremental_us_per_token": round(incremental, 1), "speedup": round(full / incremental, 1)})
        print(f"{n:>6} tokens: decode all {full:8.1f} µs/token   incremental {incremental:6.1f} µs/token")
    result = {"benchmark": "detokenize", "machine": machine(), "tokenizer": args.model_path or "demo (Qwen2.5)",
              "rows": rows, "command": "python bench/detokenize.py " + " ".join(argv or sys.argv[1:])}
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
