"""The full-recompute oracle (`sampler.backend: recompute`): the reference's decoding method, kept to prove the
fast path exact.

Two interchangeable backends compute the hidden states every decoder asks for: `CachedBackend`
(ttt_model/decoding/kv_cache.py; ragged KV cache, one-token text steps, span-only diffusion steps) and
`RecomputeBackend` here, which re-runs the full sequence for every token and every diffusion step under the
training mask (`ttt_model.core.attention.sdpa_mask`). In greedy mode both produce the same tokens. All token
choices (token_sampling.py) are shared, so any difference is the cache's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import Qwen2ForCausalLM

from ttt_model.core.attention import sdpa_mask
from ttt_model.core.model import forward_masked
from ttt_model.decoding.kv_cache import Chunk


class RecomputeBackend:
    """The reference's decoding method, kept as the correctness oracle: no cache, batch size 1, the whole
    sequence re-run for every chunk under the training mask built from its spans' block ids. (The reference
    also computes full-vocabulary logits at every position; the oracle leaves the head to the sampler,
    which applies it only where a token is chosen, so the two paths share every number after the model.)"""

    def __init__(self, model: Qwen2ForCausalLM, batch: int) -> None:
        self.model = model
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.blocks: list[list[int]] = [[] for _ in range(batch)]
        self.n_blocks = [0] * batch
        self.forward_passes = 0
        self.tokens_processed = 0

    def run(self, chunks: Sequence[Chunk]) -> list[torch.Tensor]:
        """Hidden states per chunk: [H] (last_only) or [len, H], in the order of `chunks`."""
        return [self._forward_chunk(c) for c in chunks]

    def inputs(self, chunk: Chunk) -> tuple[list[int], list[int]]:
        """The whole sequence the pass for `chunk` runs (committed tokens + the chunk) and its block ids (-1 =
        causal), the chunk's local blocks numbered after the committed ones."""
        r = chunk.row
        local = np.asarray(chunk.blocks, dtype=np.int64)
        chunk_blocks = np.where(local >= 0, local + self.n_blocks[r], -1).tolist()
        return self.tokens[r] + list(chunk.ids), self.blocks[r] + chunk_blocks

    def _forward_chunk(self, chunk: Chunk) -> torch.Tensor:
        """One pass over the whole sequence of `chunk`'s row; commits the chunk's first `keep` tokens."""
        r, device = chunk.row, self.model.device
        seq, seq_blocks = self.inputs(chunk)
        ids = torch.tensor([seq], device=device)
        blocks = torch.tensor([seq_blocks], device=device)
        mask = sdpa_mask(torch.zeros_like(ids), blocks)
        positions = torch.arange(ids.shape[1], device=device)[None]
        hidden = forward_masked(self.model, ids, positions, mask)[0, -len(chunk):]
        if chunk.keep:
            kept = len(self.tokens[r]) + chunk.keep
            self.tokens[r], self.blocks[r] = seq[:kept], seq_blocks[:kept]
            self.n_blocks[r] += int(np.max(chunk.blocks[: chunk.keep], initial=-1)) + 1
        self.forward_passes += 1
        self.tokens_processed += ids.shape[1]
        return hidden[-1] if chunk.last_only else hidden
