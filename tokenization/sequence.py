"""Interleaved text/audio sequences and their span table.

A sequence is a flat list of unified-vocabulary ids; its span table partitions it into consecutive
spans. Conventions every consumer relies on (tokenize job, objective, attention mask, sampler):

- A text span is attended causally. An audio span is `[opener, code, ..., code, closer]`: the opener
  (<|begin_of_audio|> or <|begin_of_quad|>) is its FIRST token, the closer its LAST (absent when SST
  truncated the span). The whole span is one bidirectional attention block. The opener belongs to the
  span because, with next-token-aligned diffusion, the opener's position is the one that predicts the
  first code, so it must see the span; the opener itself is still produced autoregressively by the
  token before it, exactly as at inference.
- `is_target` marks tokens the loss may predict (assistant text, assistant/TTS/document audio). System and
  user tokens are never targets. `turn` numbers the chat turns so multi-turn boundaries are explicit.
- `is_final_in_turn` marks the last audio span of a turn (opened by <|begin_of_quad|>), the one SST
  truncates and whose length the model must learn to end by itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from tokenization.vocab import (
    EOA,
    EOA_FINAL,
    EOA_USER,
    IM_END,
    IM_START,
    SOA,
    SOA_FINAL,
    UnifiedVocab,
)

ROLES = ("system", "user", "assistant", "document")
PROMPT_ROLES = ("system", "user")


@dataclass(frozen=True)
class Span:
    kind: str  # "text" | "audio"
    start: int
    end: int  # exclusive
    role: str
    is_target: bool
    is_final_in_turn: bool = False
    turn: int = 0

    def __len__(self) -> int:
        return self.end - self.start


SPAN_ARROW_TYPE = pa.struct([
    ("kind", pa.string()), ("start", pa.int32()), ("end", pa.int32()), ("role", pa.string()),
    ("is_target", pa.bool_()), ("is_final_in_turn", pa.bool_()), ("turn", pa.int16()),
])


def spans_to_pylist(spans: Iterable[Span]) -> list[dict]:
    return [asdict(s) for s in spans]


def spans_from_pylist(rows: Iterable[dict]) -> list[Span]:
    return [Span(**r) for r in rows]


@dataclass(frozen=True)
class Part:
    """One piece of a turn's content: text, or an audio span given as codec codes."""

    text: str | None = None
    codes: np.ndarray | None = None
    final: bool = False  # audio only: the turn's final span (<|begin_of_quad|> ... <|end_of_audio_span_last|>)
    closed: bool = True  # audio only: False leaves the closer off (a truncated, still-open span)

    @staticmethod
    def audio(codes: Sequence[int] | np.ndarray, final: bool = False, closed: bool = True) -> Part:
        return Part(codes=np.asarray(codes, dtype=np.int64), final=final, closed=closed)


@dataclass
class Turn:
    role: str
    parts: list[Part]
    is_target: bool | None = None  # default: assistant and document turns are targets

    def targets(self) -> bool:
        return self.role in ("assistant", "document") if self.is_target is None else self.is_target


@dataclass
class BuiltSequence:
    input_ids: np.ndarray  # int32
    spans: list[Span] = field(default_factory=list)

    @property
    def n_audio_tokens(self) -> int:
        return sum(len(s) for s in self.spans if s.kind == "audio")

    @property
    def n_text_tokens(self) -> int:
        return len(self.input_ids) - self.n_audio_tokens


class _Builder:
    """Appends ids and keeps the span table, merging adjacent text spans with equal attributes."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.spans: list[Span] = []

    def text(self, ids: Sequence[int], role: str, target: bool, turn: int) -> None:
        if not ids:
            return
        start = len(self.ids)
        self.ids.extend(int(i) for i in ids)
        last = self.spans[-1] if self.spans else None
        if last and last.kind == "text" and (last.role, last.is_target, last.turn) == (role, target, turn):
            self.spans[-1] = Span("text", last.start, len(self.ids), role, target, False, turn)
        else:
            self.spans.append(Span("text", start, len(self.ids), role, target, False, turn))

    def audio(self, ids: Sequence[int], role: str, target: bool, final: bool, turn: int) -> None:
        start = len(self.ids)
        self.ids.extend(int(i) for i in ids)
        self.spans.append(Span("audio", start, len(self.ids), role, target, final, turn))


def _audio_ids(vocab: UnifiedVocab, part: Part, role: str) -> list[int]:
    assert part.codes is not None
    if role in PROMPT_ROLES:
        opener, closer = SOA, EOA_USER
    else:
        opener, closer = (SOA_FINAL, EOA_FINAL) if part.final else (SOA, EOA)
    ids = [vocab.id(opener), *vocab.audio_ids(part.codes).tolist()]
    if part.closed:
        ids.append(vocab.id(closer))
    return ids


def build_chat(vocab: UnifiedVocab, turns: Sequence[Turn], add_generation_prompt: bool = False) -> BuiltSequence:
    """Qwen chat template (`<|im_start|>role\\n ... <|im_end|>\\n`) over text and audio parts.

    Target tokens of a target turn: its content and its `<|im_end|>` (so the model learns to end a turn);
    the role header and the newline after `<|im_end|>` are never targets. `add_generation_prompt`
    appends an open assistant header, as the sampler does.
    """
    b = _Builder()
    im_start, im_end = vocab.id(IM_START), vocab.id(IM_END)
    newline = vocab.encode_text("\n")
    for turn_idx, turn in enumerate(turns):
        if turn.role not in ("system", "user", "assistant"):
            raise ValueError(f"chat role must be system|user|assistant, got {turn.role!r}")
        target = turn.targets()
        b.text([im_start, *vocab.encode_text(f"{turn.role}\n")], turn.role, False, turn_idx)
        _content(vocab, b, turn, target, turn_idx)
        b.text([im_end], turn.role, target, turn_idx)
        b.text(newline, turn.role, False, turn_idx)
    if add_generation_prompt:
        b.text([im_start, *vocab.encode_text("assistant\n")], "assistant", False, len(turns))
    return BuiltSequence(np.asarray(b.ids, dtype=np.int32), b.spans)


def build_document(vocab: UnifiedVocab, parts: Sequence[Part], eos: bool = True) -> BuiltSequence:
    """A pre-training style document (the reference's {"text": ...} samples): no chat template, all
    tokens are targets, ended by <|endoftext|>."""
    b = _Builder()
    turn = Turn("document", list(parts))
    _content(vocab, b, turn, True, 0)
    if eos:
        b.text([vocab.pad_id], "document", True, 0)
    return BuiltSequence(np.asarray(b.ids, dtype=np.int32), b.spans)


def _content(vocab: UnifiedVocab, b: _Builder, turn: Turn, target: bool, turn_idx: int) -> None:
    for part in turn.parts:
        if part.codes is not None:
            final = part.final and turn.role not in PROMPT_ROLES  # prompt audio has no "final span"
            b.audio(_audio_ids(vocab, part, turn.role), turn.role, target, final, turn_idx)
        elif part.text:
            b.text(vocab.encode_text(part.text), turn.role, target, turn_idx)


def spans_from_ids(vocab: UnifiedVocab, ids: np.ndarray, role: str = "document", target: bool = True) -> list[Span]:
    """Recover audio/text spans from ids alone (for imported, already-tokenized data): an audio span
    runs from an opener through the codes to a closer (or to the last code if unclosed)."""
    openers, closers = set(vocab.opener_ids()), set(vocab.closer_ids())
    soa_final = vocab.id(SOA_FINAL)
    spans: list[Span] = []
    i, n, text_start = 0, len(ids), 0
    audio = vocab.is_audio(ids)
    while i < n:
        if int(ids[i]) in openers:
            j = i + 1
            while j < n and audio[j]:
                j += 1
            if j < n and int(ids[j]) in closers:
                j += 1
            if text_start < i:
                spans.append(Span("text", text_start, i, role, target))
            spans.append(Span("audio", i, j, role, target, int(ids[i]) == soa_final))
            i = text_start = j
        else:
            i += 1
    if text_start < n:
        spans.append(Span("text", text_start, n, role, target))
    return spans


def validate_spans(vocab: UnifiedVocab, ids: np.ndarray, spans: Sequence[Span]) -> None:
    """Check the table partitions the sequence and every audio span is well formed.

    Catches the reference's truncation bugs: spans cut mid-way (only the sequence's last span may lack its
    closer, as after SST), closers of the wrong type for their opener or role, codes or markers in text.
    """
    pos = 0
    audio = vocab.is_audio(ids)
    markers = np.isin(ids, [*vocab.opener_ids(), *vocab.closer_ids(), vocab.mask_id])
    prompt_closer = {vocab.id(SOA): vocab.id(EOA_USER)}
    target_closer = {vocab.id(SOA): vocab.id(EOA), vocab.id(SOA_FINAL): vocab.id(EOA_FINAL)}
    for s in spans:
        if s.start != pos or s.end <= s.start:
            raise ValueError(f"span table does not partition the sequence at {pos}: {s}")
        pos = s.end
        if s.kind == "text":
            if audio[s.start:s.end].any():
                raise ValueError(f"audio codes inside text span {s}")
            if markers[s.start:s.end].any():
                raise ValueError(f"span marker or mask token inside text span {s}")
            continue
        opener = int(ids[s.start])
        closers = prompt_closer if s.role in PROMPT_ROLES else target_closer
        if opener not in closers:
            raise ValueError(f"audio span {s} does not start with an opener allowed for role {s.role}")
        body_end = s.end
        unclosed = s.end - s.start == 1 or audio[s.end - 1]
        if unclosed and s.end != len(ids):
            raise ValueError(f"audio span {s} has no closer but is not at the end of the sequence (cut span)")
        if not unclosed:
            body_end -= 1
            closer = int(ids[s.end - 1])
            if closer != closers[opener]:
                raise ValueError(f"audio span {s}: closer id {closer} does not match opener id {opener}")
        if not audio[s.start + 1:body_end].all():
            raise ValueError(f"non-audio token inside audio span {s}")
        if s.is_final_in_turn != (opener == vocab.id(SOA_FINAL)):
            raise ValueError(f"audio span {s}: is_final_in_turn disagrees with its opener")
    if pos != len(ids):
        raise ValueError(f"span table covers {pos} of {len(ids)} tokens")
