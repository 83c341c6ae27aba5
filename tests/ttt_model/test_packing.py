from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenization.codecs.base import CodecIdentity
from tokenization.sequence import Part, Turn, build_chat, spans_to_pylist, validate_spans
from tokenization.text import load_text_tokenizer
from tokenization.vocab import UnifiedVocab
from ttt_model.core.collator import TtTCollator
from ttt_model.core.objective import IGNORE, ObjectiveConfig
from ttt_model.core.packing import fit_to_length, pack

VOCAB = UnifiedVocab(load_text_tokenizer(), CodecIdentity("test", "1", 25.0, 512, 16000, 16000, "h"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 64), max_size=40), st.integers(64, 200))
def test_pack_is_a_valid_first_fit_packing(lengths: list[int], max_tokens: int) -> None:
    bins = pack(lengths, max_tokens)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    loads = [sum(lengths[i] for i in b) for b in bins]
    assert all(load <= max_tokens for load in loads)
    # first fit: no two bins could have been one (so at most one bin is at most half full)
    assert all(loads[a] + loads[b] > max_tokens for a in range(len(bins)) for b in range(a + 1, len(bins)))
    assert len(bins) >= -(-sum(lengths) // max_tokens)
    assert pack(lengths, max_tokens) == bins  # deterministic


def test_pack_rejects_overlong_samples() -> None:
    with pytest.raises(ValueError, match="fit_to_length"):
        pack([3, 9], 8)


def chat(n_codes: int, text: str = "hello there how are you"):
    return build_chat(
        VOCAB,
        [
            Turn("user", [Part(text="question")]),
            Turn(
                "assistant",
                [
                    Part(text=text),
                    Part.audio(np.arange(n_codes)),
                    Part(text="end"),
                    Part.audio(np.arange(n_codes), final=True),
                ],
            ),
        ],
    )


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 40), st.integers(2, 120))
def test_fit_never_cuts_an_audio_span(n_codes: int, max_tokens: int) -> None:
    seq = chat(n_codes)
    ids, spans = fit_to_length(seq.input_ids, seq.spans, max_tokens)
    assert len(ids) <= max_tokens
    if len(seq.input_ids) <= max_tokens:
        assert np.array_equal(ids, seq.input_ids) and spans == seq.spans
        return
    assert np.array_equal(ids, seq.input_ids[: len(ids)])
    if ids.size:
        validate_spans(VOCAB, ids, spans)
    whole = {(s.start, s.end) for s in seq.spans if s.kind == "audio"}
    assert all((s.start, s.end) in whole for s in spans if s.kind == "audio")  # audio spans kept whole or dropped
    nxt = next(s for s in seq.spans if s.end > len(ids))
    assert nxt.kind == "text" or nxt.start == len(ids)  # the cut is in text or right before a span


def samples(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        seq = chat(int(rng.integers(3, 60)), " ".join(["word"] * int(rng.integers(1, 30))))
        out.append({"sample_id": f"s{i}", "input_ids": seq.input_ids, "spans": spans_to_pylist(seq.spans)})
    return out


def test_packed_layout() -> None:
    cfg = ObjectiveConfig()
    batch = TtTCollator(VOCAB, cfg, 512, seed=0)(samples(12), epoch=0)
    b, length = batch.input_ids.shape
    assert length == 512 and batch.n_tokens + batch.n_padding == b * length
    for row in range(b):
        doc, pos, block = batch.doc_ids[row], batch.position_ids[row], batch.block_ids[row]
        real = doc >= 0
        assert real[: int(real.sum())].all()  # samples first, padding at the end
        assert (batch.input_ids[row][~real] == VOCAB.pad_id).all() and (batch.labels[row][~real] == IGNORE).all()
        for d in doc[real].unique():
            where = (doc == d).nonzero().squeeze(1)
            assert pos[where].tolist() == list(range(len(where)))  # positions restart per sample
            assert (where.diff() == 1).all()
        blocks = block[block >= 0]
        assert all(len(doc[block == k].unique()) == 1 for k in blocks.unique())  # a block never spans samples
        starts = (block[1:] != block[:-1]) & (block[1:] >= 0)
        assert int(starts.sum()) + int(block[0] >= 0) == len(blocks.unique())  # ids unique within the row


def test_packing_reduces_padding() -> None:
    batch_samples = samples(32, seed=1)
    packed = TtTCollator(VOCAB, ObjectiveConfig(), 1024, seed=0)(batch_samples, epoch=0)
    padded = TtTCollator(VOCAB, ObjectiveConfig(), 1024, seed=0, packing=False)(batch_samples, epoch=0)
    assert packed.n_tokens == padded.n_tokens and packed.n_ar == padded.n_ar and packed.n_maskable == padded.n_maskable
    frac = lambda b: b.n_padding / (b.n_tokens + b.n_padding)  # noqa: E731
    assert padded.input_ids.shape[0] == 32 and frac(padded) > 0.8
    assert packed.input_ids.shape[0] < 8 and frac(packed) < 0.2


def test_overlong_and_empty_samples() -> None:
    long = samples(1)[0]
    batch = TtTCollator(VOCAB, ObjectiveConfig(sst=False), 40, seed=0)([long], epoch=0)
    assert batch.stats["truncated"] == 1 and batch.n_tokens <= 40
    empty = TtTCollator(VOCAB, ObjectiveConfig(), 16, seed=0)([], epoch=0)
    assert empty.input_ids.shape == (1, 16) and empty.n_tokens == 0 and empty.n_ar == empty.n_maskable == 0
    opener, closer = VOCAB.opener_ids()[0], VOCAB.closer_ids()[1]
    audio_first = {
        "sample_id": "a",
        "input_ids": np.array([opener, *VOCAB.audio_ids([1, 2]), closer], np.int32),
        "spans": [{"kind": "audio", "start": 0, "end": 4, "role": "document", "is_target": True}],
    }
    dropped = TtTCollator(VOCAB, ObjectiveConfig(), 2, seed=0)([audio_first], epoch=0)
    assert dropped.stats["dropped"] == 1 and dropped.n_tokens == 0


def _sample_tokens(batch) -> list[list[int]]:
    """Every packed sample's tokens, sorted: what a batch holds whatever its row layout."""
    out = []
    for row in range(batch.doc_ids.shape[0]):
        for d in batch.doc_ids[row].unique().tolist():
            if d >= 0:
                out.append(batch.input_ids[row][batch.doc_ids[row] == d].tolist())
    return sorted(out)


def test_row_tokens_packs_shorter_rows_holding_the_same_samples() -> None:
    batch_samples = samples(16, seed=2)
    full = TtTCollator(VOCAB, ObjectiveConfig(), 1024, seed=0)(batch_samples, epoch=0)
    longest = max(len(t) for t in _sample_tokens(full))
    short = TtTCollator(VOCAB, ObjectiveConfig(), 1024, seed=0, row_tokens=96)(batch_samples, epoch=0)
    assert short.input_ids.shape[1] == 96 * -(-longest // 96) < 1024  # the multiple of 96 that holds the longest
    assert short.input_ids.shape[0] > full.input_ids.shape[0]
    assert _sample_tokens(short) == _sample_tokens(full)  # same samples, same noise: only the rows differ
    assert (short.n_tokens, short.n_ar, short.n_maskable) == (full.n_tokens, full.n_ar, full.n_maskable)
    assert short.stats == full.stats
    assert short.n_padding < full.n_padding  # a micro-batch's last row is short too


def test_a_sample_longer_than_row_tokens_gets_rows_that_hold_it_whole() -> None:
    seq = chat(60, " ".join(["word"] * 30))
    long = {"sample_id": "long", "input_ids": seq.input_ids, "spans": spans_to_pylist(seq.spans)}
    n = len(seq.input_ids)
    assert 32 < n < 512
    batch = TtTCollator(VOCAB, ObjectiveConfig(sst=False), 512, seed=0, row_tokens=32)([long, *samples(3)], epoch=0)
    assert batch.stats["truncated"] == 0 and batch.input_ids.shape[1] == 32 * -(-n // 32) >= n
    capped = TtTCollator(VOCAB, ObjectiveConfig(sst=False), n + 1, seed=0, row_tokens=32)([long], epoch=0)
    assert capped.input_ids.shape[1] == n + 1  # never beyond max_tokens
    over = TtTCollator(VOCAB, ObjectiveConfig(), 64, seed=0, row_tokens=128)(samples(4), epoch=0)
    assert over.input_ids.shape[1] == 64
    unpacked = TtTCollator(VOCAB, ObjectiveConfig(), 256, seed=0, packing=False, row_tokens=32)(samples(4), epoch=0)
    assert unpacked.input_ids.shape == (4, 256)  # the reference layout pads every sample to max_tokens
    with pytest.raises(ValueError, match="row_tokens"):
        TtTCollator(VOCAB, ObjectiveConfig(), 64, seed=0, row_tokens=1)
