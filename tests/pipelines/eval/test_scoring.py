"""Corpus-level WER/CER: normalisation on both sides, S/D/I counts, sum-of-edits over sum-of-reference-tokens, and
the bootstrap interval."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.eval.scoring import (
    bootstrap_interval,
    error_rate,
    normalize_chars,
    normalize_english,
    scoring_for,
    utterance_counts,
)


def test_english_normaliser_applies_to_both_sides() -> None:
    assert normalize_english("Mr. Smith paid twenty-five dollars, uh, for the colour TV!") == \
        "mister smith paid $25 for the color tv"
    result = error_rate(["It's twenty-five past ten."], ["it is 25 past 10"], "en")
    assert (result.metric, result.rate, result.reference_tokens) == ("wer", 0.0, 5)


def test_counts_substitutions_deletions_insertions() -> None:
    result = error_rate(["the cat sat on the mat", "hello world"], ["the bat sat on mat", "hello big world"], "en")
    assert (result.substitutions, result.deletions, result.insertions, result.hits) == (1, 1, 1, 6)
    assert result.reference_tokens == 8 and result.n_utterances == 2
    assert result.rate == pytest.approx(3 / 8)


def test_rate_is_corpus_level_not_mean_of_utterances() -> None:
    refs, hyps = ["one", "a b c d e f g h i j"], ["two", "a b c d e f g h i j"]
    result = error_rate(refs, hyps, "en")
    assert result.rate == pytest.approx(1 / 11)  # mean of per-utterance rates would be (1 + 0) / 2


def test_chinese_cer_ignores_punctuation_and_spaces() -> None:
    assert normalize_chars("你好，世界！ ＡＢ") == "你好世界ab"  # full-width folded, punctuation dropped
    result = error_rate(["今天天气很好。"], ["今天 天气 真好"], "zh")
    assert result.metric == "cer"
    assert (result.substitutions, result.deletions, result.insertions) == (1, 0, 0)
    assert result.rate == pytest.approx(1 / 6)


def test_scoring_by_language() -> None:
    assert scoring_for("zh-CN").metric == "cer" and scoring_for("cmn_hans_cn").metric == "cer"
    assert scoring_for("en_us").normalize("Colour") == "color"
    assert scoring_for("fr").metric == "wer"


def test_empty_inputs() -> None:
    assert error_rate([], [], "en").rate is None
    result = error_rate(["", "hello"], ["noise", ""], "en")
    assert (result.insertions, result.deletions, result.rate) == (1, 1, 2.0)


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        utterance_counts(["a", "b"], ["a"], "word")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.lists(st.sampled_from("abcde"), max_size=6),
                          st.lists(st.sampled_from("abcdx"), max_size=6)), min_size=1, max_size=6))
def test_per_utterance_counts_sum_to_corpus_counts(pairs: list[tuple[list[str], list[str]]]) -> None:
    refs = [" ".join(r) for r, _ in pairs]
    hyps = [" ".join(h) for _, h in pairs]
    counts = utterance_counts(refs, hyps, "word")
    assert (counts[:, 0] + counts[:, 1] + counts[:, 3]).tolist() == [len(r) for r, _ in pairs]
    assert (counts[:, 0] + counts[:, 2] + counts[:, 3]).tolist() == [len(h) for _, h in pairs]
    total = error_rate(refs, hyps, "en", normalize=False)
    assert [total.substitutions, total.deletions, total.insertions, total.hits] == counts.sum(axis=0).tolist()


def test_bootstrap_interval_brackets_the_rate_and_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    refs = [" ".join(rng.choice(list("abcdefgh"), size=8)) for _ in range(60)]
    hyps = [" ".join(w if rng.random() > 0.2 else "z" for w in r.split()) for r in refs]
    a = error_rate(refs, hyps, "en", bootstrap=500, seed=3)
    b = error_rate(refs, hyps, "en", bootstrap=500, seed=3)
    assert a.ci_low is not None and a.ci_high is not None
    assert a.ci_low < a.rate < a.ci_high and a.ci_high - a.ci_low < 0.15
    assert (a.ci_low, a.ci_high, a.confidence) == (b.ci_low, b.ci_high, 0.95)
    assert bootstrap_interval(np.zeros((3, 4), dtype=np.int64), 100, 0.95, 0) is None  # no reference tokens
    assert error_rate(refs, hyps, "en").ci_low is None


# ---- controls: the same outputs against references shuffled across items --------------------------------

def test_derangement_has_no_fixed_point_and_is_seeded() -> None:
    from pipelines.eval.scoring import derangement

    for n in (2, 3, 10, 101):
        for seed in range(5):
            perm = derangement(n, seed)
            assert sorted(perm.tolist()) == list(range(n)) and not (perm == np.arange(n)).any()
            assert (perm == derangement(n, seed)).all()
    assert not (derangement(50, 0) == derangement(50, 1)).all()
    with pytest.raises(ValueError):
        derangement(1, 0)


SENTENCES = [f"the {a} {b} saw a {c} ball" for a in ("red", "big", "old", "small") for b in ("dog", "cat", "man")
             for c in ("green", "blue", "tiny")][:30]


def test_a_perfect_recogniser_beats_its_control() -> None:
    from pipelines.eval.scoring import error_rate_vs_control

    out = error_rate_vs_control(SENTENCES, SENTENCES, "en", bootstrap=500)
    assert out["score"] == 0.0 and out["control"] > 0.2
    assert out["beats_control"] and out["score_ci"][1] < out["control_ci"][0] and out["diff_ci"][1] < 0
    assert out["n"] == 30 and out["metric"] == "wer"


def test_an_answer_that_ignores_its_input_does_not_beat_its_control() -> None:
    from pipelines.eval.scoring import accuracy_vs_control, error_rate_vs_control

    out = error_rate_vs_control(SENTENCES, ["the red dog saw a green ball"] * len(SENTENCES), "en", bootstrap=500)
    assert out["score"] == pytest.approx(out["control"], abs=0.05) and not out["beats_control"]
    assert out["diff_ci"][0] < 0 < out["diff_ci"][1]
    same = accuracy_vs_control([1, 0] * 20, [1, 0] * 20, bootstrap=500)
    assert same["score"] == same["control"] == 0.5 and not same["beats_control"]
    better = accuracy_vs_control([1] * 40, [0] * 40, bootstrap=500)
    assert better["beats_control"] and better["score_ci"] == [1.0, 1.0]
