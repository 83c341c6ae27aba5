"""Key/value cache for TtT decoding: ragged rows, per-row commit or discard, and the cached forward.

Why not `transformers.DynamicCache`: a batch of chat prompts has different lengths, and its rows change
mode at different times (one row decodes text while another runs diffusion steps over an audio span).
DynamicCache keeps one length for all rows, so that would need left padding, per-row holes for the steps
whose keys must be thrown away, and a `crop` + copy after every diffusion step. Here every row owns the
slots [0, length[row]) of a preallocated buffer, at its own positions (slot index == RoPE position, no
padding anywhere), and a forward over a chunk writes the chunk's keys at [length[row], length[row] + Q):
- `keep` advances a row's length over the leading tokens of its chunk (text tokens, a prompt, a finished
  audio span or, block-causal, the finished blocks of a span), so their keys stay for every later query;
- the rest of a chunk (a diffusion step's tokens, computed with [M] inside the block) is simply overwritten
  by the next chunk and never visible: it cannot leak, and nothing is copied or cropped.

A chunk's queries see every committed key of their row (the prefix is always complete: text is causal and
an audio span is one block, or block-causal a run of blocks that are causal to each other, so nothing inside
a chunk may be seen by anything before it) and, inside the chunk, what `ttt_model.core.attention.allowed` permits
for the chunk's own block ids. That is exactly the training mask restricted to the new rows of the sequence,
which is why cached decoding reproduces the full-recompute oracle (`ttt_model.decoding.recompute.RecomputeBackend`)
token for token.

`RaggedKVCache` duck-types the one `Cache` method Qwen2 attention calls (`update`); Qwen2Model consults
the cache for nothing else when `position_ids` are explicit and `attention_mask` is a per-layer dict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import Qwen2ForCausalLM

from ttt_model.core.attention import allowed
from ttt_model.core.model import forward_masked


@dataclass(frozen=True)
class Chunk:
    """New tokens of one row for one forward pass.

    `blocks` holds chunk-local block ids (-1 = causal token; tokens with equal ids >= 0 attend to each
    other bidirectionally, increasing ids are causal to each other). `keep`: how many leading tokens of the
    chunk stay in the cache (0 = none, len = all; the kept tokens must not attend to the rest, which a prefix
    of whole blocks and causal tokens never does); `last_only` returns the hidden state of the last token only
    (it predicts the next token) instead of all of them.
    """

    row: int
    ids: Sequence[int]
    blocks: np.ndarray
    keep: int
    last_only: bool

    def __post_init__(self) -> None:
        if not 0 <= self.keep <= len(self.ids):
            raise ValueError(f"a chunk of {len(self.ids)} tokens cannot keep {self.keep}")

    def __len__(self) -> int:
        return len(self.ids)


class RaggedKVCache:
    """Per-layer [B, H_kv, capacity, D] buffers with one committed length per row (see the module docstring)."""

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, capacity: int = 256) -> None:
        shape = (batch, n_kv_heads, max(capacity, 1), head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.lengths = [0] * batch
        self._rows: torch.Tensor | None = None
        self._slots: torch.Tensor | None = None
        self._kv_len = 0
        self._all_rows = False

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def begin(self, rows: Sequence[int], q_len: int) -> torch.Tensor:
        """Prepare a forward over chunks of `q_len` (padded) tokens for `rows`, growing the buffers if needed.

        Returns the chunk tokens' positions [n, Q]: their slots, which are their positions in the sequence.
        """
        device = self.keys[0].device
        starts = torch.tensor([self.lengths[r] for r in rows], device=device)
        self._kv_len = max(self.lengths[r] for r in rows) + q_len
        self._grow(self._kv_len)
        self._rows = torch.tensor(list(rows), device=device)
        self._slots = starts[:, None] + torch.arange(q_len, device=device)
        self._all_rows = list(rows) == list(range(len(self.lengths)))
        return self._slots

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this chunk's keys/values after each row's committed slots; return the rows' [0, kv_len) slots."""
        if self._rows is None or self._slots is None:
            raise RuntimeError("RaggedKVCache.update called outside begin()/commit()")
        rows, slots = self._rows[:, None], self._slots
        k_buf, v_buf = self.keys[layer_idx], self.values[layer_idx]
        # advanced indices (rows, slots) around a slice: the indexed view is [n, Q, H, D]
        k_buf[rows, :, slots] = key_states.transpose(1, 2).to(k_buf.dtype)
        v_buf[rows, :, slots] = value_states.transpose(1, 2).to(v_buf.dtype)
        k, v = k_buf[:, :, : self._kv_len], v_buf[:, :, : self._kv_len]
        if not self._all_rows:
            k, v = k.index_select(0, self._rows), v.index_select(0, self._rows)
        return k, v

    def commit(self, rows: Sequence[int], keep: Sequence[int]) -> None:
        """Keep the first `keep[i]` chunk tokens of `rows[i]`; the rest of the chunk is discarded."""
        for r, n in zip(rows, keep, strict=True):
            self.lengths[r] += int(n)
        self._rows = self._slots = None

    def chunk_mask(self, rows: Sequence[int], blocks: torch.Tensor, n_real: torch.Tensor) -> torch.Tensor:
        """Bool [n, 1, Q, kv_len] mask (True = attend) for chunks with block ids `blocks` [n, Q] and
        `n_real` [n] real tokens each (the rest is padding, which attends to itself only)."""
        device = blocks.device
        n, q_len = blocks.shape
        pos = torch.arange(q_len, device=device)
        real = pos[None, :] < n_real[:, None]
        doc = torch.where(real, 0, -1)
        intra = allowed(doc[:, :, None], doc[:, None, :], blocks[:, :, None], blocks[:, None, :],
                        pos[:, None], pos[None, :])  # [n, Q, Q]
        starts = torch.tensor([self.lengths[r] for r in rows], device=device)
        key = torch.arange(self._kv_len, device=device)
        rel = key[None, :] - starts[:, None]  # [n, kv_len]: key slot relative to the chunk start
        in_chunk = (rel >= 0) & (rel < q_len)
        intra_at_key = intra.gather(2, rel.clamp(0, q_len - 1)[:, None, :].expand(n, q_len, -1))
        prefix = (rel < 0)[:, None, :] & real[:, :, None]
        return (prefix | (intra_at_key & in_chunk[:, None, :]))[:, None]

    def _grow(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        new_cap = max(needed, 2 * self.capacity)
        for bufs in (self.keys, self.values):
            for i, old in enumerate(bufs):
                new = old.new_zeros((*old.shape[:2], new_cap, old.shape[3]))
                new[:, :, : old.shape[2]] = old
                bufs[i] = new


class CachedBackend:
    """Runs chunks through the model against a `RaggedKVCache` (the fast path of the sampler).

    Chunks of one token (text decoding) and longer chunks (prompts, audio spans) go in separate forward
    passes, so a row decoding text never pays for padding up to another row's span length.
    """

    def __init__(self, model: Qwen2ForCausalLM, batch: int, pad_id: int) -> None:
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.model = model
        self.pad_id = pad_id
        self.cache = RaggedKVCache(cfg.num_hidden_layers, batch, cfg.num_key_value_heads, head_dim,
                                   model.dtype, model.device)
        self.forward_passes = 0
        self.tokens_processed = 0

    def run(self, chunks: Sequence[Chunk]) -> list[torch.Tensor]:
        """Hidden states per chunk: [H] (last_only) or [len, H], in the order of `chunks`."""
        out: dict[int, torch.Tensor] = {}
        for single in (True, False):
            group = [i for i, c in enumerate(chunks) if (len(c) == 1) == single]
            if group:
                out.update(zip(group, self._forward([chunks[i] for i in group]), strict=True))
        return [out[i] for i in range(len(chunks))]

    def _forward(self, chunks: Sequence[Chunk]) -> list[torch.Tensor]:
        device = self.model.device
        rows = [c.row for c in chunks]
        q_len = max(len(c) for c in chunks)
        ids = torch.full((len(chunks), q_len), self.pad_id, dtype=torch.long)
        blocks = torch.full((len(chunks), q_len), -1, dtype=torch.long)
        for i, c in enumerate(chunks):
            ids[i, : len(c)] = torch.as_tensor(list(c.ids), dtype=torch.long)
            blocks[i, : len(c)] = torch.as_tensor(c.blocks, dtype=torch.long)
        n_real = torch.tensor([len(c) for c in chunks], device=device)
        cache = self.cache
        positions = cache.begin(rows, q_len)
        mask = cache.chunk_mask(rows, blocks.to(device), n_real)
        hidden = forward_masked(self.model, ids.to(device), positions, mask, cache=cache)
        cache.commit(rows, [c.keep for c in chunks])
        self.forward_passes += 1
        self.tokens_processed += int(n_real.sum())
        return [hidden[i, len(c) - 1] if c.last_only else hidden[i, : len(c)] for i, c in enumerate(chunks)]
