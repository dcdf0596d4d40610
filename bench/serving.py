"""Serving benchmark (issue 6, items 1 and 2), everything measured in one run:

* plain one-at-a-time ``model.generate`` (greedy, EOS ignored): decode tokens/s, and for
  N concurrent users the queue it builds (request k waits for the k-1 before it);
* the same model served by our HTTP API (``/v1/chat/completions``, streamed), N
  concurrent streams: total tokens/s and time-to-first-token p50/p95. The server is the
  real one (``run.py --api-only``) in its own process, as deployed, so the benchmark's
  client does not share the server's interpreter;
* the server's overhead: tokens/s of one stream through the API divided by tokens/s of
  the same generation called directly (``ChatModel.stream`` of the same model, batched
  the same way, in this process while the server is not running).

CPU (tiny demo model):  python bench/serving.py --cpu
GPU (Qwen2.5-7B config, random bf16 weights):  python bench/serving.py --random-7b --batching off,auto,on
CI smoke test:  python bench/serving.py --cpu --smoke
--batching off (the old CPU default) vs auto (the default) vs on side by side, one run (how
``--batching auto`` was decided):
    python bench/serving.py --cpu --batching off,auto,on --users 1,8,32
    python bench/serving.py --cpu --batching off,auto,on --users 1,8,32 --model-path FOLDER   # e.g. SmolLM2-135M
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, percentile, random_qwen_7b, wait_for_health, write_result  # noqa: E402


def make_prompt(model, n_tokens: int) -> list[dict]:
    """A one-message conversation whose rendered prompt is about ``n_tokens`` tokens."""
    words = ("DeepSpeed makes distributed training and inference easy efficient and effective "
             "for large models on many GPUs ").split()
    text, i = [], 0
    while model.count_prompt_tokens([{"role": "user", "content": " ".join(text)}]) < n_tokens:
        text.append(words[i % len(words)])
        i += 1
    return [{"role": "user", "content": " ".join(text)}]


class _Clock:
    """A transformers streamer that only records when each token arrives."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def plain_generate(chat, messages, new_tokens: int, repeats: int) -> list[dict]:
    """``repeats`` greedy ``generate`` calls one after the other; per call: seconds, TTFT, tokens."""
    import torch

    ids = chat.tokenizer(chat.render_prompt(messages), add_special_tokens=False, return_tensors="pt")
    ids = {k: v.to(chat.model.device) for k, v in ids.items()}
    runs = []
    for _ in range(repeats):
        clock = _Clock()
        start = time.perf_counter()
        with torch.inference_mode():
            out = chat.model.generate(**ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                      streamer=clock, pad_token_id=chat.tokenizer.pad_token_id)
        end = time.perf_counter()
        n = out.shape[1] - ids["input_ids"].shape[1]
        first = clock.times[1] if len(clock.times) > 1 else end  # times[0] is the prompt
        runs.append({"seconds": end - start, "ttft": first - start, "tokens": int(n),
                     "decode_tps": (n - 1) / (end - first) if n > 1 and end > first else float("nan")})
    return runs


def direct_stream(chat, messages, params) -> dict:
    """One generation through ``ChatModel.stream``: tokens/s after the first token."""
    start = time.perf_counter()
    first = None
    text = ""
    for piece in chat.stream(messages, params):
        first = first or time.perf_counter()
        text += piece
    end = time.perf_counter()
    n = chat.count_tokens(text)
    return {"tokens": n, "ttft": first - start, "decode_tps": (n - 1) / (end - first)}


def start_server(path: str, args, max_users: int, batching: str) -> tuple[str, subprocess.Popen]:
    """``run.py --api-only`` serving the model at ``path`` on a free loopback port, in its
    own process; returns (base URL, process) once ``/health`` answers.

    Raises:
        RuntimeError: the server exited or did not come up within 10 minutes (its log tail attached).
    """
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    log = tempfile.NamedTemporaryFile("w+", prefix="bench-server-", suffix=".log", delete=False)
    cmd = [sys.executable, str(root / "run.py"), "--api-only", "--model-path", path, "--port", str(port),
           "--knowledge-dir", tempfile.mkdtemp(prefix="bench-kb-"), "--batching", batching,
           "--stream-interval-ms", str(args.stream_interval_ms),
           "--max-queue", str(max(64, 2 * max_users)), "--max-new-tokens-limit", str(max(4096, args.new_tokens))]
    if args.kv_cache_memory is not None:
        cmd += ["--kv-cache-memory", str(args.kv_cache_memory)]
    if args.cpu:
        cmd.append("--cpu")
    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"})
    url = f"http://127.0.0.1:{port}"
    if wait_for_health(url, proc, 600):
        return url, proc
    proc.kill()
    log.seek(0)
    raise RuntimeError(f"the server did not start ({' '.join(cmd)}):\n{log.read()[-3000:]}")


async def _one_stream(client, url: str, messages, new_tokens: int) -> dict:
    start = time.perf_counter()
    stamps, usage = [], None
    body = {"messages": messages, "max_tokens": new_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                stamps.append(time.perf_counter())
    end = time.perf_counter()
    n = usage["completion_tokens"] if usage else len(stamps)
    return {"ttft": stamps[0] - start, "tokens": n, "seconds": end - start,
            "decode_tps": (n - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")}


async def served(url: str, messages, new_tokens: int, users: int) -> dict:
    """``users`` concurrent streams; total tokens/s over the wall time, TTFT percentiles."""
    import httpx

    async with httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=users + 4)) as client:
        start = time.perf_counter()
        runs = await asyncio.gather(*(_one_stream(client, url, messages, new_tokens) for _ in range(users)))
        wall = time.perf_counter() - start
    ttfts = [r["ttft"] for r in runs]
    return {"users": users, "total_tps": sum(r["tokens"] for r in runs) / wall, "wall_s": wall,
            "ttft_p50_s": percentile(ttfts, 50), "ttft_p95_s": percentile(ttfts, 95),
            "tokens_per_stream": sorted({r["tokens"] for r in runs}),
            "decode_tps_per_stream_p50": percentile([r["decode_tps"] for r in runs], 50)}


def queued(one_at_a_time: list[dict], users: int) -> dict:
    """What ``users`` concurrent users get from one-at-a-time generate: request k starts when
    k-1 finishes. Built from measured single-request times (cycled if fewer were measured)."""
    ttfts, clock, tokens = [], 0.0, 0
    for k in range(users):
        run = one_at_a_time[k % len(one_at_a_time)]
        ttfts.append(clock + run["ttft"])
        clock += run["seconds"]
        tokens += run["tokens"]
    return {"users": users, "total_tps": tokens / clock, "wall_s": clock,
            "ttft_p50_s": percentile(ttfts, 50), "ttft_p95_s": percentile(ttfts, 95)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", help="a model folder (default: the demo model, or --random-7b)")
    p.add_argument("--random-7b", action="store_true", help="random bf16 weights, Qwen2.5-7B configuration")
    p.add_argument("--random-layers", type=int, default=None, help="with --random-7b: fewer layers (quick check)")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--batching", default="auto",
                   help="the server's --batching: auto (its default), on, off, or several comma-separated (each "
                        "served in turn, side by side in the result's 'served_by_batching')")
    p.add_argument("--kv-cache-memory", type=float, default=None,
                   help="the server's --kv-cache-memory (default: not passed, the cache is sized from --max-queue)")
    p.add_argument("--users", default="1,8,32,64", help="concurrent streams, comma-separated")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--stream-interval-ms", type=int, default=10, help="the server's --stream-interval-ms")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for CI: users 1,2, 32+8 tokens")
    p.add_argument("--out", help="also write the JSON result here")
    args = p.parse_args(argv)
    modes = args.batching.split(",")
    if not set(modes) <= {"on", "off", "auto"}:
        p.error(f"--batching takes on, off, auto or a comma-separated list of them, got {args.batching!r}")
    if args.smoke:
        args.users, args.prompt_tokens, args.new_tokens = "1,2", 32, 8

    import torch

    from llm.base import GenerationParams
    from llm.batching import BatchedHFChatModel
    from llm.demo import build_demo_model
    from llm.loader import load_chat_model

    path = args.model_path
    if path is None:
        demo = build_demo_model()
        path = str(random_qwen_7b(demo, Path(tempfile.gettempdir()) / f"random-qwen2.5-7b-{args.random_layers}",
                                  "cpu" if args.cpu else "cuda", args.random_layers)) if args.random_7b else str(demo)
    chat = load_chat_model(path, cpu=args.cpu)
    messages = make_prompt(chat, args.prompt_tokens)
    users = [int(u) for u in args.users.split(",")]
    params = GenerationParams(max_new_tokens=args.new_tokens, temperature=0)

    plain_generate(chat, messages, args.new_tokens, 1)  # warm-up
    one = plain_generate(chat, messages, args.new_tokens, 3)
    direct = direct_stream(chat, messages, params)
    model = (BatchedHFChatModel.wrap(chat, max_memory_percent=args.kv_cache_memory,
                                     max_sequences=max(64, 2 * max(users))) if "on" in modes else chat)
    try:
        direct_stream(model, messages, params)  # warm-up
        direct_model = max((direct_stream(model, messages, params) for _ in range(3)), key=lambda r: r["decode_tps"])
    finally:
        if hasattr(model, "close"):
            model.close()
    device, dtype = str(chat.model.device), str(chat.model.dtype)
    del model
    chat.model = None  # the server loads its own copy: give this one's memory back first
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    by_mode = {}
    load_before = os.getloadavg()
    for mode in modes:
        url, server = start_server(path, args, max(users), mode)
        try:
            asyncio.run(served(url, messages, args.new_tokens, 1))  # warm-up
            via_api_one = max((asyncio.run(served(url, messages, args.new_tokens, 1)) for _ in range(3)),
                              key=lambda r: r["decode_tps_per_stream_p50"])
            mode_rows = [asyncio.run(served(url, messages, args.new_tokens, n)) for n in users]
            by_mode[mode] = {"one_stream_best_of_3": via_api_one, "rows": mode_rows,
                             # total tok/s at N streams over one stream's, same server, same run
                             "scaling": {str(r["users"]): r["total_tps"] / mode_rows[0]["total_tps"]
                                         for r in mode_rows} if users[0] == 1 else None}
        finally:
            server.terminate()
            server.wait(30)
    rows = by_mode[modes[-1]]["rows"]
    result = {
        "benchmark": "serving", "machine": machine(), "model": path, "device": device,
        "dtype": dtype, "batching": args.batching,
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "prompt_tokens": chat.count_prompt_tokens(messages), "new_tokens": args.new_tokens,
        "command": "python bench/serving.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "plain_generate": {"decode_tps": percentile([r["decode_tps"] for r in one], 50),
                           "ttft_s": percentile([r["ttft"] for r in one], 50),
                           "queued": [queued(one, n) for n in users]},
        "direct_stream_plain_model": direct,
        "served": rows,
        "served_by_batching": by_mode,
        "overhead": {"api_decode_tps": via_api_one["decode_tps_per_stream_p50"],
                     "direct_decode_tps": direct_model["decode_tps"],
                     "ratio": via_api_one["decode_tps_per_stream_p50"] / direct_model["decode_tps"]},
    }
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
