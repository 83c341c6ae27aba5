"""The three TtT training strategies that reduce the train/test mismatch (paper §Training strategies).

Each is drawn PER SAMPLE PER STEP from the sample's own stream (rng.sample_rng), so the draws are
reproducible, re-drawn every epoch, and independent of batch composition, rank and micro-batch split.
(The reference flipped BANOM/PPM once per micro-batch and cached SST once per sample for all epochs.)
A draw always consumes its stream, whether or not the strategy is switched on, so ablations share all
other draws with the full run.

- BANOM (p_mix): the sample keeps clean audio and gets AR loss on its text targets only, as at inference
  where text follows fully decoded audio.
- PPM (p_prefix): a random target audio span is chosen; the spans before it stay clean (no loss), it and
  the later ones are diffused, as at inference where earlier spans are already decoded.
- SST (p_trunc): the final span of a target turn keeps 30–90 % of its codes; its closer and the rest of
  the sample are dropped, so the span stays open and the model cannot learn that <EOA> comes at a fixed
  position relative to the span's start. Only the LAST final span of a sample is truncated: truncating an
  earlier turn's final span would throw away every later turn with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from tokenization.sequence import Span
from ttt_model.objective import ObjectiveConfig


@dataclass(frozen=True)
class StrategyDraw:
    """What fired for one sample in one epoch (recorded in the batch stats)."""

    banom: bool = False
    ppm_from: int | None = None  # PPM: ordinal (among target audio spans) of the first diffused span
    sst_keep: int | None = None  # SST: number of codes kept in the truncated span


def target_audio_spans(spans: Sequence[Span]) -> list[int]:
    """Indices (into `spans`) of the target audio spans, in order."""
    return [k for k, s in enumerate(spans) if s.kind == "audio" and s.is_target]


def sst_span(spans: Sequence[Span]) -> int | None:
    """Index of the span SST may truncate: the last final target audio span, if any."""
    finals = [k for k in target_audio_spans(spans) if spans[k].is_final_in_turn]
    return finals[-1] if finals else None


def draw_sst(cfg: ObjectiveConfig, n_codes: int, rng: np.random.Generator) -> int | None:
    """Number of codes SST keeps (None: no truncation); at least one code is always kept."""
    fire = rng.random() < cfg.p_trunc
    fraction = rng.uniform(*cfg.trunc_keep)
    if not (cfg.sst and fire and n_codes >= 1):
        return None
    return max(1, int(fraction * n_codes))


def apply_sst(ids: np.ndarray, spans: Sequence[Span], index: int, keep: int) -> tuple[np.ndarray, list[Span]]:
    """Truncate audio span `index` to its opener + `keep` codes (keep <= its number of codes, so the
    closer always goes) and drop everything after it."""
    span = spans[index]
    if span.kind != "audio" or not 1 <= keep < len(span):
        raise ValueError(f"cannot keep {keep} codes of span {span}")
    cut = span.start + 1 + keep
    return ids[:cut], [*spans[:index], replace(span, end=cut)]


def draw_banom(cfg: ObjectiveConfig, rng: np.random.Generator) -> bool:
    fire = rng.random() < cfg.p_mix
    return cfg.banom and bool(fire)


def draw_ppm(cfg: ObjectiveConfig, n_target_audio: int, rng: np.random.Generator) -> int | None:
    """Ordinal of the first diffused target audio span (None: PPM did not fire or there is no audio)."""
    fire = rng.random() < cfg.p_prefix
    u = rng.random()
    if not (cfg.ppm and fire and n_target_audio > 0):
        return None
    return int(u * n_target_audio)


def diffused_spans(spans: Sequence[Span], banom: bool, ppm_from: int | None) -> frozenset[int]:
    """Indices (into `spans`) of the target audio spans that get noised and diffusion loss."""
    if banom:
        return frozenset()
    targets = target_audio_spans(spans)
    return frozenset(targets[ppm_from or 0 :])
