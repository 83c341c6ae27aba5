"""The shard format: directory layout, Parquet schema, file names and the vocabulary manifest a shard carries.

The tokenize job writes it (pipelines/shards.py, pipelines/tokenize_job.py) and training reads it
(ttt_model/training/data.py), so it lives below both.

Layout under `paths.shards`:
    parquet/part-KKKKK-of-NNNNN.parquet   training samples (SHARD_SCHEMA), vocab manifest in KV metadata
    wds/part-KKKKK-of-NNNNN.tar           the same samples as WebDataset: <key>.json (metadata + spans)
                                          and <key>.npy (input_ids, int32); <key> = `wds_key(sample_id)`
    quarantine/part-KKKKK-of-NNNNN.parquet  rows that could not be used, with stage / error / detail
    manifest.json                         vocabulary manifest + counts per source and task
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pyarrow as pa
import pyarrow.parquet as pq

from tokenization.sequence import SPAN_ARROW_TYPE

MANIFEST_METADATA_KEY = b"ttt.vocab_manifest"
PARQUET_DIR, WDS_DIR, QUARANTINE_DIR, MANIFEST_FILE = "parquet", "wds", "quarantine", "manifest.json"

# Columns in file order: small metadata first, the token payload last.
SHARD_SCHEMA = pa.schema([
    ("sample_id", pa.string()),  # record_id, or record_id#r<k> for the k-th extra copy of an up-sampled record
    ("record_id", pa.string()),  # <source>/<corpus id>
    ("copy", pa.int16()),  # 0 for the original, k for record_id#r<k>
    ("source", pa.string()),
    ("kind", pa.string()),  # reader kind
    ("task", pa.string()),
    ("language", pa.string()),
    ("split", pa.string()),
    ("locator", pa.string()),  # where a human finds the raw data
    ("speaker", pa.string()),
    ("n_tokens", pa.int32()),
    ("n_text_tokens", pa.int32()),
    ("n_audio_tokens", pa.int32()),
    ("audio_seconds", pa.float64()),  # all audio in the sample (input + synthesised)
    ("input_seconds", pa.float64()),  # the record's own audio
    ("speech_seconds", pa.float64()),  # audio synthesised by TTS
    ("orig_sample_rate", pa.int32()),  # of the record's own audio (0 = none)
    ("orig_channels", pa.int16()),
    ("resampled", pa.bool_()),
    ("downmixed", pa.bool_()),
    ("audio_windows", pa.int16()),  # >1 when over-long audio was split into several spans
    ("tts_voice", pa.string()),
    ("text", pa.string()),  # reference transcript / answer / document (for evaluation)
    ("spans", pa.list_(SPAN_ARROW_TYPE)),
    ("input_ids", pa.list_(pa.int32())),
])
METADATA_COLUMNS = [f.name for f in SHARD_SCHEMA if f.name not in ("spans", "input_ids")]


def shard_name(index: int, count: int, suffix: str) -> str:
    return f"part-{index:05d}-of-{count:05d}{suffix}"


def wds_key(sample_id: str) -> str:
    """A WebDataset key for a sample id: WebDataset splits member names at the first '.', and '/' makes
    directories, so both are percent-encoded (reversible with `sample_id_of_key`)."""
    return quote(sample_id, safe="#-_~").replace(".", "%2E")


def sample_id_of_key(key: str) -> str:
    return unquote(key)


def read_vocab_manifest(path: str | Path) -> dict[str, Any]:
    """The vocabulary manifest stored in a Parquet shard's key-value metadata."""
    meta = pq.read_schema(path).metadata or {}
    if MANIFEST_METADATA_KEY not in meta:
        raise ValueError(f"{path}: no vocabulary manifest in the Parquet metadata")
    return json.loads(meta[MANIFEST_METADATA_KEY])


__all__ = [
    "MANIFEST_FILE", "MANIFEST_METADATA_KEY", "METADATA_COLUMNS", "PARQUET_DIR", "QUARANTINE_DIR", "SHARD_SCHEMA",
    "WDS_DIR", "read_vocab_manifest", "sample_id_of_key", "shard_name", "wds_key",
]
