"""The batched decoding loop every decoder shares (`DecodeRun`), with the AR text step and the span bookkeeping
that the TtT and AR decoders have in common.

A run holds one `RowState` per prompt and one backend (`CachedBackend`, or the oracle `RecomputeBackend`). Each
iteration asks every unfinished row what it feeds the next forward pass (`_next_chunk`), runs all those chunks in
one backend call, and hands every row its hidden states back:

- a causal pass that returns only the last state (the prompt, a text token, ar: a code): that state predicts the
  next token (`_choose_next_token`);
- any other pass is a diffusion step over the open span (ttt) or the response block (nar): `_diffusion_step`.

The three decoders fill these hooks in: `BlockDiffusionRun` (ttt_model/decoding/block_diffusion.py, the paper's
Algorithm 1), `ArDecodeRun` (ar_decoder.py) and `NarDecodeRun` (nar_decoder.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from tokenization.vocab import SOA_FINAL
from ttt_model.decoding.events import AudioBlock, DecodeStats, Event, Generation, SpanEnd, TextDelta, TurnEnd
from ttt_model.decoding.kv_cache import CachedBackend, Chunk
from ttt_model.decoding.prompt import prompt_block_ids
from ttt_model.decoding.recompute import RecomputeBackend
from ttt_model.decoding.row_state import Detokenizer, ResponseState, RowState, SpanState
from ttt_model.decoding.token_sampling import select_commits

if TYPE_CHECKING:
    from ttt_model.decoding.ttt_sampler import TtTSampler


def masked_positions(ids: list[int], start: int, mask_id: int) -> np.ndarray:
    """Indices j >= start where `ids` still holds the mask: the tokens a diffusion step predicts."""
    return np.array([j for j in range(start, len(ids)) if ids[j] == mask_id], dtype=np.int64)


class DecodeRun:
    """One decoding run over a batch of prompts: iterate it for events; `results()` and `stats` after."""

    def __init__(self, sampler: TtTSampler, prompts: list[list[int]]) -> None:
        self.sampler = sampler
        cfg = sampler.cfg
        self.stats = DecodeStats()
        device = sampler.device
        model = sampler.model
        self.backend = (CachedBackend(model, len(prompts), sampler.vocab.pad_id) if cfg.backend == "cache"
                        else RecomputeBackend(model, len(prompts)))
        blocks = [prompt_block_ids(sampler.vocab, p, sampler.decode, sampler.span_block) for p in prompts]
        self.rows = [
            RowState(index=i, prompt=p, prompt_blocks=blocks[i],
                     budget=min(cfg.max_new_tokens, sampler.max_length - len(p)), detok=Detokenizer(sampler.vocab),
                     generator=torch.Generator(device=device).manual_seed(cfg.seed + i))
            for i, p in enumerate(prompts)
        ]

    def __iter__(self) -> Iterator[Event]:
        with torch.inference_mode():
            while True:
                active = [r for r in self.rows if r.finish_reason is None]
                if not active:
                    break
                chunks = [self._next_chunk(r) for r in active]
                hidden = self.backend.run(chunks)
                self.stats.forward_passes = self.backend.forward_passes
                self.stats.tokens_processed = self.backend.tokens_processed
                for row, chunk, h in zip(active, chunks, hidden, strict=True):
                    if chunk.last_only:
                        yield from self._choose_next_token(row, h)
                    else:
                        yield from self._diffusion_step(row, h)

    def results(self) -> list[Generation]:
        out = []
        for r in self.rows:
            text = self.sampler.vocab.text.decode(r.detok.ids)
            out.append(Generation(list(r.generated), text, list(r.spans), r.finish_reason or "unfinished"))
        return out

    # -- what each row feeds the next forward pass ---------------------------------------------------
    def _next_chunk(self, row: RowState) -> Chunk:
        """The chunk `row` feeds the next forward pass: here its prompt first, then its last text token."""
        if not row.prefilled:
            return self._prompt_chunk(row)
        assert row.next_token is not None
        return Chunk(row.index, [row.next_token], np.full(1, -1), keep=1, last_only=True)

    def _prompt_chunk(self, row: RowState) -> Chunk:
        """The prefill: the whole prompt (nar: the part before the response block), kept in the cache."""
        row.prefilled = True
        n = len(row.prompt)
        return Chunk(row.index, row.prompt, row.prompt_blocks[:n], keep=n, last_only=True)

    # -- after a causal pass: the text step ----------------------------------------------------------
    def _choose_next_token(self, row: RowState, hidden: torch.Tensor) -> Iterator[Event]:
        """`hidden` is the last fed token's state and predicts the next token: here a text token or an opener."""
        row.span = None  # a closing span is now in the cache
        s = self.sampler
        token = s.next_text_token(row.index, row.generated, hidden, row.generator)
        row.generated.append(token)
        row.budget -= 1
        if token in s.stop_ids:
            yield from self._end_turn(row, "eos")
            return
        if token in s.closer_for:  # an opener
            if row.budget == 0:
                yield from self._end_turn(row, "length")
                return
            yield from self._enter_span(row, token)
            return
        self.stats.text_tokens += 1
        delta = row.detok.push(token)
        if delta:
            yield TextDelta(row.index, delta)
        if row.budget == 0:
            yield from self._end_turn(row, "length")
        else:
            row.next_token = token

    def _end_turn(self, row: RowState, reason: str) -> Iterator[Event]:
        """Finish `row`: flush its pending text and yield its `TurnEnd`."""
        rest = row.detok.flush()
        if rest:
            yield TextDelta(row.index, rest)
        row.finish_reason = reason
        yield TurnEnd(row.index, reason)

    # -- hooks the decoders define: ttt both, ar `_enter_span` only (all its passes are causal), nar
    # `_diffusion_step` only (it never takes this text step). Reaching one a decoder lacks is a bug in the loop.
    def _enter_span(self, row: RowState, opener: int) -> Iterator[Event]:
        """The text step chose `opener`: set up the audio span that follows it."""
        raise NotImplementedError(f"{type(self).__name__} never opens an audio span from the text step")

    def _diffusion_step(self, row: RowState, hidden: torch.Tensor) -> Iterator[Event]:
        """Commit the most confident masked positions from the states `hidden` of a span/response pass."""
        raise NotImplementedError(f"{type(self).__name__} runs no diffusion pass")

    # -- audio spans (ttt, ar) -------------------------------------------------------------------------
    def _commit(self, block: SpanState | ResponseState, targets: np.ndarray, tokens: torch.Tensor,
                conf: torch.Tensor) -> None:
        """Commit one diffusion step's proposals for the masked `targets` of `block`: the step's share of the commit
        schedule, most confident first (or every proposal above the threshold), then count the step."""
        k = block.schedule[min(block.step, len(block.schedule) - 1)]
        picked = tokens.tolist()
        for i in select_commits(conf, k, self.sampler.cfg.threshold).tolist():
            block.ids[int(targets[i])] = picked[i]
        block.step += 1
        self.stats.diffusion_steps += 1

    def _new_span(self, row: RowState, opener: int) -> SpanState:
        """Open an empty span after `opener` as `row.span`, with room for as many codes as the budget allows."""
        limit = min(self.sampler.cfg.max_span, row.budget - 1)  # leave room for the closer
        row.spans.append(np.zeros(0, dtype=np.int64))
        row.span = SpanState(index=len(row.spans) - 1, opener=opener, closer=self.sampler.closer_for[opener],
                             limit=limit, ids=[opener])
        return row.span

    def _emit_span_codes(self, row: RowState, end: int) -> Iterator[Event]:
        """An `AudioBlock` with the open span's codes not yet sent, up to span index `end` (exclusive)."""
        span = row.span
        assert span is not None
        if end > span.emitted:
            codes = np.asarray(span.ids[span.emitted : end], dtype=np.int64) - self.sampler.vocab.audio_offset
            span.emitted = end
            yield AudioBlock(row.index, span.index, codes)

    def _finish_span(self, row: RowState) -> Iterator[Event]:
        """The span is final (ids end with its closer): emit the rest, account for it, and queue the pass
        that commits its keys/values."""
        span = row.span
        assert span is not None
        yield from self._emit_span_codes(row, len(span.ids) - 1)
        n_codes = len(span.ids) - 2
        row.spans[span.index] = np.asarray(span.ids[1:-1], dtype=np.int64) - self.sampler.vocab.audio_offset
        row.generated += span.ids[1:]
        row.budget -= len(span.ids) - 1
        span.closing = True
        self.stats.spans += 1
        self.stats.audio_tokens += n_codes
        yield SpanEnd(row.index, span.index, span.opener == self.sampler.vocab.id(SOA_FINAL), n_codes, span.forced)
        if row.budget == 0:
            yield from self._end_turn(row, "length")
