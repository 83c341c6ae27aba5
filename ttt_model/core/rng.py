"""Per-sample random streams for the objective's random draws.

Every draw (noise level, mask pattern, BANOM/PPM/SST coins) comes from a generator keyed by
(seed, epoch, sample_id, stream). So a sample's draws are reproducible, change every epoch, and do not
depend on which rank, micro-batch or packed row the sample lands in. The reference instead flipped one
coin per micro-batch and cached SST once per sample for all epochs.

Each purpose has its own stream so that switching one strategy off (an ablation) leaves the draws of
the others unchanged: the ablation then differs from the full run only in what it ablates.
"""

from __future__ import annotations

import hashlib

import numpy as np


def _words(text: str) -> list[int]:
    """A stable 64-bit digest of a string as two 32-bit words (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return [int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")]


def sample_rng(seed: int, epoch: int, sample_id: str, stream: str) -> np.random.Generator:
    """The generator for one purpose (`stream`) of one sample in one epoch."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be non-negative, got seed={seed}, epoch={epoch}")
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, *_words(sample_id), *_words(stream)]))
