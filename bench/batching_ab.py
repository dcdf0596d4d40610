"""One stream and 8 streams, in one process, plain ``HFChatModel`` vs ``BatchedHFChatModel``
(KV caches of 1, 4 and 64 full contexts), taking turns round after round, so that a shared
machine's load hits every variant alike: the check behind the earlier CPU decision (``bench/serving.py --batching off,auto,on`` is the current one).

    python bench/batching_ab.py            # demo model, CPU, 516-token prompt, 128 new tokens, 4 rounds
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, write_result  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--out", help="also write the JSON result here")
    args = p.parse_args(argv)
    from bench.serving import make_prompt
    from llm.base import GenerationParams
    from llm.batching import BatchedHFChatModel
    from llm.demo import build_demo_model
    from llm.loader import load_chat_model

    path = str(build_demo_model())
    plain = load_chat_model(path, cpu=True)
    messages = make_prompt(plain, 512)
    params = GenerationParams(max_new_tokens=args.new_tokens, temperature=0)

    def total_tps(model, streams: int) -> float:
        start = time.perf_counter()

        def one():
            for _ in model.generate(messages, params):
                pass
        threads = [threading.Thread(target=one) for _ in range(streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return streams * args.new_tokens / (time.perf_counter() - start)

    # each batched variant wraps its own copy: batching switches the model's attention to the paged one
    models = {f"batched, KV for {s} contexts": BatchedHFChatModel.wrap(load_chat_model(path, cpu=True),
                                                                        max_sequences=s) for s in (1, 4, 64)}
    models["plain (one at a time)"] = plain
    for model in models.values():
        total_tps(model, 1)  # warm-up
    load_before = os.getloadavg()[0]
    runs = {name: {"1": [], "8": []} for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            runs[name]["1"].append(total_tps(model, 1))
            runs[name]["8"].append(total_tps(model, 8))
    for model in models.values():
        if hasattr(model, "close"):
            model.close()
    result = {"benchmark": "batching_ab", "machine": machine(), "new_tokens": args.new_tokens,
              "prompt_tokens": plain.count_prompt_tokens(messages),
              "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
              "command": "python bench/batching_ab.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "total_tps": {name: {n: {"median": statistics.median(v), "runs": v} for n, v in r.items()}
                            for name, r in runs.items()}}
    for name, r in result["total_tps"].items():
        print(f"{name:32s} 1 stream {r['1']['median']:7.0f}   8 streams {r['8']['median']:7.0f} tok/s (medians)")
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
