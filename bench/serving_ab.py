"""Two or more server modes side by side, taking turns request by request, so a shared
machine's load hits each alike: one ``run.py --api-only`` per ``--batching`` value, all up at
once, and rounds of ``--users`` concurrent OpenAI streams sent to each in turn (the order
reversed every other round).  Finer than ``bench/serving.py`` for small differences, such as
one stream under ``off`` against ``auto``.

    python bench/serving_ab.py --users 1 --rounds 10              # demo model, off vs auto
    python bench/serving_ab.py --users 8 --batching off,auto,on --model-path FOLDER
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import types
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, write_result  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", help="a model folder (default: the demo model)")
    p.add_argument("--batching", default="off,auto", help="modes to compare, comma-separated")
    p.add_argument("--users", type=int, default=1, help="concurrent streams per round")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--out", help="also write the JSON result here")
    args = p.parse_args(argv)
    from bench.serving import make_prompt, served, start_server
    from llm.demo import build_demo_model
    from llm.loader import load_chat_model

    path = args.model_path or str(build_demo_model())
    messages = make_prompt(load_chat_model(path, cpu=True), args.prompt_tokens)
    server_args = types.SimpleNamespace(stream_interval_ms=10, new_tokens=args.new_tokens, kv_cache_memory=None,
                                        cpu=True)
    modes = args.batching.split(",")
    servers = {}
    try:
        for mode in modes:
            servers[mode] = start_server(path, server_args, args.users, mode)
        for url, _ in servers.values():  # warm-up
            asyncio.run(served(url, messages, args.new_tokens, args.users))
        runs: dict[str, list[float]] = {mode: [] for mode in modes}
        for turn in range(args.rounds):
            for mode in (modes if turn % 2 == 0 else modes[::-1]):
                result = asyncio.run(served(servers[mode][0], messages, args.new_tokens, args.users))
                runs[mode].append(result["total_tps"])
    finally:
        for _, proc in servers.values():
            proc.kill()
    rows = {mode: {"total_tps": [round(x, 1) for x in xs], "median": round(statistics.median(xs), 1)}
            for mode, xs in runs.items()}
    for mode, row in rows.items():
        print(f"{mode:>5}: median {row['median']:8.1f} tok/s  runs {row['total_tps']}")
    result = {"benchmark": "serving_ab", "machine": machine(), "model": path, "users": args.users,
              "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "rows": rows,
              "command": "python bench/serving_ab.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
