"""Corpus-level WER/CER with substitution/deletion/insertion counts: docs/corpora.md (WER / CER).

- English: Whisper's EnglishTextNormalizer on both sides (lowercase, drop bracketed spans and fillers,
  expand contractions, spell-normalise, numbers to digits), then word error rate.
- Chinese (and other languages written without spaces): character error rate after NFKC folding, punctuation
  and whitespace removal.
- Other languages: Whisper's BasicTextNormalizer, then WER.

The rate is corpus-level: the sum of edits over the sum of reference tokens, never a mean of per-utterance
rates (a mean over-weights short utterances). jiwer 4 does the alignment (`process_words`/`process_characters`
on the whole list at once); per-utterance counts come from its alignment chunks, so the optional bootstrap
interval resamples utterances without re-aligning anything.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jiwer
import numpy as np

Unit = Literal["word", "char"]

# Languages scored per character (no word delimiters in the script).
CHAR_LANGUAGES = frozenset({"zh", "cmn", "yue", "ja", "th"})


@functools.cache
def _english() -> Callable[[str], str]:
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


@functools.cache
def _basic() -> Callable[[str], str]:
    from whisper_normalizer.basic import BasicTextNormalizer

    return BasicTextNormalizer()


def normalize_english(text: str) -> str:
    """Whisper's English normaliser (the standard for English WER)."""
    return _english()(text)


def normalize_chars(text: str) -> str:
    """NFKC (full-width forms to ASCII), lowercase, then drop punctuation and whitespace: what is left are the
    characters a CER counts."""
    folded = unicodedata.normalize("NFKC", text).lower()
    return "".join(c for c in folded if not c.isspace() and not unicodedata.category(c).startswith("P"))


def normalize_basic(text: str) -> str:
    """Whisper's language-agnostic normaliser (lowercase, symbols and brackets removed)."""
    return _basic()(text)


@dataclass(frozen=True)
class Scoring:
    """How one language is scored: the metric name, its token unit and the normaliser for both sides."""

    metric: Literal["wer", "cer"]
    unit: Unit
    normalize: Callable[[str], str]


def scoring_for(language: str) -> Scoring:
    """English -> WER (Whisper English normaliser); zh & co. -> CER; anything else -> WER (basic normaliser)."""
    lang = language.lower().split("-")[0].split("_")[0]
    if lang in CHAR_LANGUAGES:
        return Scoring("cer", "char", normalize_chars)
    if lang == "en":
        return Scoring("wer", "word", normalize_english)
    return Scoring("wer", "word", normalize_basic)


@dataclass(frozen=True)
class ErrorRate:
    """Corpus-level error counts; `rate` is None when there is no reference token to divide by."""

    metric: str
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    n_utterances: int
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float | None = None

    @property
    def reference_tokens(self) -> int:
        return self.substitutions + self.deletions + self.hits

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float | None:
        return self.errors / self.reference_tokens if self.reference_tokens else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; rates as fractions (the report prints percentages)."""
        return {
            "metric": self.metric, "rate": self.rate, "substitutions": self.substitutions,
            "deletions": self.deletions, "insertions": self.insertions, "hits": self.hits,
            "reference_tokens": self.reference_tokens, "n_utterances": self.n_utterances,
            "ci_low": self.ci_low, "ci_high": self.ci_high, "confidence": self.confidence,
        }


def utterance_counts(references: Sequence[str], hypotheses: Sequence[str], unit: Unit) -> np.ndarray:
    """Per-utterance [S, D, I, H] counts (shape (n, 4), int64) of already-normalised texts, aligned by jiwer
    in one call. Word units split on whitespace; char units count every character."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    counts = np.zeros((len(references), 4), dtype=np.int64)
    if not references:
        return counts
    process = jiwer.process_words if unit == "word" else jiwer.process_characters
    out = process(list(references), list(hypotheses))
    column = {"substitute": 0, "delete": 1, "insert": 2, "equal": 3}
    for i, chunks in enumerate(out.alignments):
        for chunk in chunks:
            span = chunk.hyp_end_idx - chunk.hyp_start_idx if chunk.type == "insert" else (
                chunk.ref_end_idx - chunk.ref_start_idx)
            counts[i, column[chunk.type]] += span
    return counts


def bootstrap_interval(counts: np.ndarray, n_resamples: int, confidence: float, seed: int,
                       chunk: int = 256) -> tuple[float, float] | None:
    """Percentile bootstrap of the corpus-level rate, resampling utterances with replacement.

    `counts` is `utterance_counts`' output. Resamples whose reference is empty are skipped; None when no
    resample had a reference token. Works in chunks so memory stays (chunk × n) whatever `n_resamples` is.
    """
    n = len(counts)
    if n == 0 or n_resamples <= 0:
        return None
    errors = counts[:, 0] + counts[:, 1] + counts[:, 2]
    refs = counts[:, 0] + counts[:, 1] + counts[:, 3]
    rng = np.random.default_rng(seed)
    rates: list[np.ndarray] = []
    for start in range(0, n_resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
        ref_sum = refs[idx].sum(axis=1)
        keep = ref_sum > 0
        rates.append(errors[idx].sum(axis=1)[keep] / ref_sum[keep])
    all_rates = np.concatenate(rates)
    if all_rates.size == 0:
        return None
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(all_rates, [tail, 100 - tail])
    return float(low), float(high)


def error_rate(references: Sequence[str], hypotheses: Sequence[str], language: str = "en", *,
               normalize: bool = True, bootstrap: int = 0, confidence: float = 0.95, seed: int = 0) -> ErrorRate:
    """Corpus-level WER or CER (chosen by `language`, see `scoring_for`) of hypotheses against references.

    `normalize=False` scores the texts as given (already normalised by the caller). `bootstrap` > 0 adds a
    percentile interval from that many utterance resamples.
    """
    scoring = scoring_for(language)
    if normalize:
        references = [scoring.normalize(r) for r in references]
        hypotheses = [scoring.normalize(h) for h in hypotheses]
    counts = utterance_counts(references, hypotheses, scoring.unit)
    s, d, i, h = (int(v) for v in counts.sum(axis=0))
    interval = bootstrap_interval(counts, bootstrap, confidence, seed) if bootstrap else None
    return ErrorRate(
        metric=scoring.metric, substitutions=s, deletions=d, insertions=i, hits=h, n_utterances=len(counts),
        ci_low=interval[0] if interval else None, ci_high=interval[1] if interval else None,
        confidence=confidence if interval else None,
    )


# ------------------------------------------------------------------------------- controls and intervals
#
# A score means something only beside what a model that ignores its input would get. The control scores the
# SAME outputs against the references of other items (a seeded derangement within the set): a system whose
# answers do not depend on the input scores the same against its own references and against shuffled ones,
# so only a real dependence on the input moves the score away from its control.


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of range(n) with no fixed point (item i is scored against reference perm[i]).
    Sattolo's algorithm: a uniformly random single n-cycle, which never maps an item to itself. n < 2 has no
    derangement: ValueError."""
    if n < 2:
        raise ValueError(f"a control needs at least 2 items, got {n}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC0])).integers
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng(0, i))
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def compare_to_control(model: np.ndarray, control: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray],
                       lower_is_better: bool, n_resamples: int, confidence: float = 0.95, seed: int = 0,
                       chunk: int = 256) -> dict[str, Any]:
    """Score vs control with paired percentile-bootstrap intervals (the same item resamples for both sides).

    `model` and `control` hold per-item values, shape (n, k); `statistic` maps resampled arrays (r, n, k) to r
    scores (a corpus-level error rate, a mean accuracy). `beats_control` is true only when the score's interval
    lies entirely on the better side of the control's interval; `diff_*` is the interval of score - control.
    """
    n = len(model)
    out: dict[str, Any] = {"n": n, "score": None, "control": None, "lower_is_better": lower_is_better,
                           "confidence": confidence, "beats_control": False}
    if n == 0:
        return out
    out["score"] = float(statistic(model[None])[0])
    out["control"] = float(statistic(control[None])[0])
    if n_resamples <= 0:
        return out
    rng = np.random.default_rng(seed)
    s_all, c_all = [], []
    for start in range(0, n_resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
        s_all.append(statistic(model[idx]))
        c_all.append(statistic(control[idx]))
    s, c = np.concatenate(s_all), np.concatenate(c_all)
    ok = np.isfinite(s) & np.isfinite(c)
    s, c = s[ok], c[ok]
    if s.size == 0:
        return out
    tail = (1.0 - confidence) / 2 * 100
    for name, values in (("score", s), ("control", c), ("diff", s - c)):
        low, high = np.percentile(values, [tail, 100 - tail])
        out[f"{name}_ci"] = [float(low), float(high)]
    score_ci, control_ci = out["score_ci"], out["control_ci"]
    out["beats_control"] = bool(score_ci[1] < control_ci[0] if lower_is_better else score_ci[0] > control_ci[1])
    return out


def _rate_statistic(counts: np.ndarray) -> np.ndarray:
    """Corpus-level error rate of resampled [S, D, I, H] counts, shape (r, n, 4) -> (r,)."""
    errors = counts[..., 0] + counts[..., 1] + counts[..., 2]
    refs = counts[..., 0] + counts[..., 1] + counts[..., 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        return errors.sum(axis=1) / refs.sum(axis=1)


def error_rate_vs_control(references: Sequence[str], hypotheses: Sequence[str], language: str = "en", *,
                          bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Corpus-level WER/CER of the hypotheses against their references and against deranged references."""
    scoring = scoring_for(language)
    refs = [scoring.normalize(r) for r in references]
    hyps = [scoring.normalize(h) for h in hypotheses]
    if len(refs) < 2:
        return {"metric": scoring.metric, "n": len(refs), "score": None, "control": None, "beats_control": False}
    perm = derangement(len(refs), seed)
    model = utterance_counts(refs, hyps, scoring.unit)
    control = utterance_counts([refs[j] for j in perm], hyps, scoring.unit)
    return {"metric": scoring.metric, **compare_to_control(model, control, _rate_statistic, True, bootstrap,
                                                             confidence, seed)}


def accuracy_vs_control(scores: Sequence[float], control_scores: Sequence[float], *, bootstrap: int = 1000,
                        confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Mean score (accuracy: 1/0 per item) beside the mean of the same answers judged against deranged references."""
    model = np.asarray(scores, dtype=np.float64).reshape(-1, 1)
    control = np.asarray(control_scores, dtype=np.float64).reshape(-1, 1)
    return compare_to_control(model, control, lambda a: a[..., 0].mean(axis=1), False, bootstrap, confidence, seed)
