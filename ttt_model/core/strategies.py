"""The three TtT training strategies that reduce the train/test mismatch (paper §Training strategies).

Each is drawn PER SAMPLE PER EPOCH from the sample's own stream (rng.sample_rng), so the draws are
reproducible, re-drawn every epoch, and independent of batch composition, rank and micro-batch split.
(The reference flipped BANOM/PPM once per micro-batch and cached SST once per sample for all epochs.)
A draw always consumes its stream, whether or not the strategy is switched on or can apply, so an
ablation shares every other draw with the full run and differs only in what it removes.

- BANOM (p_mix): the sample keeps clean audio and gets AR loss on its text targets only, as at inference
  where text follows fully decoded audio.
- PPM (p_prefix): a target audio span other than the first is chosen; the spans before it stay clean (no
  loss), it and the later ones are diffused, as at inference where earlier spans are already decoded.
  Meaningless with fewer than two target audio spans (nothing could stay clean), so it never fires there.
- SST (p_trunc): the final span of the sample's last target turn keeps 30–90 % of its codes; its closer
  and the rest of its turn are dropped and the sample ends there, so the span stays open and the model
  cannot learn that <EOA> comes at a fixed position relative to the span's start. SST applies only where
  that costs no other target: the span must be followed by nothing but the rest of its own turn (chat) or
  by nothing but the closing <|endoftext|> (documents, whose single "turn" is the whole text). A sample
  whose last target turn has no final span, or whose final span is followed by later target turns or by
  more document content, is never truncated: the reference cut at the last final span of the sample
  and silently dropped every later turn with it. SST keeps at least `sst_min_codes` codes and drops at
  least one, so shorter spans are skipped (the reference skips short spans and keeps at least 5 codes).
  SST only fires where the span is then diffused (not under BANOM), see batch.TtTCollator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from tokenization.sequence import Span
from ttt_model.core.objective import ObjectiveConfig


@dataclass(frozen=True)
class StrategyDraw:
    """What took effect for one sample in one epoch (recorded in the batch stats)."""

    banom: bool = False
    ppm_from: int | None = None  # PPM: ordinal (among target audio spans) of the first diffused span, >= 1
    sst_keep: int | None = None  # SST: number of codes kept in the truncated span


def target_audio_spans(spans: Sequence[Span]) -> list[int]:
    """Indices (into `spans`) of the target audio spans, in order."""
    return [k for k, s in enumerate(spans) if s.kind == "audio" and s.is_target]


def sst_span(spans: Sequence[Span], ids: np.ndarray, end_of_text: int) -> int | None:
    """Index of the span SST may truncate, or None when truncating would drop another target.

    The candidate is the sample's last final target audio span. In a chat it qualifies when every target
    token after it belongs to its own turn (so it lies in the last target turn and only that turn's
    closer, trailing text, <|im_end|> and newline, plus any later prompt-only turns, are dropped). In a
    document (role "document") it qualifies only when nothing but the closing `end_of_text` follows it.
    """
    finals = [k for k in target_audio_spans(spans) if spans[k].is_final_in_turn]
    if not finals:
        return None
    index = finals[-1]
    span = spans[index]
    if span.role == "document":
        tail = ids[span.end :]
        return index if len(tail) == 0 or (len(tail) == 1 and int(tail[0]) == end_of_text) else None
    later_targets = (s for s in spans[index + 1 :] if s.is_target)
    return index if all(s.turn == span.turn for s in later_targets) else None


def draw_sst(cfg: ObjectiveConfig, n_codes: int, rng: np.random.Generator) -> int | None:
    """Number of codes SST keeps (None: no truncation): a `trunc_keep` fraction of `n_codes`, at least
    `cfg.sst_min_codes`, and fewer than `n_codes` (a truncation must drop a code)."""
    fire = rng.random() < cfg.p_trunc
    fraction = rng.uniform(*cfg.trunc_keep)
    keep = max(cfg.sst_min_codes, int(fraction * n_codes))
    if not (cfg.sst and fire and keep < n_codes):
        return None
    return keep


def apply_sst(ids: np.ndarray, spans: Sequence[Span], index: int, keep: int) -> tuple[np.ndarray, list[Span]]:
    """Truncate audio span `index` (chosen by `sst_span`) to its opener + `keep` codes and end the sample
    there. At least the span's last token (its closer) must go; draw_sst also makes a code go."""
    span = spans[index]
    if span.kind != "audio" or not 1 <= keep < len(span) - 1:
        raise ValueError(f"cannot keep {keep} codes of span {span}")
    cut = span.start + 1 + keep
    return ids[:cut], [*spans[:index], replace(span, end=cut)]


def draw_banom(cfg: ObjectiveConfig, rng: np.random.Generator) -> bool:
    fire = rng.random() < cfg.p_mix
    return cfg.banom and bool(fire)


def draw_ppm(cfg: ObjectiveConfig, n_target_audio: int, rng: np.random.Generator) -> int | None:
    """Ordinal of the first diffused target audio span, uniform over 1 .. n - 1 so that at least one span
    stays clean and at least one is diffused (None: PPM did not fire, or fewer than two target spans)."""
    fire = rng.random() < cfg.p_prefix
    u = rng.random()
    if not (cfg.ppm and fire and n_target_audio >= 2):
        return None
    return 1 + int(u * (n_target_audio - 1))


def diffused_spans(spans: Sequence[Span], banom: bool, ppm_from: int | None) -> frozenset[int]:
    """Indices (into `spans`) of the target audio spans that get noised and diffusion loss."""
    if banom:
        return frozenset()
    targets = target_audio_spans(spans)
    return frozenset(targets[ppm_from or 0 :])
