"""The NAR baseline's decoder (objective mode `nar`): the whole response is masked diffusion in one block.

Training (plan_targets, mode `nar`): an assistant turn's content + <|im_end|> is one target run; the run and
the position just before it (the "\\n" of the assistant header) form one bidirectional block; every target
token of the run, text and audio alike, is masked with probability p and predicted by the position before
it; prompt audio spans and earlier assistant turns are blocks of their own. The faithful decoder is
therefore: cache the prompt up to the response's block (causal / prompt blocks, as `prompt_block_ids`),
then grow the block [prompt's last token, response...] by `block_length` masks at a time (semi-
autoregressive growth, as LLaDA's block decoding); every diffusion step runs the WHOLE block bidirectionally
(committed response tokens and masks, nothing committed to the cache) and commits the most confident masks
of the newest block (`steps_per_block` schedule or `threshold`), over every token a training target can be
(text ids, openers, the two assistant closers, codes; `text` sampling params). Once <|im_end|> (or
<|endoftext|>) is committed, everything after it leaves the block at once (training's block ends exactly at
<|im_end|>, so the steps that still fill the masks before it must not attend past it), and the response ends
when no mask is left; a block filled without one appends the next block, up to the token budget ("length").

Where it cannot be faithful, and why:
- Length: training always sees the block end exactly at <|im_end|>, so the block's extent tells the model the
  answer's length; at inference the length is unknown and the block's end is only where the current masks
  stop. (LLaDA trains with <|endoftext|> padding to make a fixed canvas meaningful; this objective does not,
  so no canvas size matches training. Growing block by block keeps the end close to the committed text.)
- Structure: tokens are chosen in parallel, so nothing can force span structure. `max_span` does not apply
  (no closer can be forced into a position another step may already have filled). Events are read off the
  committed tokens in order, one block at a time (the tokens of a finished block never change): text ids
  become `TextDelta`s, an opener opens a span, codes inside it go out as `AudioBlock`s, its closer (or any
  other non-code token, which then counts as usual) ends it (`SpanEnd`; `forced` when not closed by its own
  closer), and codes or closers outside a span are kept in `ids` but are neither text nor speech.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from tokenization.vocab import SOA_FINAL
from ttt_model.decoding.decode_run import DecodeRun, masked_positions
from ttt_model.decoding.events import AudioBlock, Event, SpanEnd, TextDelta
from ttt_model.decoding.kv_cache import Chunk
from ttt_model.decoding.row_state import ResponseState, RowState
from ttt_model.decoding.token_sampling import commit_schedule

if TYPE_CHECKING:
    from ttt_model.decoding.ttt_sampler import TtTSampler


class NarDecodeRun(DecodeRun):
    """The NAR baseline's decoder over a batch of prompts (see the module docstring)."""

    def __init__(self, sampler: TtTSampler, prompts: list[list[int]]) -> None:
        super().__init__(sampler, prompts)
        for row in self.rows:
            blocks = row.prompt_blocks
            cut = int(np.flatnonzero(blocks == blocks[-1])[0])  # the response block starts here
            row.prompt, row.response = row.prompt[:cut], ResponseState(head=row.prompt[cut:])
            row.prefilled = cut == 0
            self._append_mask_block(row)

    def _next_chunk(self, row: RowState) -> Chunk:
        """The prompt before the response block, then every step the whole block [head, response...]."""
        if not row.prefilled:
            return self._prompt_chunk(row)
        resp = row.response
        assert resp is not None
        return Chunk(row.index, resp.head + resp.ids, np.zeros(len(resp.head) + len(resp.ids), dtype=np.int64),
                     keep=0, last_only=False)

    def _choose_next_token(self, row: RowState, hidden: torch.Tensor) -> Iterator[Event]:
        """The prompt prefix is in the cache; nothing is predicted from it (the response block predicts itself)."""
        return iter(())

    def _append_mask_block(self, row: RowState) -> None:
        """Grow the response by the next decoding block: up to `block_length` masks, as many as the budget leaves."""
        resp, cfg = row.response, self.sampler.cfg
        assert resp is not None
        n = min(cfg.block_length, row.budget - len(resp.ids))
        resp.block_start = len(resp.ids)
        resp.ids += [self.sampler.vocab.mask_id] * n
        resp.step = 0
        resp.schedule = commit_schedule(n, cfg.steps_per_block)

    def _first_stop(self, ids: list[int]) -> int | None:
        """Index of the first committed <|im_end|> / <|endoftext|> in `ids`, if any."""
        return next((j for j, t in enumerate(ids) if t in self.sampler.stop_ids), None)

    def _diffusion_step(self, row: RowState, hidden: torch.Tensor) -> Iterator[Event]:
        """One diffusion step: `hidden` [len(head) + len(ids), H] holds every state of the response block."""
        s, resp = self.sampler, row.response
        assert resp is not None
        mask_id, ids = s.vocab.mask_id, resp.ids
        targets = masked_positions(ids, resp.block_start, mask_id)
        # response token j sits at block position len(head) + j and is predicted by the position before it
        states = hidden[torch.as_tensor(len(resp.head) + targets - 1, device=hidden.device)]
        tokens, conf = s.propose_response(row.index, row.generated, states, targets, row.generator)
        self._commit(resp, targets, tokens, conf)
        stop = self._first_stop(ids)
        if stop is not None:
            # training's block ends exactly at <|im_end|>: what follows it must leave the block now, not when the
            # turn ends, or the steps that still fill the masks before it would attend to it
            del ids[stop + 1 :]
        if mask_id in ids[resp.block_start :]:
            return
        if stop is not None:
            yield from self._emit_committed(row, stop)
            row.generated = list(ids)
            yield from self._finish_parsed_span(row, forced=True)
            yield from self._end_turn(row, "eos")
            return
        yield from self._emit_committed(row, len(ids))
        row.generated = list(ids)
        if len(ids) >= row.budget:
            yield from self._finish_parsed_span(row, forced=True)
            yield from self._end_turn(row, "length")
        else:
            self._append_mask_block(row)

    def _emit_committed(self, row: RowState, end: int) -> Iterator[Event]:
        """Events for the committed response tokens [parsed, end) (see the module docstring)."""
        s, resp = self.sampler, row.response
        assert resp is not None
        v = s.vocab
        for token in resp.ids[resp.parsed : end]:
            if resp.closer is not None:
                if v.audio_offset <= token < v.audio_offset + v.codebook_size:
                    resp.codes.append(token - v.audio_offset)
                    continue
                closed = token == resp.closer
                yield from self._finish_parsed_span(row, forced=not closed)
                if closed:
                    continue
            if token in s.closer_for:
                row.spans.append(np.zeros(0, dtype=np.int64))
                resp.opener, resp.closer, resp.codes, resp.emitted = token, s.closer_for[token], [], 0
            elif token < v.text_vocab_size:
                self.stats.text_tokens += 1
                delta = row.detok.push(token)
                if delta:
                    yield TextDelta(row.index, delta)
        resp.parsed = end
        yield from self._emit_pending_codes(row)

    def _emit_pending_codes(self, row: RowState) -> Iterator[Event]:
        """An `AudioBlock` with the parsed codes of the open span not yet sent."""
        resp = row.response
        assert resp is not None
        if resp.closer is not None and len(resp.codes) > resp.emitted:
            yield AudioBlock(row.index, len(row.spans) - 1, np.asarray(resp.codes[resp.emitted :], dtype=np.int64))
            resp.emitted = len(resp.codes)

    def _finish_parsed_span(self, row: RowState, forced: bool) -> Iterator[Event]:
        """End the span open in the parsed response, if any: send its last codes, record it, yield its `SpanEnd`."""
        resp = row.response
        assert resp is not None
        if resp.closer is None:
            return
        yield from self._emit_pending_codes(row)
        index = len(row.spans) - 1
        row.spans[index] = np.asarray(resp.codes, dtype=np.int64)
        self.stats.spans += 1
        self.stats.audio_tokens += len(resp.codes)
        yield SpanEnd(row.index, index, resp.opener == self.sampler.vocab.id(SOA_FINAL), len(resp.codes), forced)
        resp.closer = resp.opener = None
        resp.codes = []
