"""The AR baseline's decoder (objective mode `ar`): every token autoregressive, causal attention everywhere.

Training (plan_targets, mode `ar`) has no bidirectional block at all, prompt audio spans included, and every
target token (text, openers, codes, closers, <|im_end|>) is predicted by the position before it. So after
an opener the codes are sampled one per forward pass through the KV cache (`audio` sampling params),
restricted to audio codes + the opener's closer (the same restriction as TtT's spans); at `max_span` codes
(or when the token budget leaves room for the closer only) the closer is forced as the token the last code's
(or, with no room for a code, the opener's) state predicts, so that code is fed first. The closer is then fed
like any token and its state predicts the next text token. For streaming, an `AudioBlock` goes out every
`block_length` codes (and with the rest at the closer), so the codec's streaming decoder works unchanged.

Text is decoded exactly as by the TtT decoder (`DecodeRun._choose_next_token`, ttt_model/decoding/decode_run.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ttt_model.decoding.decode_run import DecodeRun
from ttt_model.decoding.events import Event
from ttt_model.decoding.kv_cache import Chunk
from ttt_model.decoding.row_state import RowState


class ArDecodeRun(DecodeRun):
    """The AR baseline's decoder over a batch of prompts (see the module docstring)."""

    def _next_chunk(self, row: RowState) -> Chunk:
        """The prompt, then the last text token, or inside a span its last token (the opener or a code)."""
        span = row.span
        if span is None:
            return super()._next_chunk(row)
        return Chunk(row.index, [span.ids[-1]], np.full(1, -1), keep=1, last_only=True)

    def _choose_next_token(self, row: RowState, hidden: torch.Tensor) -> Iterator[Event]:
        """Outside a span, the text step; inside one, the next code (or the closer, chosen or forced)."""
        if row.span is None:
            yield from super()._choose_next_token(row, hidden)
            return
        span, s = row.span, self.sampler
        if len(span.ids) - 1 >= span.limit:
            # no room for another code: the closer is this position's token. Forcing it here, when it is
            # predicted, and not right after the code that filled the span, is what keeps that code fed: every
            # generated token enters the context before the next one is chosen, as in training (and HF generate)
            span.ids.append(span.closer)
            span.forced = True
            yield from self._finish_span(row)
            return
        targets = np.array([len(span.ids)])
        tokens, _ = s.propose_audio(row.index, row.generated, hidden[None], targets, span.closer, row.generator)
        span.ids.append(int(tokens[0]))
        if span.ids[-1] == span.closer:
            yield from self._finish_span(row)
        elif (len(span.ids) - 1) % s.cfg.block_length == 0:
            yield from self._emit_span_codes(row, len(span.ids))

    def _enter_span(self, row: RowState, opener: int) -> Iterator[Event]:
        """Open an empty span; the opener is fed next, and the closer is forced when its state is reached with no
        room for a code (limit 0)."""
        self._new_span(row, opener)
        return iter(())

    def _finish_span(self, row: RowState) -> Iterator[Event]:
        """As TtT's, but the closer is not yet in the cache: it is fed next as a causal token."""
        span = row.span
        assert span is not None
        yield from super()._finish_span(row)
        row.span, row.next_token = None, span.closer
