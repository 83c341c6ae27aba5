"""Modality-aware attention, defined once as a predicate over per-token metadata.

Every backend is derived from `allowed`, so the CPU mask and the CUDA block mask cannot drift apart:

    allowed(q, k) = doc[q] == doc[k] != -1 and (k <= q or (block[q] != -1 and block[q] == block[k]))
                    or q == k

- `doc_ids` number the packed samples of a row (-1 = padding): nothing crosses a sample boundary, so
  packing several samples into one row is exact.
- `block_ids` number the bidirectional blocks of a row (-1 = causal token). For TtT a block is one audio
  span `[opener, codes..., closer]`: audio attends bidirectionally inside its span and causally to
  everything before it; text is causal. Nothing attends to the future outside its own block. Block-causal
  audio spans (objective `audio_attention: block_causal`) need no other predicate: each run of `audio_block`
  tokens of a span gets its own block id (ttt_model/core/objective.py `span_blocks`), and consecutive blocks are
  then causal to each other by the `k <= q` term.
- `q == k` lets a padding query attend to itself: a fully masked softmax row is NaN in SDPA, and a NaN
  in the forward pass poisons the backward pass even where the loss weight is zero.

Backends: `sdpa_mask` (a boolean [B, 1, L, L] mask, True = attend, for CPU / SDPA) and
`flex_block_mask` (a FlexAttention BlockMask for CUDA kernels, built once per batch and shared by all
layers; its block sparsity skips whole tiles across packed-sample boundaries). There is deliberately no
dense additive float mask: it costs 4 bytes per entry and rules out fused kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask


class MaskMeta(Protocol):
    """Anything carrying the two metadata tensors (a PackedBatch does)."""

    doc_ids: torch.Tensor  # [B, L] long, -1 = padding
    block_ids: torch.Tensor  # [B, L] long, -1 = causal token


def allowed(
    doc_q: torch.Tensor,
    doc_k: torch.Tensor,
    block_q: torch.Tensor,
    block_k: torch.Tensor,
    q_idx: torch.Tensor,
    kv_idx: torch.Tensor,
) -> torch.Tensor:
    """The attention predicate on broadcastable tensors (True = query q may attend to key k)."""
    same_doc = (doc_q == doc_k) & (doc_q >= 0)
    same_block = (block_q >= 0) & (block_q == block_k)
    return (same_doc & ((kv_idx <= q_idx) | same_block)) | (q_idx == kv_idx)


def sdpa_mask(doc_ids: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    """Boolean [B, 1, L, L] mask (True = attend) for `scaled_dot_product_attention`, built vectorised."""
    pos = torch.arange(doc_ids.shape[1], device=doc_ids.device)
    mask = allowed(
        doc_ids[:, :, None],
        doc_ids[:, None, :],
        block_ids[:, :, None],
        block_ids[:, None, :],
        pos[:, None],
        pos[None, :],
    )
    return mask[:, None]


MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def mask_mod_for(doc_ids: torch.Tensor, block_ids: torch.Tensor) -> MaskMod:
    """The FlexAttention `mask_mod(b, h, q_idx, kv_idx)` closure over one batch's metadata.

    FlexAttention may call `mask_mod` with indices up to the next multiple of its block size when the row
    length L is not one (pytorch/pytorch#137801: create_block_mask; the kernels evaluate whole tiles),
    and an out-of-range lookup into the metadata is an illegal memory access on CUDA. Indices are
    therefore clamped to L - 1 for the lookup and positions >= L are masked out.
    """
    last = doc_ids.shape[1] - 1

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        q, k = q_idx.clamp(max=last), kv_idx.clamp(max=last)
        inside = (q_idx <= last) & (kv_idx <= last)
        return inside & allowed(doc_ids[b, q], doc_ids[b, k], block_ids[b, q], block_ids[b, k], q_idx, kv_idx)

    return mask_mod


def flex_block_mask(doc_ids: torch.Tensor, block_ids: torch.Tensor, block_size: int = 128) -> BlockMask:
    """FlexAttention BlockMask over the same predicate (head-independent: H=None), on the tensors' device.
    Any row length works: the mask_mod is safe for the padded tail of the last tile."""
    batch, length = doc_ids.shape
    return create_block_mask(
        mask_mod_for(doc_ids, block_ids), batch, None, length, length, device=doc_ids.device, BLOCK_SIZE=block_size
    )


def build_attention(batch: MaskMeta, backend: Literal["sdpa", "flex"]) -> torch.Tensor | BlockMask:
    """The mask object a model's attention layers consume: build it once per batch, share it across layers."""
    if backend == "sdpa":
        return sdpa_mask(batch.doc_ids, batch.block_ids)
    if backend == "flex":
        return flex_block_mask(batch.doc_ids, batch.block_ids)
    raise ValueError(f"unknown attention backend {backend!r} (sdpa | flex)")
