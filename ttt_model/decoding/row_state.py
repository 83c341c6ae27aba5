"""Per-row decoding state: what each row of a batched run (ttt_model/decoding/decode_run.py) remembers between
forward passes: its prompt and budget, its generated ids and text, and the open audio span (ttt, ar) or the
response block (nar)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from tokenization.vocab import UnifiedVocab


class Detokenizer:
    """Incremental BPE decoding that emits only complete characters.

    Decodes a short window (the tokens since the previous emission plus the ones before them as context)
    instead of the whole text each time, so streaming stays linear in the answer length.
    """

    def __init__(self, vocab: UnifiedVocab) -> None:
        self._decode = vocab.text.decode
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token: int) -> str:
        """Add `token`; return the text it completes (empty while a multi-byte character is unfinished)."""
        self.ids.append(token)
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        text = self._decode(self.ids[self._prefix :])
        if len(text) <= len(prefix_text) or text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return text[len(prefix_text) :]

    def flush(self) -> str:
        """The text not yet returned, complete or not (the turn is over)."""
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        text = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return text[len(prefix_text) :]


@dataclass
class SpanState:
    """ttt / ar: the open audio span. `ids` = [opener, committed tokens or mask ids...]; ttt decodes it block by
    block (`block_start`, `step`, `schedule` of the current block of masks)."""

    index: int
    opener: int
    closer: int
    limit: int  # most codes this span may hold
    ids: list[int]  # [opener, committed tokens or mask ids...]
    block_start: int = 1
    step: int = 0
    schedule: list[int] = field(default_factory=list)
    emitted: int = 1  # span index up to which codes went out as AudioBlocks
    cached: int = 0  # span tokens already in the KV cache (block-causal: whole attention blocks)
    fed: int = 0  # span index of the first token of the chunk last run
    closing: bool = False
    forced: bool = False


@dataclass
class ResponseState:
    """nar: the response block. `head` = the prompt's tokens inside the block (its last token, or the prompt
    audio span it closes); `ids` = response tokens, committed or [M]; `parsed` = how many went out as events."""

    head: list[int]
    ids: list[int] = field(default_factory=list)
    block_start: int = 0
    step: int = 0
    schedule: list[int] = field(default_factory=list)
    parsed: int = 0
    closer: int | None = None  # closer of the span open at `parsed`
    opener: int | None = None
    codes: list[int] = field(default_factory=list)  # codes of that span so far
    emitted: int = 0  # how many of them went out as AudioBlocks


@dataclass
class RowState:
    """One prompt of a batched run and everything decoded for it so far."""

    index: int
    prompt: list[int]
    prompt_blocks: np.ndarray
    budget: int
    detok: Detokenizer
    generator: torch.Generator
    generated: list[int] = field(default_factory=list)
    prefilled: bool = False
    next_token: int | None = None  # the token the next causal pass feeds (the last text token; ar: or a closer)
    span: SpanState | None = None
    spans: list[np.ndarray] = field(default_factory=list)
    finish_reason: str | None = None
    response: ResponseState | None = None  # nar only
