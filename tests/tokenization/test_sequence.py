from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenization.codecs.base import CodecIdentity
from tokenization.sequence import (
    Part,
    Span,
    Turn,
    build_chat,
    build_document,
    spans_from_ids,
    spans_from_pylist,
    spans_to_pylist,
    validate_spans,
)
from tokenization.text import load_text_tokenizer
from tokenization.vocab import EOA, EOA_FINAL, EOA_USER, IM_END, SOA, SOA_FINAL, UnifiedVocab

VOCAB = UnifiedVocab(load_text_tokenizer(), CodecIdentity("test", "1", 25.0, 512, 16000, 16000, "h"))

words = st.text(alphabet="abc xyz,.?", min_size=1, max_size=12)
codes = st.lists(st.integers(0, 511), min_size=1, max_size=20)


@st.composite
def turns(draw: st.DrawFn, open_spans: bool = False) -> list[Turn]:
    """Chats of text and audio parts; `open_spans` also draws unclosed audio spans (valid ids, though only
    the sequence's last span may be open for `validate_spans`)."""
    roles = draw(st.lists(st.sampled_from(["user", "assistant"]), min_size=1, max_size=5))
    if draw(st.booleans()):
        roles = ["system", *roles]
    out = []
    for role in roles:
        parts = []
        for _ in range(draw(st.integers(0, 4))):
            if draw(st.booleans()):
                parts.append(Part(text=draw(words)))
            else:
                closed = not (open_spans and draw(st.booleans()))
                parts.append(Part.audio(draw(codes), final=draw(st.booleans()) and role != "assistant", closed=closed))
        if role == "assistant" and draw(st.booleans()):
            parts.append(Part.audio(draw(codes), final=True))
        out.append(Turn(role, parts))
    return out


def expected_target(seq, s: Span) -> bool:
    """Independent oracle: assistant audio and assistant text except the role header and the newline
    that follows <|im_end|>."""
    if s.role != "assistant":
        return False
    if s.kind == "audio":
        return True
    ids = seq.input_ids[s.start:s.end].tolist()
    is_header = ids[0] == VOCAB.id("<|im_start|>")
    is_newline = ids == VOCAB.encode_text("\n") and seq.input_ids[s.start - 1] == VOCAB.id(IM_END)
    return not (is_header or is_newline)


@settings(max_examples=80, deadline=None)
@given(turns())
def test_chat_spans_partition_and_validate(ts: list[Turn]) -> None:
    seq = build_chat(VOCAB, ts)
    validate_spans(VOCAB, seq.input_ids, seq.spans)
    assert sum(len(s) for s in seq.spans) == len(seq.input_ids)
    for s in seq.spans:
        assert s.is_target == expected_target(seq, s), s
        assert ts[s.turn].role == s.role
        assert not (s.is_final_in_turn and s.role != "assistant")  # prompt audio is never a "final span"
    # audio spans found from ids alone agree with the builder's table
    found = [(s.start, s.end, s.is_final_in_turn) for s in spans_from_ids(VOCAB, seq.input_ids) if s.kind == "audio"]
    built = [(s.start, s.end, s.is_final_in_turn) for s in seq.spans if s.kind == "audio"]
    assert found == built
    assert spans_from_pylist(spans_to_pylist(seq.spans)) == seq.spans


def test_assistant_turn_targets_and_im_end() -> None:
    seq = build_chat(VOCAB, [Turn("user", [Part.audio([1, 2, 3])]),
                             Turn("assistant", [Part(text="hi"), Part.audio([4, 5], final=True)])])
    targets = [s for s in seq.spans if s.is_target]
    assert [s.kind for s in targets] == ["text", "audio", "text"]
    assert seq.input_ids[targets[-1].end - 1] == VOCAB.id(IM_END)
    final = targets[1]
    assert seq.input_ids[final.start] == VOCAB.id(SOA_FINAL) and seq.input_ids[final.end - 1] == VOCAB.id(EOA_FINAL)
    user_audio = [s for s in seq.spans if s.kind == "audio" and not s.is_target]
    assert len(user_audio) == 1 and not user_audio[0].is_final_in_turn
    assert seq.n_audio_tokens == 5 + 4


def test_multi_turn_boundaries_are_per_turn() -> None:
    seq = build_chat(VOCAB, [Turn("user", [Part(text="a")]), Turn("assistant", [Part(text="b")]),
                             Turn("user", [Part(text="c")]), Turn("assistant", [Part(text="d")])])
    target_turns = sorted({s.turn for s in seq.spans if s.is_target})
    assert target_turns == [1, 3]


def test_validate_rejects_mismatched_closer_and_cut_spans() -> None:
    seq = build_chat(VOCAB, [Turn("assistant", [Part.audio([1, 2, 3], final=True)])])
    ids = seq.input_ids.copy()
    span = next(s for s in seq.spans if s.kind == "audio")
    ids[span.end - 1] = VOCAB.id("<|end_of_audio_new|>")
    with pytest.raises(ValueError, match="closer"):
        validate_spans(VOCAB, ids, seq.spans)
    with pytest.raises(ValueError, match="covers"):
        validate_spans(VOCAB, seq.input_ids, seq.spans[:-1])
    empty = [*seq.spans[:-1], Span("text", seq.spans[-1].start, seq.spans[-1].start, "assistant", False)]
    with pytest.raises(ValueError, match="partition"):
        validate_spans(VOCAB, seq.input_ids, empty)


def test_unclosed_truncated_span_is_valid_only_at_the_end() -> None:
    """SST output: the sample ends inside its final span, with no closer."""
    seq = build_chat(VOCAB, [Turn("user", [Part(text="q")]),
                             Turn("assistant", [Part.audio([1, 2, 3], final=True, closed=False)])])
    span = next(s for s in seq.spans if s.kind == "audio")
    validate_spans(VOCAB, seq.input_ids[:span.end], [s for s in seq.spans if s.end <= span.end])
    with pytest.raises(ValueError, match="cut span"):
        validate_spans(VOCAB, seq.input_ids, seq.spans)


def test_document_all_targets_and_eos() -> None:
    seq = build_document(VOCAB, [Part(text="one"), Part.audio([7, 8]), Part(text="two"), Part.audio([9], final=True)])
    validate_spans(VOCAB, seq.input_ids, seq.spans)
    assert all(s.is_target for s in seq.spans)
    assert seq.input_ids[-1] == VOCAB.pad_id
    assert np.array_equal(
        np.concatenate([seg.codes for seg in VOCAB.segments(seq.input_ids) if seg.kind == "audio"]), [7, 8, 9]
    )


def test_unclosed_span_in_mid_sequence_is_a_cut_span() -> None:
    ids = np.asarray(VOCAB.encode_mixed("hello<|begin_of_audio|><|audio_1|><|audio_2|>world"), dtype=np.int32)
    with pytest.raises(ValueError, match="cut span"):
        validate_spans(VOCAB, ids, spans_from_ids(VOCAB, ids))


def test_markers_inside_text_are_rejected() -> None:
    for stray in ("<|end_of_audio_new|>", "<|mask_token|>"):
        ids = np.asarray(VOCAB.encode_mixed(f"hello{stray}world"), dtype=np.int32)
        with pytest.raises(ValueError, match="inside text span"):
            validate_spans(VOCAB, ids, [Span("text", 0, len(ids), "document", True)])


# ---- pre-tokenized parts -------------------------------------------------------------------------------

def rendered(part: Part, role: str) -> list[int]:
    """Independent oracle for a part's ids: the text's tokens, or [opener, codes..., closer] with the
    markers the module docstring assigns to the role (prompt audio never uses the final markers)."""
    if part.codes is None:
        return VOCAB.encode_text(part.text or "")
    if role in ("system", "user"):
        opener, closer = SOA, EOA_USER
    else:
        opener, closer = (SOA_FINAL, EOA_FINAL) if part.final else (SOA, EOA)
    return [VOCAB.id(opener), *(VOCAB.audio_offset + part.codes).tolist(), *([VOCAB.id(closer)] if part.closed else [])]


@settings(max_examples=80, deadline=None)
@given(turns(open_spans=True), st.booleans())
def test_pretokenized_parts_build_what_their_text_and_codes_build(ts: list[Turn], one_part_per_turn: bool) -> None:
    """Giving content as ids changes nothing: not the ids, not the span table, and not how the ids are
    split into parts (text runs merge, audio spans are found at their markers)."""
    expected = build_chat(VOCAB, ts)
    as_ids = []
    for t in ts:
        ids = [rendered(p, t.role) for p in t.parts]
        whole = [i for chunk in ids for i in chunk]
        parts = [Part.tokens(whole)] if one_part_per_turn else [Part.tokens(chunk) for chunk in ids]
        as_ids.append(Turn(t.role, parts))
    got = build_chat(VOCAB, as_ids)
    assert np.array_equal(got.input_ids, expected.input_ids)
    assert got.spans == expected.spans
    doc_parts = [p for t in ts for p in t.parts]
    doc = build_document(VOCAB, [Part.tokens(rendered(p, "document")) for p in doc_parts])
    assert np.array_equal(doc.input_ids, build_document(VOCAB, doc_parts).input_ids)
    assert doc.spans == build_document(VOCAB, doc_parts).spans


def test_pretokenized_markers_are_kept_as_written_for_validation_to_judge() -> None:
    """Imported ids are not repaired: a prompt span opened as final stays final (and fails validation), a
    wrong closer stays wrong."""
    quad = [VOCAB.id(SOA_FINAL), VOCAB.audio_offset + 3, VOCAB.id(EOA_FINAL)]
    seq = build_chat(VOCAB, [Turn("user", [Part.tokens(quad)]), Turn("assistant", [Part(text="ok")])])
    (span,) = [s for s in seq.spans if s.kind == "audio"]
    assert span.role == "user" and span.is_final_in_turn and not span.is_target
    assert seq.input_ids[span.start:span.end].tolist() == quad
    with pytest.raises(ValueError, match="opener allowed for role user"):
        validate_spans(VOCAB, seq.input_ids, seq.spans)
    wrong = [VOCAB.id(SOA), VOCAB.audio_offset + 3, VOCAB.id(EOA_USER)]
    seq = build_chat(VOCAB, [Turn("user", [Part(text="q")]), Turn("assistant", [Part.tokens(wrong)])])
    with pytest.raises(ValueError, match="closer"):
        validate_spans(VOCAB, seq.input_ids, seq.spans)


@pytest.mark.parametrize("ids", [[-1], [VOCAB.size], [5, VOCAB.size + 7]])
def test_pretokenized_ids_outside_the_vocabulary_are_rejected(ids: list[int]) -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        build_chat(VOCAB, [Turn("user", [Part.tokens(ids)])])


def test_empty_pretokenized_part_adds_nothing() -> None:
    plain = build_chat(VOCAB, [Turn("user", [Part(text="q")])])
    with_empty = build_chat(VOCAB, [Turn("user", [Part.tokens([]), Part(text="q"), Part(ids=np.zeros(0, np.int32))])])
    assert np.array_equal(plain.input_ids, with_empty.input_ids) and plain.spans == with_empty.spans


@pytest.mark.parametrize(("make", "match"), [
    (lambda: Part(), "exactly one of text, codes or ids"),
    (lambda: Part(text="a", ids=np.arange(2)), "exactly one of text, codes or ids"),
    (lambda: Part(text="a", codes=np.arange(2)), "exactly one of text, codes or ids"),
    (lambda: Part(text="a", final=True), "only apply to audio codes"),
    (lambda: Part(ids=np.arange(2), closed=False), "only apply to audio codes"),
    (lambda: Part.tokens([1.5, 2.0]), "1-D sequence of integers"),
    (lambda: Part.tokens([[1, 2]]), "1-D sequence of integers"),
    (lambda: Part(ids=np.array([True, False])), "1-D sequence of integers"),
    (lambda: Part.audio([0.5]), "1-D sequence of integers"),
])
def test_malformed_parts_are_rejected_when_made(make: Callable[[], Part], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_part_arrays_are_int64_vectors() -> None:
    assert Part(ids=[1, 2]).ids.dtype == np.int64 and Part(codes=np.array([3], np.int16)).codes.dtype == np.int64
