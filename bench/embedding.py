"""Embedding throughput by backend and batch size on this machine (issue 6, "Embedding backend").

The texts are real chunks (the knowledge base's splitter, 500/50 characters) of the
DeepSpeed docs and the 117-page PDF in ``../shared/corpus``; the model is the bundled
all-MiniLM-L6-v2 (the only one available offline). Each variant embeds the same texts
``--repeats`` times after a warm-up, the variants taking turns; the median gives
chunks/s. Quality: the cosine of each variant's vector with the torch fp32 vector of
the same chunk (mean and min), and how often the nearest chunk to each of ``--queries``
corpus sentences is the same.

Variants:

* ``torch`` at several batch sizes: sentence-transformers' default backend
  (:meth:`rag.embeddings.Embedder.embed_documents`);
* ``sentence-transformers onnx``: ``SentenceTransformer(..., backend="onnx")``, which
  exports the model with optimum; recorded as an error where it cannot load;
* ``onnxruntime fp32`` / ``onnxruntime int8``: the same model exported here with
  ``torch.onnx.export`` and run by onnxruntime (int8: ``quantize_dynamic``, per channel), with
  sentence-transformers' tokenizer, mean pooling and normalisation (what the onnx
  backend would run, without optimum); needs ``pip install 'chatllm-webui[bench]'``;
* ``torch int8``: ``torch.ao.quantization.quantize_dynamic`` on the Linear layers.

Published: the onnx backend ~1.4x torch on CPU, int8 (qint8 ONNX) ~3x
(sentence-transformers' "Speeding up Inference" page).

Full run:   python bench/embedding.py --out embedding.json
CI smoke:   python bench/embedding.py --smoke
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.common import machine, write_result  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def corpus_chunks(corpus: Path, limit: int, pdf_name: str = "GeoTopo-komprimiert.pdf") -> list[str]:
    """Up to ``limit`` chunks, alternating DeepSpeed Markdown and PDF chunks (real length mix)."""
    from rag.loaders import load_file
    from rag.splitter import make_text_splitter, split_documents

    splitter = make_text_splitter(500, 50)
    md = [c.page_content for f in sorted((corpus / "deepspeed").glob("*.md"))
          for c in split_documents(load_file(f), splitter)]
    pdf = [c.page_content for c in split_documents(load_file(corpus / "pdf" / pdf_name), splitter)]
    mixed = [t for pair in zip(md, pdf) for t in pair]
    return mixed[:limit]


def onnx_export(st_model, folder: Path) -> Path:
    """Export the transformer of a sentence-transformers model to ``folder/model.onnx``
    (last hidden state; dynamic batch and sequence axes)."""
    import torch

    hf = st_model[0].auto_model.eval()

    class Hidden(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    enc = st_model.tokenizer(["an example", "another example sentence"], padding=True, return_tensors="pt")
    path = folder / "model.onnx"
    names = ["input_ids", "attention_mask", "token_type_ids"]
    torch.onnx.export(Hidden(hf), tuple(enc[n] for n in names), str(path), input_names=names,
                      output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                      dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names + ["last_hidden_state"]})
    return path


def ort_embedder(st_model, onnx_path: Path, batch_size: int) -> Callable[[list[str]], np.ndarray]:
    """Embed like sentence-transformers (longest first, truncation at max_seq_length, mean
    pooling, L2 normalisation), with the transformer run by onnxruntime."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    tokenizer, max_len = st_model.tokenizer, st_model.max_seq_length

    def embed(texts: list[str]) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), st_model.get_embedding_dimension()), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_len,
                            return_tensors="np")
            hidden = session.run(None, {k: enc[k].astype(np.int64) for k in
                                        ("input_ids", "attention_mask", "token_type_ids")})[0]
            mask = enc["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
            out[idx] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return out

    return embed


def agreement(reference: np.ndarray, vectors: np.ndarray, query_ref: np.ndarray, query_vec: np.ndarray) -> dict:
    """Cosine with the reference vectors, and how often each query's nearest chunk is the same."""
    cos = (reference * vectors).sum(1)
    same = (np.argmax(query_ref @ reference.T, 1) == np.argmax(query_vec @ vectors.T, 1)).mean()
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "top1_same": float(same)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=CORPUS)
    p.add_argument("--chunks", type=int, default=256, help="chunks embedded per run")
    p.add_argument("--queries", type=int, default=64, help="query texts for the top-1 agreement")
    p.add_argument("--batch-sizes", default="16,32,64,128", help="torch batch sizes, comma-separated")
    p.add_argument("--batch-size", type=int, default=32, help="batch size of the other variants")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", help="embedding device (cpu, cuda); the onnxruntime and int8 "
                   "variants run on cpu only")
    p.add_argument("--smoke", action="store_true", help="16 chunks (4-page PDF + Markdown), one run, batch size 8, no torch int8")
    p.add_argument("--out", help="also write the JSON result here")
    args = p.parse_args(argv)
    if args.smoke:
        args.chunks, args.queries, args.batch_sizes, args.batch_size, args.repeats = 16, 4, "8", 8, 1
    if not (args.corpus / "deepspeed").is_dir():
        p.error(f"{args.corpus}: no corpus there; it lives in ../shared/corpus (see its README.md)")

    import torch

    from rag.embeddings import bundled_model_path, load_embedder

    texts = corpus_chunks(args.corpus, args.chunks + args.queries,
                          "pdflatex-4-pages.pdf" if args.smoke else "GeoTopo-komprimiert.pdf")
    texts, queries = texts[:args.chunks], [t[:120] for t in texts[args.chunks:]]
    embedder = load_embedder("bundled", device=args.device)
    st_model = embedder.model
    variants: list[tuple[str, int, Callable[[list[str]], np.ndarray]]] = []
    failed: list[dict[str, Any]] = []

    def add(variant: str, batch_size: int, fn: Callable[[list[str]], np.ndarray]) -> None:
        try:
            fn(texts[:8])  # warm-up, and loads what it loads
        except Exception as exc:  # noqa: BLE001 - a variant that cannot run is a result
            failed.append({"variant": variant, "batch_size": batch_size, "error": f"{type(exc).__name__}: {exc}"})
            return
        variants.append((variant, batch_size, fn))

    sizes = [int(b) for b in args.batch_sizes.split(",")]
    base = args.batch_size if args.batch_size in sizes else sizes[0]
    add("torch fp32", base, lambda t: embedder.embed_documents(t, batch_size=base))
    for b in sizes:
        if b != base:
            add("torch fp32", b, lambda t, b=b: embedder.embed_documents(t, batch_size=b))

    def st_onnx(t: list[str]) -> np.ndarray:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(bundled_model_path()), device=args.device, backend="onnx")
        return model.encode(t, batch_size=args.batch_size, normalize_embeddings=True)
    add("sentence-transformers onnx", args.batch_size, st_onnx)
    if failed and failed[-1]["variant"] == "sentence-transformers onnx":
        failed[-1]["note"] = ("sentence-transformers' onnx backend loads through optimum-onnx, whose latest release "
                              "(0.1.0) requires transformers<4.58; this project needs transformers>=5 "
                              "(huggingface/optimum-onnx#114), so the two cannot be installed together")

    with tempfile.TemporaryDirectory() as tmp:
        try:
            from onnxruntime.quantization import QuantType, quantize_dynamic
        except ImportError as exc:
            failed.append({"variant": "onnxruntime", "error": f"{exc}; pip install 'chatllm-webui[bench]'"})
        else:
            if args.device == "cpu":  # the exported model runs on onnxruntime's CPU provider
                fp32 = onnx_export(st_model, Path(tmp))
                add("onnxruntime fp32", args.batch_size, ort_embedder(st_model, fp32, args.batch_size))
                int8 = Path(tmp) / "model-int8.onnx"
                # per-channel: per-tensor int8 weights cost MiniLM ~0.09 of cosine similarity here
                quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
                add("onnxruntime int8", args.batch_size, ort_embedder(st_model, int8, args.batch_size))

        # torch.ao.quantization is deprecated (moving to torchao): measured on CPU, not smoke-tested
        if not args.smoke and args.device == "cpu":
            quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(st_model), {torch.nn.Linear},
                                                               dtype=torch.qint8)
            add("torch int8 (dynamic)", args.batch_size,
                lambda t: quantized.encode(t, batch_size=args.batch_size, normalize_embeddings=True))

        # Round-robin, so a change in the machine's load hits every variant alike.
        times: list[list[float]] = [[] for _ in variants]
        vectors: list[np.ndarray] = [np.empty(0)] * len(variants)
        for _ in range(args.repeats):
            for i, (_, _, fn) in enumerate(variants):
                start = time.perf_counter()
                vectors[i] = np.asarray(fn(texts), dtype=np.float32)
                times[i].append(time.perf_counter() - start)
        rows: list[dict[str, Any]] = []
        query_ref = variants[0][2](queries)
        for i, (variant, batch_size, fn) in enumerate(variants):
            seconds = statistics.median(times[i])
            row = {"variant": variant, "batch_size": batch_size, "seconds": seconds,
                   "chunks_per_s": len(texts) / seconds, "runs_s": [round(t, 3) for t in times[i]]}
            if i:
                row.update(agreement(vectors[0], vectors[i], query_ref, fn(queries)))
            rows.append(row)
    rows += failed

    torch_base = rows[0].get("chunks_per_s")
    for row in rows:
        if "chunks_per_s" in row and torch_base:
            row["speedup_vs_torch"] = row["chunks_per_s"] / torch_base
    versions = {"torch": torch.__version__}
    for name in ("onnxruntime", "onnx", "optimum"):
        try:
            versions[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            versions[name] = None
    result = {
        "benchmark": "embedding", "machine": machine(), "versions": versions,
        "model": embedder.name, "device": args.device, "torch_threads": torch.get_num_threads(),
        "chunks": len(texts), "mean_chunk_chars": sum(map(len, texts)) / len(texts), "repeats": args.repeats,
        "command": "python bench/embedding.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "published": {"onnx_vs_torch": 1.4, "onnx_int8_vs_torch": 3.0},
        "rows": rows,
    }
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
