"""What decoding hands out: streaming events (`TextDelta`, `AudioBlock`, `SpanEnd`, `TurnEnd`), one `Generation`
per row, the run's counters (`DecodeStats`), and what a logits processor is told (`LogitsContext`).

`logits_processor(context, logits) -> logits` is a generic hook called before every choice (per row): text
logits are [1, V] over vocabulary ids, audio logits [m, C + 1] over `context.column_ids` (codes, then the
closer) for the span positions `context.targets`. The vocabulary restriction is applied after it, so a
processor can bias or force tokens (tests force openers and closers on random models with it) but can
never make the model emit a token its mode does not allow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class TextDelta:
    """New text of row `row` (complete characters only; multi-byte characters wait for their last token)."""

    row: int
    text: str


@dataclass(frozen=True)
class AudioBlock:
    """Committed codec codes (not vocabulary ids) of one finished block of span `span` of row `row`."""

    row: int
    span: int
    codes: np.ndarray


@dataclass(frozen=True)
class SpanEnd:
    """Span `span` of row `row` is complete: `n_codes` codes. `forced`: the model did not close it (ttt / ar:
    the closer was forced at max_span or by the token budget; nar: the response ended before a closer)."""

    row: int
    span: int
    final: bool
    n_codes: int
    forced: bool


@dataclass(frozen=True)
class TurnEnd:
    """Row `row` is finished: reason "eos" (<|im_end|> / <|endoftext|>) or "length" (token budget spent)."""

    row: int
    reason: str


Event = TextDelta | AudioBlock | SpanEnd | TurnEnd


@dataclass(frozen=True)
class LogitsContext:
    """What a logits processor knows about the choice it is asked to shape."""

    row: int
    mode: str  # "text" | "audio" | "response" (nar: any token of the response block)
    generated: Sequence[int]  # ids generated so far by this row (the open span / response block not included)
    column_ids: torch.Tensor  # vocabulary id of each logits column
    targets: np.ndarray | None = None  # audio / response: span (response) index of the token each row predicts


LogitsProcessor = Callable[[LogitsContext, torch.Tensor], torch.Tensor]


@dataclass
class Generation:
    """One row's output: every generated id, the text, the codes of each span, and why it stopped."""

    ids: list[int]
    text: str
    spans: list[np.ndarray]
    finish_reason: str

    @property
    def codes(self) -> np.ndarray:
        return np.concatenate(self.spans) if self.spans else np.zeros(0, dtype=np.int64)


@dataclass
class DecodeStats:
    """Work done by one run (all rows): forward passes, tokens fed through the model, diffusion steps."""

    forward_passes: int = 0
    tokens_processed: int = 0
    diffusion_steps: int = 0
    text_tokens: int = 0
    audio_tokens: int = 0
    spans: int = 0
