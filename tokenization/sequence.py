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
    """One piece of a turn's content, in exactly one of three forms:

    - `Part(text=...)`: text, tokenized by the builder;
    - `Part.audio(codes, final, closed)`: one audio span given as codec codes; the builder wraps it in the
      opener/closer its role and `final` call for;
    - `Part.tokens(ids)`: content already in unified-vocabulary ids, taken as is. Callers that chunk text by
      tokens (the 13:26 interleave) or import already-tokenized data (the reference's inline format) have
      ids, and re-encoding decoded text would not give the same ids back (BPE merges across chunk edges).
      Audio spans inside the ids keep their own markers; the builder finds them with `spans_from_ids`
      (so a span's `is_final_in_turn` follows its opener) and leaves judging them to `validate_spans`.

    `final` and `closed` describe how to wrap codes, so they are rejected on the other forms rather than
    silently ignored.
    """

    text: str | None = None
    codes: np.ndarray | None = None
    ids: np.ndarray | None = None
    final: bool = False  # audio only: the turn's final span (<|begin_of_quad|> ... <|end_of_audio_span_last|>)
    closed: bool = True  # audio only: False leaves the closer off (a truncated, still-open span)

    def __post_init__(self) -> None:
        given = [name for name in ("text", "codes", "ids") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"a Part holds exactly one of text, codes or ids; got {given or 'none'}")
        if self.codes is None and (self.final or not self.closed):
            raise ValueError("Part.final and Part.closed only apply to audio codes")
        for name in ("codes", "ids"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _int_vector(value, name))

    @staticmethod
    def audio(codes: Sequence[int] | np.ndarray, final: bool = False, closed: bool = True) -> Part:
        return Part(codes=np.asarray(codes), final=final, closed=closed)

    @staticmethod
    def tokens(ids: Sequence[int] | np.ndarray) -> Part:
        return Part(ids=np.asarray(ids))


def _int_vector(value: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    """A 1-D int64 array, or ValueError: a float, bool or nested id or code is a caller bug, which a cast
    to int64 would hide by truncating."""
    arr = np.asarray(value)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"Part.{name} must be a 1-D sequence of integers, got {arr.dtype} of shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


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

    def text(self, ids: Sequence[int] | np.ndarray, role: str, target: bool, turn: int) -> None:
        if len(ids) == 0:
            return
        start = len(self.ids)
        self.ids.extend(int(i) for i in ids)
        last = self.spans[-1] if self.spans else None
        if last and last.kind == "text" and (last.role, last.is_target, last.turn) == (role, target, turn):
            self.spans[-1] = Span("text", last.start, len(self.ids), role, target, False, turn)
        else:
            self.spans.append(Span("text", start, len(self.ids), role, target, False, turn))

    def audio(self, ids: Sequence[int] | np.ndarray, role: str, target: bool, final: bool, turn: int) -> None:
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
    """Qwen chat template (`<|im_start|>role\\n ... <|im_end|>\\n`) over text, audio and pre-tokenized parts.

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
        if part.ids is not None:
            _tokens(vocab, b, part.ids, turn.role, target, turn_idx)
        elif part.codes is not None:
            final = part.final and turn.role not in PROMPT_ROLES  # prompt audio has no "final span"
            b.audio(_audio_ids(vocab, part, turn.role), turn.role, target, final, turn_idx)
        elif part.text:
            b.text(vocab.encode_text(part.text), turn.role, target, turn_idx)


def _tokens(vocab: UnifiedVocab, b: _Builder, ids: np.ndarray, role: str, target: bool, turn_idx: int) -> None:
    """Pre-tokenized content: text runs and whole audio spans, split where `spans_from_ids` finds them."""
    if ids.size and (ids.min() < 0 or ids.max() >= vocab.size):
        raise ValueError(f"pre-tokenized ids outside the vocabulary [0, {vocab.size})")
    for s in spans_from_ids(vocab, ids, role, target):
        if s.kind == "audio":
            b.audio(ids[s.start:s.end], role, target, s.is_final_in_turn, turn_idx)
        else:
            b.text(ids[s.start:s.end], role, target, turn_idx)


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
