"""Shared pieces of the benchmarks: machine description, percentiles, models to measure.

Speed does not depend on the weights' values, so the GPU benchmarks use a
random-weight model with Qwen2.5-7B-Instruct's exact configuration (from its
``config.json``), built in bf16 on the device; the CPU runs use the tiny demo model.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

# Qwen/Qwen2.5-7B-Instruct config.json (the fields that set the compute and memory).
QWEN25_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                 num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, rms_norm_eps=1e-6,
                 tie_word_embeddings=False, hidden_act="silu")


def machine() -> dict[str, Any]:
    """CPU, cores, memory, GPU and library versions, for the results table."""
    import sentence_transformers
    import transformers

    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                            "python": platform.python_version(), "torch": torch.__version__,
                            "transformers": transformers.__version__,
                            "sentence_transformers": sentence_transformers.__version__}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                           if line.startswith("model name"))
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (OSError, StopIteration, ValueError):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            pass
    return info


def package_versions(names: list[str]) -> dict[str, str]:
    """The installed version of each distribution in ``names`` ("not installed" when missing)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def random_qwen_7b(tokenizer_dir: str | Path, out_dir: str | Path, device: str, layers: int | None = None) -> Path:
    """Save a random-weight model of Qwen2.5-7B's configuration (bf16) with the demo tokenizer
    padded to its vocabulary, so ``load_chat_model(out_dir)`` serves it through the real code path.

    Args:
        tokenizer_dir: the demo model's folder (its tokenizer and chat template are reused).
        out_dir: where to save.
        device: where to build the weights (``cuda``: fast; the file is ~15 GB).
        layers: fewer layers for a quick check of this code path (None: the real 28).
    """
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    fill = QWEN25_7B["vocab_size"] - len(tok)
    tok.add_tokens([f"<|filler_{i}|>" for i in range(fill)])  # ids the random model may emit must decode
    config = Qwen2Config(**{**QWEN25_7B, **({"num_hidden_layers": layers} if layers else {})},
                         bos_token_id=tok.pad_token_id, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tok.pad_token_id)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = config.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def wait_for_health(url: str, proc: subprocess.Popen, timeout: float, poll: float = 0.5) -> bool:
    """Poll ``GET {url}/health`` until it answers 200 (True), ``proc`` exits or ``timeout``
    seconds pass (False; the caller reports which and kills what is left)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(poll)
    return False


def write_result(path: str | Path | None, result: dict[str, Any]) -> None:
    """Print ``result`` as JSON and, when ``path`` is given, save it there."""
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if path:
        Path(path).write_text(text + "\n", encoding="utf-8")
