"""Row status, quarantine vocabulary and the quarantine table.

Ray Data's `max_errored_blocks` drops whole blocks (docs/ray.md), so no stage of the tokenize job lets an
exception escape: every UDF catches errors per row and marks the row instead. A row is `ok`, `quarantine`
(something is wrong with the data: kept with where and why, for a human to look at) or `drop` (an
explicit filter such as ratio sub-sampling: only counted, per reason). Stages skip rows that are not ok,
so each record leaves the pipeline exactly once, which is what makes the counts reconcile:
read = written + quarantined + dropped.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyarrow as pa

OK, QUARANTINE, DROP = "ok", "quarantine", "drop"
STAGES = ("read", "decode", "tts", "encode", "build")

# error classes (the `error` column): short and groupable; the message goes to `detail`
READER_ERROR = "reader_error"  # the reader flagged the row (missing transcript, bad JSON line, ...)
UNIT_FAILED = "unit_failed"  # a reader raised while reading a unit; rows after that point were not read
MISSING_AUDIO = "missing_audio"
NO_AUDIO = "no_audio"  # the task needs audio and the row points at none
CORRUPT_AUDIO = "corrupt_audio"
BAD_WINDOW = "bad_window"  # the row's time window starts past the end of its file, ends well beyond it, or is empty
EMPTY_AUDIO = "empty_audio"
NAN_AUDIO = "nan_audio"
TOO_LONG = "too_long"
TTS_FAILED = "tts_failed"
ENCODE_FAILED = "encode_failed"
BUILD_FAILED = "build_failed"

# drop reasons (the `drop_reason` column) of records that are fine as data but unfit to train on, each against a
# configured threshold (pipelines/tokenize_job.py: data.audio.*, data.max_sample_tokens)
TOO_SHORT = "too_short"  # audio shorter than data.audio.min_seconds (below what a codec can encode)
TOO_FAST = "too_many_chars_per_second"  # a transcript implausibly long for its audio (data.audio.max_chars_per_second)
TOO_LONG_UNALIGNED = "too_long_unaligned"  # a transcript paired with audio over max_seconds: no alignments to split on
LONGER_THAN_ROW = "longer_than_row"  # a sample longer than the training row (data.max_sample_tokens)

QUARANTINE_SCHEMA = pa.schema([
    ("source", pa.string()),
    ("record_id", pa.string()),
    ("kind", pa.string()),
    ("task", pa.string()),
    ("locator", pa.string()),
    ("stage", pa.string()),
    ("error", pa.string()),
    ("detail", pa.string()),
])


def error_detail(exc: BaseException, limit: int = 500) -> str:
    """`Type: message`, bounded (tracebacks of bad data are noise at millions of rows)."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def audio_problem(wav: np.ndarray) -> str:
    """The quarantine error class of a decoded waveform, or "" when it is usable."""
    if wav.size == 0:
        return EMPTY_AUDIO
    if not np.isfinite(wav).all():
        return NAN_AUDIO
    return ""


def split_windows(num_samples: int, sample_rate: int, max_seconds: float) -> list[tuple[int, int]]:
    """Cut over-long audio into the fewest equal windows of at most `max_seconds` (equal, so no tiny tail
    span); [(0, num_samples)] when it fits."""
    limit = max(1, int(max_seconds * sample_rate))
    n = max(1, math.ceil(num_samples / limit))
    bounds = [round(i * num_samples / n) for i in range(n + 1)]
    return list(itertools.pairwise(bounds))


__all__ = [
    "BAD_WINDOW", "BUILD_FAILED", "CORRUPT_AUDIO", "DROP", "EMPTY_AUDIO", "ENCODE_FAILED", "LONGER_THAN_ROW",
    "MISSING_AUDIO", "NAN_AUDIO", "NO_AUDIO", "OK", "QUARANTINE", "QUARANTINE_SCHEMA", "READER_ERROR", "STAGES",
    "TOO_FAST", "TOO_LONG", "TOO_LONG_UNALIGNED", "TOO_SHORT", "TTS_FAILED", "UNIT_FAILED", "audio_problem",
    "error_detail", "split_windows",
]
