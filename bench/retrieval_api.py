"""Retrieval through the real server with its defaults: CMRC 2018 dev over the HTTP API.

What a user gets (issue 11, "Done means"): ``run.py --api-only`` started with default
flags, an empty model cache (a fresh ``$CHATLLM_CACHE_DIR`` and ``$HF_HOME``) and
``HF_HUB_OFFLINE`` *not* set, so the server finds out by itself whether the hub can be
reached and picks its embedding model as a user's server would. The articles are
uploaded as ``.txt`` files with ``POST /v1/knowledge/{kb}/files`` (50 a request), every
question is asked with ``POST /v1/knowledge/{kb}/search`` carrying only ``query`` and
``top_k`` (10, so hit@5 and MRR@10 can be counted; the ranking does not depend on
top_k: each retriever contributes 50 candidates), so mode, threshold and reranker are
the server's. Then the same knowledge folder is served again with ``--retrieval-mode
bm25`` and ``--retrieval-mode dense`` for the side-by-side rows.

A retrieved chunk is a hit when it contains a gold answer text (as ``python -m rag
eval``); hit@k = share of questions with a hit in the top k, MRR@10 = mean 1/rank of
the first hit (0 when none), "no passage" = share that got an empty result (the score
threshold said the base has nothing on it).

    python bench/retrieval_api.py ../shared/corpus/eval/cmrc2018_dev.json \
        --out docs/bench-retrieval-api-cpu.json

Partial results are written after every mode (``--out``), so a long run cut short
still leaves its finished rows; each mode's row keeps every question's first-hit rank
(``first_hit_ranks``, null = no hit in the top 10), so runs can be compared question by
question. ``--reuse`` asks again over a knowledge folder an earlier run built.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, percentile, wait_for_health, write_result  # noqa: E402
from rag.evaluation import load_squad  # noqa: E402

KB = "cmrc"
FILES_PER_REQUEST = 50
TOP_K = 10


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(knowledge_dir: Path, env: dict[str, str], log_path: Path, *extra: str,
                 timeout: float = 900) -> tuple[str, subprocess.Popen]:
    """``run.py --api-only`` with default flags (plus ``extra``) on a free loopback port;
    waits for ``/health``. Returns (base URL, process)."""
    port = _free_port()
    cmd = [sys.executable, str(ROOT / "run.py"), "--api-only", "--host", "127.0.0.1", "--port", str(port),
           "--knowledge-dir", str(knowledge_dir), *extra]
    log = open(log_path, "a")
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    if wait_for_health(url, proc, timeout, poll=1):
        return url, proc
    if proc.poll() is not None:
        raise RuntimeError(f"server exited with {proc.returncode}; see {log_path}")
    proc.kill()
    raise RuntimeError(f"server did not answer /health in {timeout:.0f} s; see {log_path}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def upload(url: str, articles: list, client: httpx.Client) -> dict[str, Any]:
    """Upload every article as a UTF-8 ``.txt`` file; returns counts and seconds."""
    t0 = time.perf_counter()
    added = refused = 0
    for start in range(0, len(articles), FILES_PER_REQUEST):
        batch = articles[start:start + FILES_PER_REQUEST]
        files = [("files", (a.name, a.text.encode("utf-8"), "text/plain")) for a in batch]
        r = client.post(f"{url}/v1/knowledge/{KB}/files", files=files)
        r.raise_for_status()
        for report in r.json()["files"]:
            added += report["status"] == "added"
            refused += report["status"] == "refused"
        print(f"  uploaded {start + len(batch)}/{len(articles)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    seconds = time.perf_counter() - t0
    info = next(k for k in client.get(f"{url}/v1/knowledge").json()["knowledge_bases"] if k["name"] == KB)
    return {"files_added": added, "files_refused": refused, "chunks": info["chunks"],
            "embedding_model": info["embedding_model"], "seconds": round(seconds, 1),
            "chunks_per_s": round(info["chunks"] / seconds, 3)}


def ask_all(url: str, questions: list, client: httpx.Client, label: str) -> dict[str, Any]:
    """Ask every question with only ``query`` and ``top_k``; hit@1/3/5, MRR@10, no-passage share."""
    first_hits: list[int | None] = []
    empty = 0
    latencies = []
    t0 = time.perf_counter()
    for i, q in enumerate(questions, start=1):
        t = time.perf_counter()
        r = client.post(f"{url}/v1/knowledge/{KB}/search", json={"query": q.text, "top_k": TOP_K})
        latencies.append((time.perf_counter() - t) * 1000)
        r.raise_for_status()
        results = r.json()["results"]
        empty += not results
        first_hits.append(next((rank for rank, res in enumerate(results, start=1)
                                if any(a in res["text"] for a in q.answers)), None))
        if i % 250 == 0 or i == len(questions):
            print(f"  {label}: {i}/{len(questions)} asked, hit@1 so far {_hit(first_hits, 1):.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    n = len(questions)
    return {"questions": n, "first_hit_ranks": first_hits,
            "hit@1": round(_hit(first_hits, 1), 4), "hit@3": round(_hit(first_hits, 3), 4),
            "hit@5": round(_hit(first_hits, 5), 4),
            "mrr@10": round(sum(1 / h for h in first_hits if h) / n, 4) if n else None,
            "no_passage": round(empty / n, 4) if n else None,
            "request_p50_ms": round(percentile(latencies, 50), 1),
            "request_p95_ms": round(percentile(latencies, 95), 1),
            "seconds": round(time.perf_counter() - t0, 1)}


def _hit(first_hits: list[int | None], k: int) -> float:
    return sum(1 for h in first_hits if h and h <= k) / len(first_hits) if first_hits else 0.0


def server_env(cache: Path, hub_offline: bool = False) -> dict[str, str]:
    """The environment of a user's first start: empty caches, hub offline-ness left to the server
    (``hub_offline``: HF_HUB_OFFLINE=1, for tests, which reach nothing outside loopback)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    if hub_offline:
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.update(CHATLLM_CACHE_DIR=str(cache / "chatllm"), HF_HOME=str(cache / "hf"),
               GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    return env


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", type=Path, help="SQuAD-format JSON (CMRC 2018 dev)")
    p.add_argument("--limit", type=int, default=None, help="ask only the first N questions")
    p.add_argument("--articles", type=int, default=None, help="upload only the first N articles (and ask only "
                   "their questions); for smoke runs")
    p.add_argument("--modes", default="default,bm25,dense",
                   help="comma-separated: 'default' (no --retrieval-mode flag), bm25, dense, hybrid")
    p.add_argument("--workdir", type=Path, default=None,
                   help="knowledge folder, caches and logs (default: a temporary folder, removed at the end)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON result here (also after each mode)")
    p.add_argument("--reuse", action="store_true",
                   help="the knowledge base in --workdir is already built (by an earlier run): ask only")
    p.add_argument("--hub-offline", action="store_true",
                   help="start the server with HF_HUB_OFFLINE=1 (tests: no network outside loopback)")
    p.add_argument("--smoke", action="store_true", help="3 articles, their questions, default mode only")
    args = p.parse_args(argv)
    if args.smoke:
        args.articles, args.modes = args.articles or 3, "default"
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    articles, questions = load_squad(args.dataset)
    if args.articles:
        articles = articles[:args.articles]
        kept = {a.id for a in articles}
        questions = [q for q in questions if q.article_id in kept]
    questions = questions[:args.limit] if args.limit else questions
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-retrieval-api-")
        args.workdir = Path(tmp.name)
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    env, log_path = server_env(work / "cache", args.hub_offline), work / "server.log"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the servers are stopped (finally) on kill
    load = os.getloadavg()
    result: dict[str, Any] = {"dataset": str(args.dataset), "articles": len(articles), "questions": len(questions),
                              "top_k_sent": TOP_K, "machine": machine(), "load_avg_start": [round(x, 2) for x in load],
                              "modes": {}}
    try:
        with httpx.Client(timeout=httpx.Timeout(3600, connect=10)) as client:
            for mode in modes:
                extra = [] if mode == "default" else ["--retrieval-mode", mode]
                t0 = time.perf_counter()
                url, proc = start_server(work / "knowledge", env, log_path, *extra)
                print(f"[{mode}] server up in {time.perf_counter() - t0:.0f} s", flush=True)
                try:
                    if "ingestion" not in result and not args.reuse:
                        result["ingestion"] = upload(url, articles, client)
                        print(f"  ingestion: {result['ingestion']}", flush=True)
                    result["modes"][mode] = ask_all(url, questions, client, mode)
                finally:
                    stop_server(proc)
                result["modes"][mode]["server_flags"] = extra
                result["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
                print(f"[{mode}] {result['modes'][mode]}", flush=True)
                if args.out:
                    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        log = log_path.read_text(errors="replace")
        result["embedder_log"] = [line.strip() for line in log.splitlines() if "embedding model" in line][:4]
    finally:
        if tmp is not None:
            tmp.cleanup()
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
