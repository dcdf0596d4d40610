"""How much paged KV cache the batched path takes: sized from what the server can need,
not from a share of free memory.

transformers' continuous-batching manager sizes its cache from ``max_memory_percent`` of the
device's memory unless ``ContinuousBatchingConfig.num_blocks`` is given
(``generation/continuous_batching/cache.py``, ``PagedAttentionMemoryHandler``).  On a CPU that
share is of the machine's *total* RAM minus the process, and the attention mask the CPU path
needs (``[max_batch_tokens, cache tokens + max_batch_tokens]``, in the model's dtype) grows with
it: 0.5 made each demo-model server take 12 GB.  :func:`kv_cache_budget` instead sizes
``num_blocks`` from the model and the server's flags.

A cache smaller than the busiest moment is not an error: requests that find no free block
wait in the manager's queue until running ones finish.  Only one full-context sequence must
always fit, or a long request could never be served.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: transformers' ``ContinuousBatchingConfig.page_size``: tokens per cache block.
PAGE_SIZE = 256
#: Most tokens in one batched forward pass on a CPU: a 516-token prefill takes 3 passes, and
#: the attention mask costs ``CPU_MAX_BATCH_TOKENS`` × dtype bytes per cached token.
CPU_MAX_BATCH_TOKENS = 256
#: Ceiling of the cache (+ its mask) on a CPU: a sixteenth of the RAM, at most 256 MiB, so that
#: several servers (or test servers) share a machine.
CPU_RAM_SHARE, CPU_MAX_BYTES = 1 / 16, 256 << 20
#: Ceiling on a GPU: half of the memory free once the model is loaded (the server owns the GPU;
#: the rest is for activations and logits).
GPU_FREE_SHARE = 0.5


@dataclass(frozen=True)
class KVBudget:
    """A paged KV cache size for :class:`llm.batching.BatchedHFChatModel`.

    Attributes:
        num_blocks: cache blocks of :data:`PAGE_SIZE` tokens (transformers' ``num_blocks``).
        max_batch_tokens: most tokens per forward pass (transformers' ``max_batch_tokens``);
            None leaves transformers' default (8192).
        tokens: tokens the cache holds (``num_blocks * PAGE_SIZE``).
        bytes_per_token: KV bytes of one cached token plus its attention-mask row.
        capped: True when the device ceiling, not the need, set the size.
    """

    num_blocks: int
    max_batch_tokens: int | None
    tokens: int
    bytes_per_token: int
    capped: bool

    @property
    def bytes(self) -> int:
        """Memory the cache and its mask take, in bytes."""
        return self.tokens * self.bytes_per_token


def kv_bytes_per_token(config: Any, itemsize: int) -> int:
    """Bytes one token takes in the KV cache: ``2 (K and V) × layers × kv_heads × head_dim × itemsize``.

    Args:
        config: the model's (text) config: ``num_hidden_layers``, ``num_attention_heads``,
            ``num_key_value_heads`` (default: the attention heads), ``head_dim`` (default:
            ``hidden_size / num_attention_heads``).
        itemsize: bytes per element of the cache's dtype (the model's: 4 for fp32, 2 for bf16).
    """
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * itemsize


def kv_cache_budget(config: Any, itemsize: int, *, context_length: int, sequences: int, device_type: str,
                    memory_bytes: int, max_batch_tokens: int | None = None, needs_mask: bool = True) -> KVBudget:
    """The cache the server needs: ``sequences`` full contexts, capped by the device, never below one.

    Formula (all in tokens, then bytes)::

        M          = max_batch_tokens, or CPU_MAX_BATCH_TOKENS on a CPU, or 8192 (transformers') on a GPU
        per_token  = 2 × layers × kv_heads × head_dim × itemsize        (kv_bytes_per_token)
                     + M × itemsize  when the attention needs a mask   (eager/sdpa: CPU, GPU without flash)
        need       = sequences × context_length
        ceiling    = CPU: min(memory_bytes / 16, 256 MiB);  GPU: memory_bytes / 2   (bytes)
        tokens     = max(context_length, min(need, ceiling // per_token)), rounded up to PAGE_SIZE
        num_blocks = tokens / PAGE_SIZE

    The demo model (2 layers, 2 KV heads of 16, fp32, 4,096-token context) with ``--max-queue
    64`` on a CPU: per_token = 512 + 256 × 4 = 1,536 B, need = 262,144 tokens, 384 MiB.

    Args:
        config: the model's text config (see :func:`kv_bytes_per_token`).
        itemsize: bytes per element of the model's dtype.
        context_length: most tokens (prompt + answer) one request can hold (``ChatModel.context_length``).
        sequences: requests that may run at once (``--max-queue``), >= 1.
        device_type: ``"cpu"``, ``"cuda"``, ...
        memory_bytes: on a CPU the machine's total RAM; on a GPU its free memory (bytes).
        max_batch_tokens: ``--max-batch-tokens``; None picks per device (above).
        needs_mask: False for flash attention (no mask tensor).

    Raises:
        ValueError: ``sequences`` or ``context_length`` below 1.
    """
    if sequences < 1 or context_length < 1:
        raise ValueError(f"sequences and context_length must be >= 1, got {sequences} and {context_length}")
    on_cpu = device_type == "cpu"
    if max_batch_tokens is None and on_cpu:
        max_batch_tokens = CPU_MAX_BATCH_TOKENS
    mask_width = max_batch_tokens or 8192
    per_token = kv_bytes_per_token(config, itemsize) + (mask_width * itemsize if needs_mask else 0)
    ceiling = min(int(memory_bytes * CPU_RAM_SHARE), CPU_MAX_BYTES) if on_cpu else int(memory_bytes * GPU_FREE_SHARE)
    need = sequences * context_length
    tokens = max(context_length, min(need, ceiling // per_token))
    num_blocks = math.ceil(tokens / PAGE_SIZE)
    return KVBudget(num_blocks=num_blocks, max_batch_tokens=max_batch_tokens, tokens=num_blocks * PAGE_SIZE,
                    bytes_per_token=per_token, capped=tokens < need)


def device_memory(device: Any) -> int:
    """``memory_bytes`` for :func:`kv_cache_budget`: a CUDA device's free memory, else total RAM (bytes)."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().total)
