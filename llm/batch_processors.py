"""Logits processors for transformers' continuous batching: the repetition penalty it lacks,
and top-k / top-p that cost nothing when no row of the batch filters.

Sampling: transformers' per-request ``ContinuousBatchingTopKLogitsWarper`` and
``ContinuousBatchingTopPLogitsWarper`` (5.25) each sort the whole vocabulary of every row on
every step, even for greedy requests (``top_k=1``, ``top_p=1``).  :class:`FastTopK` takes the
``max(top_k)`` largest scores instead (``torch.topk``) and :class:`SkippableTopP` returns the
scores untouched when every row's ``top_p`` is 1; both give exactly the originals' result.
Measured on this 2-core CPU with SmolLM2-135M (vocabulary 49,152): the two sorts were most of
what made one greedy batched stream slower than plain ``generate`` (docs/benchmarks.md,
"Batching by default?").  :func:`speed_up_sampling` swaps them in.

Repetition penalty:

transformers (5.25) drops ``RepetitionPenaltyLogitsProcessor`` from continuous batching
(``supports_continuous_batching = False``): its logits processors see only each sequence's
newest token, while the penalty needs all of a sequence's tokens.  The manager does hand each
per-request processor (``ContinuousBatchingLogitsProcessor``) the batch's request states before
the forward pass (``prepare_tensor_args``), and those hold the prompt (``initial_tokens``) and
the tokens generated so far (``generated_tokens``).  :class:`BatchRepetitionPenalty` is such a
processor: it gathers those tokens, row by row, and applies exactly the penalty of
``RepetitionPenaltyLogitsProcessor`` (a token's logit divided by the penalty if positive,
multiplied if negative, once per token).

Limit: the token ids travel beside the manager's static tensors, so CUDA graphs (which replay
fixed tensors) and async batching (where the newest token is still on the GPU when the next
batch is prepared) must be off while the penalty is on (:func:`install` says so), and under
``--compile`` the penalty runs outside the compiled graph.
"""
from __future__ import annotations

from typing import Any

import torch
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingLogitsProcessor,
    ContinuousBatchingTopKLogitsWarper,
    ContinuousBatchingTopPLogitsWarper,
)


class BatchRepetitionPenalty(ContinuousBatchingLogitsProcessor):
    """The repetition penalty, per request, over each sequence's prompt and generated tokens.

    Args:
        penalty: the default penalty (> 0; 1.0 = none), e.g. the model's generation_config value.
            A request may pass its own as ``repetition_penalty=`` to ``add_request``.
    """

    supported_kwargs = {"repetition_penalty": float}
    ignored_kwargs = ()

    def __init__(self, penalty: float):
        if not penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {penalty}")
        self.penalty = float(penalty)
        self._tokens: dict[str, tuple[Any, torch.Tensor, int]] = {}  # request id -> (state, buffer, filled)
        self._ids: torch.Tensor | None = None  # [rows, longest], the rows' token ids (padded with a row's own id)

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        """Fill one argument row with the default penalty (float32 stored as int32, as transformers does)."""
        default = torch.empty_like(int32_tensor, dtype=torch.float32)
        default.fill_(self.penalty)
        int32_tensor.copy_(default.view(dtype=torch.int32))

    def _history(self, state: Any) -> tuple[torch.Tensor, int]:
        """The state's prompt + generated token ids so far (a growing per-request buffer, so each
        step copies only the new tokens)."""
        prompt, generated = state.initial_tokens, state.generated_tokens
        kept = self._tokens.get(state.request_id)
        if kept is None or kept[0] is not state:  # new, or re-queued as a new state (prompt + tokens so far)
            buffer = torch.empty(len(prompt) + max(64, len(generated)), dtype=torch.long)
            buffer[:len(prompt)] = torch.tensor(prompt, dtype=torch.long)
            kept = (state, buffer, len(prompt))
        state_, buffer, filled = kept
        total = len(prompt) + len(generated)
        if total > buffer.numel():
            grown = torch.empty(2 * total, dtype=torch.long)
            grown[:filled] = buffer[:filled]
            buffer = grown
        if total > filled:
            buffer[filled:total] = torch.tensor(generated[filled - len(prompt):], dtype=torch.long)
        self._tokens[state.request_id] = (state_, buffer, total)
        return buffer, total

    def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
        """Per row (a request about to get a token): its penalty (float32 viewed as int32), and,
        kept for :meth:`__call__`, its token ids."""
        histories = [self._history(r.state) for r in requests_with_new_token]
        live = {r.state.request_id for r in requests_with_new_token}
        for rid in [rid for rid in self._tokens if rid not in live]:
            del self._tokens[rid]  # finished, cancelled or waiting: rebuilt when it comes back
        longest = max((n for _, n in histories), default=1)
        ids = torch.empty((len(histories), max(longest, 1)), dtype=torch.long)
        for row, (buffer, n) in enumerate(histories):
            ids[row, :n] = buffer[:n]
            ids[row, n:] = buffer[0] if n else 0  # padding repeats a token of the row: penalised once anyway
        self._ids = ids
        penalties = [float(r.state.logit_processor_kwargs.get("repetition_penalty", self.penalty))
                     for r in requests_with_new_token]
        return torch.tensor(penalties, dtype=torch.float32).view(dtype=torch.int32)

    @torch.compiler.disable  # reads token ids set outside the (possibly compiled) forward: always run eagerly
    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        """Scores [rows, vocab] with each row's tokens penalised (as ``RepetitionPenaltyLogitsProcessor``)."""
        if self._ids is None:
            return scores
        rows = min(scores.size(0), self._ids.size(0))  # rows beyond the requests (padding) are left as they are
        ids = self._ids[:rows].to(scores.device, non_blocking=True)
        penalty = tensor_arg[:rows].view(dtype=torch.float32).unsqueeze(-1).to(scores.dtype)
        picked = torch.gather(scores[:rows], 1, ids)
        picked = torch.where(picked < 0, picked * penalty, picked / penalty)
        penalised = scores[:rows].scatter(1, ids, picked)
        return penalised if rows == scores.size(0) else torch.cat([penalised, scores[rows:]])


def install(manager: Any, penalty: float) -> BatchRepetitionPenalty:
    """Put a :class:`BatchRepetitionPenalty` first in ``manager``'s logits processors (where
    ``generate`` applies the penalty: before temperature, top-k and top-p).  Call it after
    ``model.init_continuous_batching`` and before ``manager.start()``, with a
    ``ContinuousBatchingConfig`` that has ``use_cuda_graph=False`` and ``use_async_batching=False``.

    Returns:
        the installed processor.
    """
    processors = manager.logit_processor
    processor = BatchRepetitionPenalty(penalty)
    processors.logits_processor.insert(0, processor)
    processors.tensors_required += 1
    processors.supported_keys.update(processor.supported_kwargs)
    processors.do_processing = True
    return processors.logits_processor[0]


class FastTopK(ContinuousBatchingTopKLogitsWarper):
    """transformers' per-request top-k with ``torch.topk`` of the batch's largest k instead of a
    sort of the whole vocabulary, and nothing at all when no row filters (every k >= vocabulary)."""

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        """Scores [rows, vocab] with each row's scores below its k-th largest set to the filter value."""
        top_k = tensor_arg[: scores.size(0)].clamp(max=scores.size(-1))  # [rows]
        if int(top_k.min()) >= scores.size(-1):
            return scores
        largest = torch.topk(scores, int(top_k.max()), dim=-1).values  # [rows, max k], descending
        thresholds = largest.gather(dim=-1, index=(top_k - 1).unsqueeze(-1).to(dtype=torch.int64))
        return scores.masked_fill(scores < thresholds, self.filter_value)


class SkippableTopP(ContinuousBatchingTopPLogitsWarper):
    """transformers' per-request top-p, which leaves the scores untouched (no sort) when every
    row's ``top_p`` is >= 1: exactly what the full computation gives then (nothing is below
    a cumulative probability of 0)."""

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        """Scores [rows, vocab], top-p filtered per row unless no row filters."""
        top_p = tensor_arg[: scores.size(0)].view(dtype=torch.float32)
        if bool((top_p >= 1.0).all()):
            return scores
        return super().__call__(scores, tensor_arg)


_FASTER = {ContinuousBatchingTopKLogitsWarper: FastTopK, ContinuousBatchingTopPLogitsWarper: SkippableTopP}


def speed_up_sampling(manager: Any) -> int:
    """Swap the manager's per-request top-k and top-p warpers for :class:`FastTopK` and
    :class:`SkippableTopP` with the same settings.  Call it after ``model.init_continuous_batching``
    and before ``manager.start()``, for a model on the CPU only: the checks read the batch's
    values on the host, which under CUDA graphs would be captured once and on a GPU costs a
    synchronisation per step.

    Returns:
        how many warpers were swapped (0-2).
    """
    processors = manager.logit_processor.logits_processor
    swapped = 0
    for i, processor in enumerate(processors):
        faster = _FASTER.get(type(processor))
        if faster is not None:
            replacement = faster.__new__(faster)
            replacement.__dict__.update(processor.__dict__)
            processors[i] = replacement
            swapped += 1
    return swapped
