"""The hybrid loss L = L_AR(text) + L_AO(audio), with logits computed only where there is a target.

Per micro-batch the model returns SUMS (`hybrid_loss_sums`); `combine` divides them by counts of the
whole optimizer step (all micro-batches × all data-parallel ranks), so the loss and its gradient do not
depend on how the step is split into micro-batches (the reference summed per-micro-batch means):
- L_AR = Σ_AR-targets CE / N_AR, N_AR = number of AR targets in the step;
- L_AO = Σ_masked CE / p / N_maskable, N_maskable = number of tokens subject to masking in the step
  (the paper's normaliser). E[Σ_masked CE / p] = Σ_maskable CE, so L_AO is an unbiased estimate of the
  mean per-token loss of the clean-vs-masked prediction at noise level p.
With `objective.task_weights` each target's CE is first multiplied by its sample's task weight (carried in
`PackedBatch.loss_weight`); the normalisers stay target counts, so no weights is exactly the paper's loss.

Only positions with a target get logits: gathering their hidden states before the LM head avoids
computing B × L × V logits (V ≈ 156k), the dominant cost of a small model on CPU. The head runs in chunks
so the float32 logits of a chunk, not of the batch, are alive at once; `checkpoint=True` also frees them
for the backward pass (recomputing the chunk's matmul there).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from tokenization.vocab import UnifiedVocab
from ttt_model.core.collator import PackedBatch
from ttt_model.core.objective import KIND_AR, KIND_DIFFUSION, ObjectiveConfig


@dataclass
class LossSums:
    """Un-normalised loss terms of one micro-batch (`ar_count` / `diff_count`: AR / masked positions)."""

    ar_sum: torch.Tensor
    ar_count: int
    diff_sum: torch.Tensor
    diff_count: int

    def __add__(self, other: LossSums) -> LossSums:
        return LossSums(
            self.ar_sum + other.ar_sum,
            self.ar_count + other.ar_count,
            self.diff_sum + other.diff_sum,
            self.diff_count + other.diff_count,
        )


def diffusion_vocab(vocab: UnifiedVocab, cfg: ObjectiveConfig) -> torch.Tensor | None:
    """Ids the diffusion positions are scored over: None = the full vocabulary (the paper); with
    audio_head=restricted, the audio codes and the span closers (all a masked audio token can be)."""
    if cfg.audio_head == "full":
        return None
    codes = torch.arange(vocab.audio_offset, vocab.audio_offset + vocab.codebook_size)
    return torch.cat([codes, torch.tensor(vocab.closer_ids())]).sort().values


def _chunk_ce(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = hidden @ weight.T  # in the model's dtype; the softmax runs in at least float32
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), labels, reduction="none")


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_size: int = 1024, checkpoint: bool = False
) -> torch.Tensor:
    """Per-row CE of `hidden @ weight.T` against `labels`, `chunk_size` rows of logits at a time.

    With no rows it still runs one empty chunk, so the result stays attached to the autograd graph: a
    micro-batch without targets must still back-propagate (zeros), or DDP/FSDP ranks would desynchronise.
    """
    out = []
    use_ckpt = checkpoint and torch.is_grad_enabled()
    for start in range(0, max(hidden.shape[0], 1), chunk_size):
        args = (hidden[start : start + chunk_size], weight, labels[start : start + chunk_size])
        out.append(activation_checkpoint(_chunk_ce, *args, use_reentrant=False) if use_ckpt else _chunk_ce(*args))
    return torch.cat(out)


def hybrid_loss_sums(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    batch: PackedBatch,
    *,
    diffusion_ids: torch.Tensor | None = None,
    chunk_size: int = 1024,
    checkpoint: bool = False,
) -> LossSums:
    """Sums of the AR and weighted diffusion cross-entropies of one micro-batch.

    hidden: [B, L, H] final hidden states (after the last norm); lm_head_weight: [V, H].
    diffusion_ids: sorted ids scoring the diffusion positions (`diffusion_vocab`), None = full head.
    """
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    kind = batch.loss_kind.reshape(-1).to(hidden.device)
    labels = batch.labels.reshape(-1).to(hidden.device)
    weight = batch.loss_weight.reshape(-1).to(hidden.device)
    ar = torch.nonzero(kind == KIND_AR).squeeze(1)
    diff = torch.nonzero(kind == KIND_DIFFUSION).squeeze(1)
    if diffusion_ids is None:
        # One head pass over both kinds: every separate `hidden @ weight.T` adds its own dense [V, H] weight
        # gradient in the backward (40M floats with the full vocabulary, ~10 % of a small model's CPU step).
        both = torch.cat([ar, diff])
        ce = chunked_cross_entropy(flat_hidden[both], lm_head_weight, labels[both], chunk_size, checkpoint)
        ar_ce, diff_ce = ce[: len(ar)], ce[len(ar) :]
        return LossSums((ar_ce * weight[ar]).sum(), len(ar), (diff_ce * weight[diff]).sum(), len(diff))
    ar_ce = chunked_cross_entropy(flat_hidden[ar], lm_head_weight, labels[ar], chunk_size, checkpoint)
    ids = diffusion_ids.to(hidden.device)
    diff_head = lm_head_weight[ids]
    diff_labels = torch.searchsorted(ids, labels[diff])
    if not torch.equal(ids[diff_labels.clamp(max=len(ids) - 1)], labels[diff]):
        raise ValueError("a diffusion target lies outside the restricted audio head")
    diff_ce = chunked_cross_entropy(flat_hidden[diff], diff_head, diff_labels, chunk_size, checkpoint)
    return LossSums((ar_ce * weight[ar]).sum(), len(ar), (diff_ce * weight[diff]).sum(), len(diff))


def global_counts(batches: Iterable[PackedBatch], device: torch.device | str = "cpu") -> tuple[int, int]:
    """(N_AR, N_maskable) of a whole optimizer step: summed over this rank's micro-batches, then
    all-reduced over the data-parallel ranks when torch.distributed is initialised. Counts come from
    the batches alone, so they are known before any forward pass (one all-reduce per step)."""
    local = [0, 0]
    for b in batches:
        local[0] += b.n_ar
        local[1] += b.n_maskable
    counts = torch.tensor(local, dtype=torch.int64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(counts)
    return int(counts[0]), int(counts[1])


def combine(
    sums: LossSums, global_n_ar: int, global_n_maskable: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, loss_ar, loss_diffusion): this micro-batch's share of the step's loss.

    Summed over all micro-batches and ranks of a step, these are the step's L_AR, L_AO and their sum.
    Back-propagate each micro-batch's `loss` and accumulate; because DDP/FSDP AVERAGE gradients over
    ranks, multiply the loss by the world size there to get the gradient of the global loss.
    Zero counts: a term whose global count is 0 has no targets anywhere in the step, so its sum is 0
    and it contributes exactly 0 (the count is clamped to 1 instead of producing 0/0 = NaN).
    """
    if global_n_ar < sums.ar_count:
        raise ValueError(f"global AR count {global_n_ar} < this micro-batch's {sums.ar_count}")
    if global_n_maskable < sums.diff_count:
        raise ValueError(f"global maskable count {global_n_maskable} < this micro-batch's masked {sums.diff_count}")
    loss_ar = sums.ar_sum / max(global_n_ar, 1)
    loss_diffusion = sums.diff_sum / max(global_n_maskable, 1)
    return loss_ar + loss_diffusion, loss_ar, loss_diffusion
