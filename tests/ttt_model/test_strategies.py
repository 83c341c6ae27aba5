from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenization.codecs.base import CodecIdentity
from tokenization.sequence import Part, Turn, build_chat, spans_to_pylist, validate_spans
from tokenization.text import load_text_tokenizer
from tokenization.vocab import UnifiedVocab
from ttt_model.batch import TtTCollator, as_spans
from ttt_model.objective import IGNORE, ObjectiveConfig, plan_targets
from ttt_model.rng import sample_rng
from ttt_model.strategies import (
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


def row_of(batch, doc: int = 0, row: int = 0) -> np.ndarray:
    return batch.input_ids[row][batch.doc_ids[row] == doc].numpy()


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
@given(st.integers(1, 60), st.integers(0, 50), st.integers(0, 10**6))
def test_sst_truncates_the_last_final_span_only(n_final: int, epoch: int, seed: int) -> None:
    seq = two_turn_voice_chat(n_final)
    spans = seq.spans
    final = sst_span(spans)
    assert final is not None and spans[final].turn == 3
    keep = draw_sst(ONLY_SST, n_final, sample_rng(seed, epoch, "x", "sst"))
    assert keep is not None and 1 <= keep <= max(1, int(0.9 * n_final)) and keep >= int(0.3 * n_final)
    ids, new_spans = apply_sst(seq.input_ids, spans, final, keep)
    validate_spans(VOCAB, ids, new_spans)  # never cut mid-span, never a closer of the wrong type
    assert VOCAB.is_audio(ids[-keep:]).all() and len(ids) == spans[final].start + 1 + keep  # open span, rest dropped
    assert new_spans[:final] == spans[:final]  # the first turn's final span is untouched


def test_sst_off_or_no_final_span() -> None:
    rng = np.random.default_rng(0)
    assert draw_sst(replace(ONLY_SST, sst=False), 10, rng) is None
    assert draw_sst(ONLY_SST, 0, rng) is None
    seq = build_chat(VOCAB, [Turn("user", [Part(text="q")]), Turn("assistant", [Part.audio(np.arange(5))])])
    assert sst_span(seq.spans) is None
    with pytest.raises(ValueError):
        apply_sst(seq.input_ids, seq.spans, 0, 1)  # a text span


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


def test_ppm_draw_range_and_switches() -> None:
    cfg = ObjectiveConfig(p_prefix=1.0)
    draws = {draw_ppm(cfg, 4, sample_rng(0, e, "a", "ppm")) for e in range(60)}
    assert draws == {0, 1, 2, 3}
    assert draw_ppm(cfg, 0, sample_rng(0, 0, "a", "ppm")) is None
    assert draw_ppm(replace(cfg, ppm=False), 4, sample_rng(0, 0, "a", "ppm")) is None
    assert not draw_banom(replace(cfg, banom=False, p_mix=1.0), sample_rng(0, 0, "a", "banom"))
    assert draw_banom(replace(cfg, p_mix=1.0), sample_rng(0, 0, "a", "banom"))


def test_ablation_keeps_the_other_draws() -> None:
    """Switching SST off changes nothing but SST: BANOM/PPM coins come from their own streams."""
    samples = [as_sample(two_turn_voice_chat(), f"s{i}") for i in range(16)]
    full = TtTCollator(VOCAB, ObjectiveConfig(), 4096, seed=1, packing=False)(samples, epoch=2)
    no_sst = TtTCollator(VOCAB, ObjectiveConfig(sst=False), 4096, seed=1, packing=False)(samples, epoch=2)
    assert full.stats["banom"] == no_sst.stats["banom"] and full.stats["ppm"] == no_sst.stats["ppm"]
    assert full.stats["sst"] > 0 and no_sst.stats["sst"] == 0


def test_collated_sst_sample_is_well_formed() -> None:
    sample = as_sample(two_turn_voice_chat(), "w")
    for epoch in range(8):
        batch = TtTCollator(VOCAB, ONLY_SST, 512, seed=0)([sample], epoch=epoch)
        ids = row_of(batch)
        labels = batch.labels[0][batch.doc_ids[0] == 0].numpy()
        restored = np.where(ids == VOCAB.mask_id, np.roll(labels, 1), ids)  # masked tokens are their labels
        original = as_spans(sample["spans"])
        final = sst_span(original)
        validate_spans(VOCAB, restored, [*original[:final], replace(original[final], end=len(ids))])
        assert VOCAB.is_audio(restored[-1:]).all()  # the span stays open
        assert labels[-1] == IGNORE  # the last position has nothing to predict
