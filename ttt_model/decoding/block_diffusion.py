"""The TtT decoder (paper Algorithm 1, objective mode `ttt`): autoregressive text, block-wise diffusion inside
audio spans.

Conventions are the training ones (ttt_model/core/objective.py, tokenization/sequence.py): the logits at position
i predict token i + 1, for text and masked audio alike; an audio span [opener, codes..., closer] is one
bidirectional block that includes its opener (or, for a checkpoint trained with `audio_attention:
block_causal`, blocks of `audio_block` tokens, causal to each other; see below); text is causal; nothing
attends to the future outside its own block. Per row of a batch, decoding is a small state machine:

- text: one token per forward pass (KV cache), sampled from text ids and the two span openers. <|im_end|>
  (or <|endoftext|>) ends the turn (`DecodeRun._choose_next_token`, ttt_model/decoding/decode_run.py).
- audio span: after an opener (<|begin_of_audio|> closes with <|end_of_audio_new|>, <|begin_of_quad|> with
  <|end_of_audio_span_last|>) the span is [opener, M x block_length]. Each diffusion step runs the model on
  the span only (bidirectional inside it, full attention to the cached prefix); the position before each
  masked token predicts it, restricted to audio codes + the matching closer, and the most confident
  masked positions of the current block are committed (a per-block schedule of `steps_per_block` steps, or
  everything above `threshold`, as Fast-dLLM). Committed tokens stay. Once a closer is committed, everything
  after it leaves the span at once (early termination: a training span [opener, codes, closer] holds nothing
  after its closer, so the steps that still fill the masks before it must not attend to it), and the span ends
  when no mask is left; a block filled without a closer appends the next block of masks; at `max_span` codes
  the closer is forced (`BlockDiffusionRun._diffusion_step`).
- closing: the finished span is run once more with the span-block mask and its keys/values are committed
  to the cache exactly as training sees a clean span; the closer's logits predict the next text token.
- block-causal spans (the checkpoint's objective records `audio_attention: block_causal`, read like `decode:
  auto`; `block_length` must equal its `audio_block`): a step of decoding block j runs only span tokens
  [jB, (j + 1)B), the attention block whose positions predict codes jB + 1 .. (j + 1)B; the first step of
  the next block carries the finished block in front and commits it to the cache, so a finished block is
  computed once more, exactly as training sees it clean, and never again; the closing pass runs only what is
  not yet cached (`BlockDiffusionRun._uncached_span_chunk`). Everything else (schedule, threshold, early
  termination) is as above.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ttt_model.core.objective import span_blocks
from ttt_model.decoding.decode_run import DecodeRun, masked_positions
from ttt_model.decoding.events import Event
from ttt_model.decoding.kv_cache import Chunk
from ttt_model.decoding.row_state import RowState, SpanState
from ttt_model.decoding.token_sampling import commit_schedule


class BlockDiffusionRun(DecodeRun):
    """The TtT decoder over a batch of prompts (see the module docstring)."""

    # -- what each row feeds the next forward pass ---------------------------------------------------
    def _next_chunk(self, row: RowState) -> Chunk:
        """The prompt, then the last text token, or inside a span the span tokens a diffusion step (or the
        closing pass) runs."""
        if row.span is None:
            return super()._next_chunk(row)
        return self._uncached_span_chunk(row, row.span)

    def _uncached_span_chunk(self, row: RowState, span: SpanState) -> Chunk:
        """The span tokens a diffusion step (or the closing pass) runs: those not yet in the cache.

        Bidirectional: the whole span every step (nothing of it is final before its closer); the closing pass
        commits it. Block-causal (block length B): span tokens [jB, (j + 1)B) form attention block j, whose
        positions predict decoding block j (codes jB + 1 .. (j + 1)B, ttt_model/core/objective.py), so a step of
        block j runs that attention block only; code (j + 1)B is predicted inside it and seen by none of it.
        The first step of block j also carries the now final attention block j - 1 in front and keeps it
        (a finished block goes into the cache in the same pass, never to be recomputed); the closing pass
        commits what is left.
        """
        block, start = self.sampler.span_block, span.cached
        if span.closing:
            end, keep = len(span.ids), len(span.ids) - start
        elif block is None:
            end, keep = len(span.ids), 0
        else:
            first = span.block_start - 1  # the first token of the attention block of the current decoding block
            end, keep = min(len(span.ids), first + block), first - start
        local = span_blocks(end, block)[start:]
        span.fed, span.cached = start, start + keep
        return Chunk(row.index, span.ids[start:end], local - local[0], keep=keep, last_only=span.closing)

    # -- audio spans ---------------------------------------------------------------------------------
    def _enter_span(self, row: RowState, opener: int) -> Iterator[Event]:
        """Open the span with its first block of masks; a span with no room left for codes is closed at once."""
        span = self._new_span(row, opener)
        self._append_mask_block(span)
        if span.block_start == len(span.ids):
            span.ids.append(span.closer)
            span.forced = True
            yield from self._finish_span(row)

    def _append_mask_block(self, span: SpanState) -> None:
        """Append the next decoding block: up to `block_length` masks, as many as the span's limit leaves."""
        cfg = self.sampler.cfg
        n = min(cfg.block_length, span.limit - (len(span.ids) - 1))
        span.block_start = len(span.ids)
        span.ids += [self.sampler.vocab.mask_id] * n
        span.step = 0
        span.schedule = commit_schedule(n, cfg.steps_per_block) if n else []

    def _diffusion_step(self, row: RowState, hidden: torch.Tensor) -> Iterator[Event]:
        """One diffusion step: `hidden` [len(chunk), H] holds the states of the span positions the chunk ran."""
        s, span = self.sampler, row.span
        assert span is not None
        mask_id = s.vocab.mask_id
        ids = span.ids
        targets = masked_positions(ids, span.block_start, mask_id)
        # span position j - 1 predicts token j; the chunk started at span position `fed`
        states = hidden[torch.as_tensor(targets - 1 - span.fed, device=hidden.device)]
        tokens, conf = s.propose_audio(row.index, row.generated, states, targets, span.closer, row.generator)
        self._commit(span, targets, tokens, conf)
        cut = self._first_closer(span)
        if cut is not None:
            # training's span ends at its closer: what follows it must leave the block now, not when the span
            # closes, or the steps that still fill the masks before the closer would attend to it
            del ids[cut + 1 :]
        if mask_id in ids[span.block_start :]:
            return
        if cut is not None:
            yield from self._finish_span(row)
            return
        yield from self._emit_span_codes(row, len(ids))
        if len(ids) - 1 >= span.limit:
            ids.append(span.closer)
            span.forced = True
            yield from self._finish_span(row)
        else:
            self._append_mask_block(span)

    def _first_closer(self, span: SpanState) -> int | None:
        """Span index of the first committed closer, if any."""
        try:
            return span.ids.index(span.closer, 1)
        except ValueError:
            return None
