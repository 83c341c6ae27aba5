"""The contract between corpus readers and the tokenize job.

Every reader turns a corpus in its native layout into flat `RawRow` dicts (one Arrow-friendly schema for
all corpora, so one Ray Data pipeline handles them). Readers do not decode audio: they point at it
(path + optional time window, or encoded bytes); decoding happens in the job's parallel stages.

Readers split a corpus into `units` (chapter directories, TSV files, JSON manifests, parquet files...)
that the job lists on the driver — cheap metadata only — and then reads in parallel with
`ray.data.from_items(units).flat_map(...)`, so no data passes through the driver.

Nothing is lost silently: a reader that meets a problem it can locate (a wav without transcript, a
garbage-tagged utterance, an unparsable line) still yields a row, with `error` (→ quarantine) or
`drop_reason` (→ counted, explicit filter) set.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from ttt_common.config_tools import reject_unknown_keys

TASKS = ("asr", "tts", "audio_chat", "text_chat", "interleaved", "aac", "sec", "asc", "spoken_qa")

RAW_ROW_SCHEMA = pa.schema([
    ("record_id", pa.string()),  # stable: "<source>/<corpus utterance or sample id>"
    ("source", pa.string()),  # the configured source name
    ("kind", pa.string()),  # reader kind (librispeech, commonvoice, ...)
    ("task", pa.string()),  # default task for this row (the source config may override)
    ("language", pa.string()),  # "en", "zh", ... ("" = unknown)
    ("split", pa.string()),
    ("locator", pa.string()),  # where a human finds it: path[:line] or path#utt-id
    ("text", pa.string()),  # transcript / reference answer / document text ("" if none)
    ("audio_path", pa.string()),  # "" if no audio or audio given as bytes
    ("audio_bytes", pa.binary()),  # encoded audio file bytes (HF parquet exports), else null
    ("audio_start", pa.float64()),  # seconds; 0 = from the start
    ("audio_end", pa.float64()),  # seconds; null = to the end
    ("speaker", pa.string()),
    ("messages_json", pa.string()),  # chat: JSON list of {role, content[, audio_path]}; else ""
    ("meta_json", pa.string()),  # anything else worth keeping (answers aliases, labels, duration...)
    ("error", pa.string()),  # reader-level error → quarantine at stage "read"
    ("drop_reason", pa.string()),  # explicit filter → counted per reason, not quarantined
])


def raw_row(
    *,
    record_id: str,
    source: str,
    kind: str,
    task: str,
    locator: str,
    language: str = "",
    split: str = "",
    text: str = "",
    audio_path: str | Path = "",
    audio_bytes: bytes | None = None,
    audio_start: float = 0.0,
    audio_end: float | None = None,
    speaker: str = "",
    messages: list[dict[str, Any]] | None = None,
    meta: Mapping[str, Any] | None = None,
    error: str = "",
    drop_reason: str = "",
) -> dict[str, Any]:
    """Build a row with every schema field present (Ray Data blocks need a uniform schema)."""
    return {
        "record_id": record_id, "source": source, "kind": kind, "task": task, "language": language,
        "split": split, "locator": locator, "text": text, "audio_path": str(audio_path),
        "audio_bytes": audio_bytes, "audio_start": float(audio_start),
        "audio_end": None if audio_end is None else float(audio_end), "speaker": speaker,
        "messages_json": json.dumps(messages, ensure_ascii=False) if messages is not None else "",
        "meta_json": json.dumps(dict(meta), ensure_ascii=False, sort_keys=True) if meta else "",
        "error": error, "drop_reason": drop_reason,
    }


@dataclass(frozen=True)
class SourceConfig:
    """One entry of the configured source list: `{kind, path, name, task, language, subsets/split, ratio}`."""

    kind: str
    path: str
    name: str = ""
    task: str = ""  # "" = the reader's default task
    language: str = ""  # "" = the reader's default / per-row language
    subsets: tuple[str, ...] = ()  # corpus subsets (LibriSpeech dirs, WenetSpeech "M", GigaSpeech "XL", ...)
    split: str = ""  # corpus split (train/dev/test) where the layout has one
    ratio: float = 1.0  # < 1 down-samples, > 1 up-samples (repeats with distinct sample ids)
    options: Mapping[str, Any] = field(default_factory=dict)  # reader-specific knobs

    @property
    def source_name(self) -> str:
        return self.name or self.kind

    @staticmethod
    def from_mapping(m: Mapping[str, Any]) -> SourceConfig:
        known = {"kind", "path", "name", "task", "language", "subsets", "split", "ratio", "options"}
        reject_unknown_keys(m, known, f"source {dict(m)!r}")
        if "kind" not in m or "path" not in m:
            raise ValueError(f"source {dict(m)!r}: 'kind' and 'path' are required")
        subsets = m.get("subsets") or ()
        return SourceConfig(
            kind=str(m["kind"]), path=str(m["path"]), name=str(m.get("name") or ""),
            task=str(m.get("task") or ""), language=str(m.get("language") or ""),
            subsets=(subsets,) if isinstance(subsets, str) else tuple(str(s) for s in subsets),
            split=str(m.get("split") or ""), ratio=float(m.get("ratio", 1.0)),
            options=dict(m.get("options") or {}),
        )


class CorpusReader(Protocol):
    """A plain reader of one corpus layout (lhotse-recipe style): list units, read a unit."""

    kind: str
    default_task: str

    def validate(self, source: SourceConfig) -> None:
        """Fail fast (before any work) when the path does not look like this corpus: raise ValueError
        or FileNotFoundError naming what is missing."""

    def units(self, source: SourceConfig) -> list[str]:
        """Cheap listing of independently readable pieces (files/dirs), sorted for determinism."""

    def read(self, source: SourceConfig, unit: str) -> Iterator[dict[str, Any]]:
        """Yield `raw_row(...)` dicts for one unit, in a deterministic order."""
