"""Packing samples into fixed-length rows, and fitting over-long samples to the row length.

The reference padded every sample to 2048 tokens. Packing puts several samples in one row; the attention
mask (doc_ids) keeps them from seeing each other and position ids restart per sample, so a packed row
computes exactly what the samples would compute alone, with a fraction of the padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from tokenization.sequence import Span


def fit_to_length(ids: np.ndarray, spans: Sequence[Span], max_tokens: int) -> tuple[np.ndarray, list[Span]]:
    """Keep the longest prefix of at most `max_tokens` tokens that does not end inside an audio span.

    Chosen over raising so one over-long sample cannot stop a training run; the collator counts these in
    its stats. An audio span is never cut (the reference cut spans and dropped their end markers): a span
    that straddles the limit is dropped whole, opener included. A text span may be shortened: it has no
    end marker, so its prefix is still well formed. The result can be empty when the sample starts with an
    audio span longer than `max_tokens`.
    """
    if len(ids) <= max_tokens:
        return ids, list(spans)
    cut = max_tokens
    for s in spans:
        if s.kind == "audio" and s.start < cut < s.end:
            cut = s.start
            break
    kept = [s if s.end <= cut else replace(s, end=cut) for s in spans if s.start < cut]
    return ids[:cut], kept


def pack(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """First-fit-decreasing bin packing of sample lengths into rows of `max_tokens` tokens.

    Returns bins of sample indices (each bin in placement order). Deterministic: ties in length keep the
    input order. FFD uses at most 11/9 OPT + 6/9 bins; a quadratic scan over open bins is fine at
    micro-batch sizes (tens to hundreds of samples).
    """
    if any(n > max_tokens for n in lengths):
        raise ValueError(f"sample longer than max_tokens={max_tokens}: fit it first (fit_to_length)")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        slot = next((b for b, room in enumerate(free) if room >= lengths[i]), None)
        if slot is None:
            bins.append([i])
            free.append(max_tokens - lengths[i])
        else:
            bins[slot].append(i)
            free[slot] -= lengths[i]
    return bins
