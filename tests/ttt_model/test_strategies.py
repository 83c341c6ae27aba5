from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenization.codecs.base import CodecIdentity
from tokenization.sequence import Part, Turn, build_chat, build_document, spans_to_pylist, validate_spans
from tokenization.text import load_text_tokenizer
from tokenization.vocab import UnifiedVocab
from ttt_model.core.collator import PackedBatch, TtTCollator, as_spans
from ttt_model.core.objective import IGNORE, ObjectiveConfig, plan_targets
from ttt_model.core.rng import sample_rng
from ttt_model.core.strategies import (
    apply_sst,
    diffused_spans,
    draw_banom,
    draw_ppm,
    draw_sst,
    sst_span,
    target_audio_spans,
)

VOCAB = UnifiedVocab(load_text_tokenizer(), CodecIdentity("test", "1", 25.0, 512, 16000, 16000, "h"))
ONLY_SST = ObjectiveConfig(banom=False, ppm=False, p_trunc=1.0)
EOT = VOCAB.pad_id  # <|endoftext|> closes a document


def two_turn_voice_chat(n_final: int = 40):
    return build_chat(
        VOCAB,
        [
            Turn("user", [Part.audio(np.arange(8))]),
            Turn("assistant", [Part(text="one"), Part.audio(np.arange(26)), Part.audio(np.arange(12), final=True)]),
            Turn("user", [Part(text="more")]),
            Turn(
                "assistant",
                [
                    Part(text="two"),
                    Part.audio(np.arange(26) + 1),
                    Part(text="three"),
                    Part.audio(np.arange(n_final) + 2, final=True),
                ],
            ),
        ],
    )


def as_sample(seq, sample_id: str) -> dict:
    return {"sample_id": sample_id, "input_ids": seq.input_ids, "spans": spans_to_pylist(seq.spans)}


def row_of(batch: PackedBatch, doc: int = 0, row: int = 0) -> np.ndarray:
    return batch.input_ids[row][batch.doc_ids[row] == doc].numpy()


def restored(batch: PackedBatch, doc: int = 0, row: int = 0) -> np.ndarray:
    """The collated sample's ids before noising (a masked token is the label of the position before it)."""
    ids = row_of(batch, doc, row)
    labels = batch.labels[row][batch.doc_ids[row] == doc].numpy()
    return np.where(ids == VOCAB.mask_id, np.roll(labels, 1), ids)


def target_mask(seq) -> np.ndarray:
    out = np.zeros(len(seq.input_ids), dtype=bool)
    for s in seq.spans:
        out[s.start : s.end] = s.is_target
    return out


def test_sample_streams_are_reproducible_and_distinct() -> None:
    def draw(*key: object) -> float:
        return sample_rng(*key).random()  # type: ignore[arg-type]

    assert draw(0, 0, "a", "sst") == draw(0, 0, "a", "sst")
    others = [draw(1, 0, "a", "sst"), draw(0, 1, "a", "sst"), draw(0, 0, "b", "sst"), draw(0, 0, "a", "ppm")]
    assert len({draw(0, 0, "a", "sst"), *others}) == 5
    with pytest.raises(ValueError):
        sample_rng(-1, 0, "a", "sst")


def test_sst_is_redrawn_every_epoch() -> None:
    sample = as_sample(two_turn_voice_chat(), "s1")
    collator = TtTCollator(VOCAB, ONLY_SST, 512, seed=0)
    lengths = [len(row_of(collator([sample], epoch=e))) for e in range(6)]
    assert len(set(lengths)) > 1  # the reference cached one truncation for all epochs
    again = TtTCollator(VOCAB, ONLY_SST, 512, seed=0)
    assert [len(row_of(again([sample], epoch=e))) for e in range(6)] == lengths


@settings(max_examples=60, deadline=None)
@given(st.integers(6, 60), st.integers(0, 50), st.integers(0, 10**6))
def test_sst_truncates_the_final_span_of_the_last_turn(n_final: int, epoch: int, seed: int) -> None:
    seq = two_turn_voice_chat(n_final)
    spans = seq.spans
    final = sst_span(spans, seq.input_ids, EOT)
    assert final is not None and spans[final].turn == 3
    keep = draw_sst(ONLY_SST, n_final, sample_rng(seed, epoch, "x", "sst"))
    assert keep is not None and max(5, int(0.3 * n_final)) <= keep <= max(5, int(0.9 * n_final)) and keep < n_final
    ids, new_spans = apply_sst(seq.input_ids, spans, final, keep)
    validate_spans(VOCAB, ids, new_spans)  # never cut mid-span, never a closer of the wrong type
    assert VOCAB.is_audio(ids[-keep:]).all() and len(ids) == spans[final].start + 1 + keep  # open span, rest dropped
    assert new_spans[:final] == spans[:final]  # the first turn's final span is untouched


def test_sst_never_drops_a_later_turn() -> None:
    """The reference's rule (truncate the sample's last final span, drop everything after it) threw away
    whole later turns when the last assistant turn is text only. Such a sample is never truncated."""
    seq = build_chat(
        VOCAB,
        [
            Turn("user", [Part(text="q")]),
            Turn("assistant", [Part(text="a"), Part.audio(np.arange(20), final=True)]),
            Turn("user", [Part(text="q2")]),
            Turn("assistant", [Part(text="a long text only answer here")]),
        ],
    )
    assert sst_span(seq.spans, seq.input_ids, EOT) is None
    collator = TtTCollator(VOCAB, ONLY_SST, 512, seed=0)
    for epoch in range(5):
        batch = collator([as_sample(seq, "late")], epoch=epoch)
        assert np.array_equal(restored(batch), seq.input_ids) and batch.stats["sst"] == 0


def test_sst_drops_only_the_rest_of_its_turn() -> None:
    """Trailing text, <|im_end|> and the newline of the truncated turn go, and so does a later prompt-only
    turn (it has no targets); every earlier token is kept."""
    seq = build_chat(
        VOCAB,
        [
            Turn("user", [Part(text="q")]),
            Turn("assistant", [Part(text="a"), Part.audio(np.arange(30), final=True), Part(text="tail text")]),
            Turn("user", [Part(text="thanks")]),
        ],
    )
    final = sst_span(seq.spans, seq.input_ids, EOT)
    assert final is not None
    span = seq.spans[final]
    batch = TtTCollator(VOCAB, ONLY_SST, 512, seed=0)([as_sample(seq, "tail")], epoch=0)
    ids = restored(batch)
    assert batch.stats["sst"] == 1 and span.start + 1 + 5 <= len(ids) < span.end - 1
    assert np.array_equal(ids, seq.input_ids[: len(ids)]) and VOCAB.is_audio(ids[-1:]).all()


def test_sst_on_documents_only_when_the_span_ends_the_document() -> None:
    ending = build_document(VOCAB, [Part(text="hello"), Part.audio(np.arange(30), final=True)])
    followed = build_document(VOCAB, [Part(text="hello"), Part.audio(np.arange(30), final=True), Part(text="more")])
    assert sst_span(ending.spans, ending.input_ids, EOT) is not None
    assert sst_span(followed.spans, followed.input_ids, EOT) is None
    collator = TtTCollator(VOCAB, ONLY_SST, 512, seed=0)
    cut = collator([as_sample(ending, "e")], epoch=0)
    assert cut.stats["sst"] == 1 and len(row_of(cut)) < len(ending.input_ids) - 2
    for epoch in range(5):
        kept = collator([as_sample(followed, "f")], epoch=epoch)
        assert kept.stats["sst"] == 0 and np.array_equal(restored(kept), followed.input_ids)


@st.composite
def chats(draw: st.DrawFn):
    """Random chats and documents: prompt turns, text-only and audio assistant turns, final spans or not."""
    codes = st.integers(0, 20).map(np.arange)
    if draw(st.booleans()):
        parts = [
            Part.audio(draw(codes), final=draw(st.booleans()))
            if draw(st.booleans())
            else Part(text=draw(st.sampled_from(["a", "some words", "x y z"])))
            for _ in range(draw(st.integers(1, 4)))
        ]
        return build_document(VOCAB, parts)
    turns = []
    for _ in range(draw(st.integers(1, 4))):
        role = draw(st.sampled_from(["user", "assistant", "assistant"]))
        parts = [
            Part.audio(draw(codes)) if draw(st.booleans()) else Part(text=draw(st.sampled_from(["a", "some words"])))
            for _ in range(draw(st.integers(0, 3)))
        ]
        if role == "assistant" and draw(st.integers(0, 2)) > 0:
            parts.append(Part.audio(draw(codes), final=True))
            parts += [Part(text="after")] if draw(st.booleans()) else []
        turns.append(Turn(role, parts))
    return build_chat(VOCAB, turns)


@settings(max_examples=100, deadline=None)
@given(chats(), st.integers(0, 20))
def test_sst_loses_no_target_outside_the_truncated_turn(seq, epoch: int) -> None:
    batch = TtTCollator(VOCAB, ONLY_SST, 4096, seed=0)([as_sample(seq, "p")], epoch=epoch)
    ids = restored(batch)
    assert np.array_equal(ids, seq.input_ids[: len(ids)])  # SST only ever cuts off a tail
    final = sst_span(seq.spans, seq.input_ids, EOT)
    n_codes = 0 if final is None else len(seq.spans[final]) - 2  # built spans are closed
    assert batch.stats["sst"] == float(len(ids) < len(seq.input_ids)) == float(n_codes > ONLY_SST.sst_min_codes)
    if len(ids) == len(seq.input_ids):
        return
    span = seq.spans[final]
    assert span.start + 1 + ONLY_SST.sst_min_codes <= len(ids) < span.end - 1  # inside the span, >= 5 codes
    lost = np.flatnonzero(target_mask(seq)[len(ids) :]) + len(ids)
    # a chat loses only the rest of the span's turn, a document only the rest of the span and <|endoftext|>
    limit = span.end + 1 if span.role == "document" else max(s.end for s in seq.spans if s.turn == span.turn)
    assert (lost < limit).all()


def test_short_final_spans_are_not_truncated() -> None:
    """SST keeps at least sst_min_codes codes and drops at least one (the reference skips short spans)."""
    draws = {n: [draw_sst(ONLY_SST, n, sample_rng(0, e, "x", "sst")) for e in range(40)] for n in range(1, 30)}
    for n, keeps in draws.items():
        if n <= ONLY_SST.sst_min_codes:
            assert keeps == [None] * 40, n
        else:
            assert all(keep is not None and ONLY_SST.sst_min_codes <= keep < n for keep in keeps), n
    short = two_turn_voice_chat(n_final=5)
    batch = TtTCollator(VOCAB, ONLY_SST, 512, seed=0)([as_sample(short, "short")], epoch=0)
    assert batch.stats["sst"] == 0 and np.array_equal(restored(batch), short.input_ids)
    relaxed = TtTCollator(VOCAB, replace(ONLY_SST, sst_min_codes=1), 512, seed=0)([as_sample(short, "short")], epoch=0)
    assert relaxed.stats["sst"] == 1


def test_sst_off_or_no_final_span() -> None:
    rng = np.random.default_rng(0)
    assert draw_sst(replace(ONLY_SST, sst=False), 10, rng) is None
    assert draw_sst(ONLY_SST, 0, rng) is None
    seq = build_chat(VOCAB, [Turn("user", [Part(text="q")]), Turn("assistant", [Part.audio(np.arange(5))])])
    assert sst_span(seq.spans, seq.input_ids, EOT) is None
    with pytest.raises(ValueError):
        apply_sst(seq.input_ids, seq.spans, 0, 1)  # a text span


def test_sst_only_when_the_final_span_is_diffused() -> None:
    """Under BANOM the truncated span would stay clean and the text after it would be lost for nothing:
    BANOM samples keep their whole sequence. Under PPM the final span is still diffused."""
    sample = as_sample(two_turn_voice_chat(), "b")
    full = len(two_turn_voice_chat().input_ids)
    banom_always = TtTCollator(VOCAB, ObjectiveConfig(p_mix=1.0, ppm=False, p_trunc=1.0), 512, seed=0)
    for epoch in range(4):
        batch = banom_always([sample], epoch=epoch)
        assert batch.stats["banom"] == 1 and batch.stats["sst"] == 0 and len(row_of(batch)) == full
        assert batch.n_maskable == 0
    ppm_always = TtTCollator(VOCAB, ObjectiveConfig(banom=False, p_prefix=1.0, p_trunc=1.0), 512, seed=0)
    for epoch in range(4):
        batch = ppm_always([sample], epoch=epoch)
        n = len(row_of(batch))
        assert batch.stats["ppm"] == 1 and batch.stats["sst"] == 1 and n < full
        assert batch.n_maskable >= n - two_turn_voice_chat().spans[-3].start - 1  # the open span's codes


def test_sst_stat_counts_only_truncations_that_survive_the_fit() -> None:
    answer = [Part(text="a"), Part.audio(np.arange(100), final=True)]
    seq = build_chat(VOCAB, [Turn("user", [Part(text="q")]), Turn("assistant", answer)])
    batch = TtTCollator(VOCAB, ONLY_SST, 20, seed=0)([as_sample(seq, "fit")], epoch=0)
    assert batch.stats["truncated"] == 1 and batch.stats["sst"] == 0
    assert not VOCAB.is_audio(row_of(batch)).any()  # the fit dropped the (truncated) span whole


def test_banom_and_ppm_are_drawn_per_sample() -> None:
    """Within ONE micro-batch some samples get BANOM / PPM and others do not (reference: one coin per
    micro-batch), and a sample is noised the same whatever else is in its micro-batch."""
    cfg = ObjectiveConfig(p_mix=0.5, p_prefix=0.5, sst=False)
    samples = [as_sample(two_turn_voice_chat(), f"s{i}") for i in range(24)]
    collator = TtTCollator(VOCAB, cfg, 4096, seed=7, packing=False)
    batch = collator(samples, epoch=0)
    assert 0 < batch.stats["banom"] < 24 and 0 < batch.stats["ppm"] < 24
    for i in (0, 5, 17):
        alone = collator([samples[i]], epoch=0)
        assert np.array_equal(row_of(batch, row=i), row_of(alone))
        assert np.array_equal(batch.labels[i], alone.labels[0])


def test_banom_keeps_audio_clean_and_ppm_keeps_the_prefix_clean() -> None:
    seq = two_turn_voice_chat()
    spans = seq.spans
    targets = target_audio_spans(spans)
    assert diffused_spans(spans, True, None) == frozenset()
    assert diffused_spans(spans, False, None) == frozenset(targets)
    chosen = diffused_spans(spans, False, 2)
    assert chosen == frozenset(targets[2:])
    plan = plan_targets(spans, len(seq.input_ids), "ttt", chosen)
    for k in targets:
        s = spans[k]
        assert plan.maskable[s.start + 1 : s.end].all() == (k in chosen)
        assert plan.ar_target[s.start]  # the opener stays an AR target either way


def test_ppm_always_leaves_a_span_clean() -> None:
    """PPM starts at span 1 .. n-1 (starting at span 0 would change nothing) and never fires with a
    single target span; stats["ppm"] counts exactly the samples whose maskable set shrank."""
    cfg = ObjectiveConfig(banom=False, p_prefix=1.0, sst=False)
    draws = {draw_ppm(cfg, 4, sample_rng(0, e, "a", "ppm")) for e in range(60)}
    assert draws == {1, 2, 3}
    assert {draw_ppm(cfg, 2, sample_rng(0, e, "a", "ppm")) for e in range(20)} == {1}
    assert draw_ppm(cfg, 1, sample_rng(0, 0, "a", "ppm")) is None
    assert draw_ppm(cfg, 0, sample_rng(0, 0, "a", "ppm")) is None
    assert draw_ppm(replace(cfg, ppm=False), 4, sample_rng(0, 0, "a", "ppm")) is None
    speech = [Part.audio(np.arange(60), final=True)]
    tts = build_chat(VOCAB, [Turn("user", [Part(text="say hi")]), Turn("assistant", speech)])
    chat = two_turn_voice_chat()
    for seq, fires in ((tts, False), (chat, True)):
        plain = TtTCollator(VOCAB, replace(cfg, ppm=False), 512, seed=0)([as_sample(seq, "p")], epoch=0)
        for epoch in range(6):
            batch = TtTCollator(VOCAB, cfg, 512, seed=0)([as_sample(seq, "p")], epoch=epoch)
            assert batch.stats["ppm"] == float(fires)
            assert (batch.n_maskable < plain.n_maskable) == fires


def test_banom_switch() -> None:
    cfg = ObjectiveConfig(p_mix=1.0)
    assert not draw_banom(replace(cfg, banom=False), sample_rng(0, 0, "a", "banom"))
    assert draw_banom(cfg, sample_rng(0, 0, "a", "banom"))


def _same_row(a: PackedBatch, b: PackedBatch, row: int) -> bool:
    fields = ("input_ids", "labels", "loss_kind", "loss_weight", "block_ids", "doc_ids")
    return all(bool((getattr(a, f)[row] == getattr(b, f)[row]).all()) for f in fields)


@pytest.mark.parametrize("strategy", ["banom", "ppm", "sst"])
def test_ablation_changes_only_the_samples_where_the_strategy_fired(strategy: str) -> None:
    """Each strategy draws from its own stream, so switching one off leaves every other sample's draws
    (strategies, t, mask pattern) exactly as in the full run."""
    samples = [as_sample(two_turn_voice_chat(10 + 3 * i), f"s{i}") for i in range(16)]
    full_cfg = ObjectiveConfig(p_mix=0.4, p_prefix=0.4, p_trunc=0.4)
    full = TtTCollator(VOCAB, full_cfg, 4096, seed=1, packing=False)
    ablated = TtTCollator(VOCAB, replace(full_cfg, **{strategy: False}), 4096, seed=1, packing=False)
    fired = [full([s], epoch=2).stats[strategy] == 1 for s in samples]
    assert 0 < sum(fired) < len(samples)
    a, b = full(samples, epoch=2), ablated(samples, epoch=2)
    assert b.stats[strategy] == 0
    for row, did_fire in enumerate(fired):
        if not did_fire:
            assert _same_row(a, b, row), row
    assert not all(_same_row(a, b, row) for row in range(len(samples)))


def test_collated_sst_sample_is_well_formed() -> None:
    sample = as_sample(two_turn_voice_chat(), "w")
    original = as_spans(sample["spans"])
    final = sst_span(original, sample["input_ids"], EOT)
    for epoch in range(8):
        batch = TtTCollator(VOCAB, ONLY_SST, 512, seed=0)([sample], epoch=epoch)
        ids = restored(batch)
        labels = batch.labels[0][batch.doc_ids[0] == 0].numpy()
        validate_spans(VOCAB, ids, [*original[:final], replace(original[final], end=len(ids))])
        assert VOCAB.is_audio(ids[-1:]).all()  # the span stays open
        assert labels[-1] == IGNORE  # the last position has nothing to predict
