"""The built-in demo model: a tiny random-weight Qwen2 chat model, built locally.

With no ``--model-path`` and no cached Qwen, the server still starts, on this
model: its answers are meaningless, but every code path (tokenizer, chat
template, ``AutoModelForCausalLM.from_pretrained``, ``generate``, streaming) is
the one a real Qwen2.5 takes.  The tests use it the same way.

What is built (about 1 MB, in a few seconds, no network):

* a byte-level BPE tokenizer trained with the ``tokenizers`` library on the
  bilingual text :data:`_CORPUS` below, with the Qwen2 pre-tokenizer (NFC, Qwen2's
  split regex, byte-level), so any text, Chinese included, encodes; Qwen's special
  tokens ``<|endoftext|>`` (pad), ``<|im_start|>``, ``<|im_end|>`` (eos) and
  Qwen2's ChatML chat template (:data:`llm.templates.QWEN2_CHAT_TEMPLATE`);
* a ``Qwen2ForCausalLM`` (hidden 64, 2 layers, 4 heads, 2 kv heads, intermediate
  128, 4096 positions) with seeded random weights; the output rows of byte and
  special tokens are zeroed so that the model writes whole (valid UTF-8) tokens
  and never ends early -- answers run to ``max_new_tokens``;
* a ``generation_config.json`` shaped like Qwen2.5-Instruct's (eos =
  ``[<|im_end|>, <|endoftext|>]``, sampling defaults).

Run ``python -m llm.demo [OUT_DIR]`` to build it and print its folder.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)

DEMO_MODEL_NAME = "demo"
#: Bump when the build recipe changes, so old caches are not reused.
DEMO_RECIPE_VERSION = 1
_DIR_NAME = f"demo-qwen2-v{DEMO_RECIPE_VERSION}"
_MARKER = "DEMO_BUILD_COMPLETE.json"

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)  # ids 0, 1, 2
_VOCAB_SIZE = 2048

_CORPUS = """\
Hello! I am a small demo model. My answers are random words, because my weights are random.
Start the server with --model-path to chat with a real model, such as Qwen2.5-7B-Instruct.
This chat page answers questions from your documents. Upload a PDF, a Word file or a text file,
and the knowledge base splits it into chunks, embeds each chunk and stores the vectors in an index.
When you ask a question, the most similar chunks are retrieved and given to the model as context.
The model then writes an answer, token by token, and the page shows the text as it streams.
You can change the temperature, top k, top p and the maximum number of new tokens.
A low temperature makes the answer more focused; a high temperature makes it more creative.
The system prompt tells the assistant how to behave. The history keeps the last rounds of the chat.
What is the weather like today? It is sunny in the morning and it may rain in the afternoon.
Please summarise this document in three sentences. Thank you for your help!
Large language models are trained on a lot of text to predict the next token.
The quick brown fox jumps over the lazy dog. One, two, three, four, five, six, seven, eight, nine, ten.
Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday are the days of the week.
你好！我是一个小小的演示模型。我的权重是随机的，所以我的回答也是随机的词语。
请使用 --model-path 参数启动服务，加载真正的模型，例如通义千问 Qwen2.5-7B-Instruct。
这个聊天页面可以根据你的文档回答问题。你可以上传 PDF、Word 或者文本文件。
知识库会把文档切分成小段，为每一段计算向量，并把向量保存到索引中。
当你提出问题时，系统会检索最相似的段落，并把它们作为上下文交给模型。
模型会逐字生成回答，页面会实时显示流式输出的文字。
你可以调整温度、top k、top p 以及最大生成长度等参数。
温度越低，回答越稳定；温度越高，回答越有创造性。
系统提示词告诉助手应该怎样回答。对话历史会保留最近几轮的内容。
今天天气怎么样？上午是晴天，下午可能会下雨，出门记得带伞。
请用三句话总结这篇文档的主要内容。非常感谢你的帮助！
大语言模型在大量文本上训练，学习预测下一个词。
春天来了，花开了，小鸟在树上唱歌。我们一起去公园散步吧。
一二三四五六七八九十，百千万亿。北京、上海、杭州、深圳都是中国的城市。
人工智能、机器学习、深度学习、自然语言处理、向量数据库、检索增强生成。
"""


def default_demo_dir() -> Path:
    """Where the demo model is cached by default.

    Returns:
        ``$CHATLLM_CACHE_DIR/demo-qwen2-v1`` if that variable is set, else
        ``$XDG_CACHE_HOME/chatllm-webui/demo-qwen2-v1``, else
        ``~/.cache/chatllm-webui/demo-qwen2-v1`` (the XDG base directory default).
    """
    if os.environ.get("CHATLLM_CACHE_DIR"):
        base = Path(os.environ["CHATLLM_CACHE_DIR"]).expanduser()
    elif os.environ.get("XDG_CACHE_HOME"):
        base = Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "chatllm-webui"
    else:
        base = Path.home() / ".cache" / "chatllm-webui"
    return base / _DIR_NAME


def _is_complete(path: Path, seed: int) -> bool:
    """True if ``path`` holds a finished build made with ``seed`` (its marker is written last)."""
    try:
        info = json.loads((path / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return info.get("seed") == seed and info.get("recipe") == DEMO_RECIPE_VERSION


def _train_tokenizer():
    """Train the byte-level BPE tokenizer on :data:`_CORPUS`; return a ``PreTrainedTokenizerFast``."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    from llm.templates import QWEN2_CHAT_TEMPLATE

    # The same pipeline as transformers' Qwen2Tokenizer (tokenization_qwen2.py).
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(keepends=True), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        unk_token=None,
        extra_special_tokens=[IM_START, IM_END],
        chat_template=QWEN2_CHAT_TEMPLATE,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )


def _readable(text: str) -> bool:
    """True for a token text that is whole UTF-8 and printable (spaces and newlines allowed)."""
    return "\ufffd" not in text and text.replace("\n", "").replace(" ", "x").isprintable()


def _build_model(tokenizer, seed: int):
    """Seeded random ``Qwen2ForCausalLM`` sized for ``tokenizer``; output rows of byte/special tokens zeroed."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    pad_id, _im_start_id, im_end_id = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        initializer_range=0.1,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        bos_token_id=pad_id,  # as in Qwen2.5's config.json: bos = <|endoftext|>
        eos_token_id=im_end_id,
        pad_token_id=pad_id,
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG as it was
        model = Qwen2ForCausalLM(config)
    # Re-draw every weight from our own generator: deterministic whatever transformers'
    # init scheme is, and safe when two threads build at once (no global RNG).
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * config.initializer_range)
            elif "norm" in name:
                param.fill_(1.0)
            else:
                param.zero_()
        # Zero the logits of special tokens and of tokens that are not whole printable
        # UTF-8 text (lone bytes), so answers are readable tokens and never end early.
        byte_level = tokenizer.backend_tokenizer.decoder
        unreadable = [
            i for tok, i in tokenizer.get_vocab().items()
            if i < len(SPECIAL_TOKENS) or not _readable(byte_level.decode([tok]))
        ]
        model.lm_head.weight[unreadable] = 0.0
    model.generation_config = GenerationConfig(  # Qwen2.5-7B-Instruct's generation_config.json values
        bos_token_id=pad_id,
        eos_token_id=[im_end_id, pad_id],
        pad_token_id=pad_id,
        do_sample=True,
        temperature=0.7,
        top_p=0.8,
        top_k=20,
        repetition_penalty=1.05,
    )
    return model.eval()


def _install(tmp: Path, out_dir: Path, seed: int, overwrite: bool) -> None:
    """Move the finished build ``tmp`` to ``out_dir`` with atomic renames.

    A concurrent builder that finished first wins (unless ``overwrite``); an
    incomplete or outdated ``out_dir`` is moved aside and deleted.
    """
    for _ in range(5):
        try:
            os.rename(tmp, out_dir)  # atomic; fails if out_dir exists and is not empty
            return
        except OSError:
            if not overwrite and _is_complete(out_dir, seed):
                shutil.rmtree(tmp, ignore_errors=True)
                return
        aside = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(out_dir, aside)
        except FileNotFoundError:
            continue  # someone else moved it; try again
        shutil.rmtree(aside, ignore_errors=True)
        overwrite = False  # the old build is gone; from now on a concurrent one is fine
    raise OSError(f"could not move the demo model build {tmp} to {out_dir}")


def build_demo_model(out_dir: str | Path | None = None, *, seed: int = 0, overwrite: bool = False) -> Path:
    """Build the demo model (see the module docstring) into ``out_dir`` and return it.

    Idempotent: a folder that already holds a complete build with the same
    ``seed`` (its marker file, written last, says so) is returned as is.  The
    build goes to a temporary folder beside ``out_dir`` and is renamed into place,
    so a crash never leaves a half-built model that looks complete, and two
    processes may build at once.  Deterministic: the same ``seed`` gives the same
    weights and ``tokenizer.json``.  Takes a few seconds on CPU; no network.

    Args:
        out_dir: target folder; ``None`` means :func:`default_demo_dir`.
        seed: seed of the random weights.
        overwrite: rebuild even if a complete build is there.

    Returns:
        The folder, loadable with ``AutoTokenizer.from_pretrained`` and
        ``AutoModelForCausalLM.from_pretrained``.

    Raises:
        OSError: the folder cannot be written.
    """
    out_dir = Path(out_dir).expanduser().resolve() if out_dir is not None else default_demo_dir()
    if not overwrite and _is_complete(out_dir, seed):
        logger.debug("demo model already built at %s", out_dir)
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()  # unlike tempfile.mkdtemp (mode 0700), this honours the umask
    try:
        logger.info("building the demo model in %s", out_dir)
        tokenizer = _train_tokenizer()
        model = _build_model(tokenizer, seed)
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
        marker = {"recipe": DEMO_RECIPE_VERSION, "seed": seed, "vocab_size": len(tokenizer)}
        (tmp / _MARKER).write_text(json.dumps(marker), encoding="utf-8")
        _install(tmp, out_dir, seed, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m llm.demo [OUT_DIR] [--seed N] [--overwrite]``; prints the folder."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m llm.demo", description="Build the tiny random-weight demo model.")
    parser.add_argument("out_dir", nargs="?", default=None, help=f"target folder (default: {default_demo_dir()})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if already built")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(build_demo_model(args.out_dir, seed=args.seed, overwrite=args.overwrite))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
