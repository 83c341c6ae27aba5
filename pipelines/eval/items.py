"""Evaluation items: configured eval sets, read by the corpus readers, as one Arrow table per task.

Eval sets are small (hundreds to a few thousand items), so they are listed on the driver with the same
readers the tokenize job uses (any layout works: `get_reader(kind)`), and the table is handed to Ray Data.
A reader row the reader flagged (`error`: missing audio, unparsable answers) becomes an item with status
`input_error`: it travels through the stages, is written with the results, and is left out of the scores
(a data problem is not the model's fault) but counted. Dropped rows (`drop_reason`) are skipped and counted.

Tasks and what an item holds:
    audio_qa  spoken question (audio) -> references = the answers/aliases; subset = the QA subset
    asr       utterance audio -> references = [transcript]; subset = the source name
    tts       transcript text to speak -> references = [transcript]; subset = the source name
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from pipelines.readers import get_reader
from pipelines.records import SourceConfig

TASKS = ("audio_qa", "asr", "tts")
OK, INPUT_ERROR, GENERATION_ERROR = "ok", "input_error", "generation_error"

ITEM_SCHEMA = pa.schema([
    ("item_id", pa.string()),  # the reader's record id (stable)
    ("task", pa.string()),
    ("source", pa.string()),
    ("subset", pa.string()),
    ("language", pa.string()),
    ("metric", pa.string()),  # audio_qa: accuracy | score; asr/tts: wer | cer
    ("question", pa.string()),  # audio_qa: question text (for the judge); asr: ""; tts: the text to speak
    ("references_json", pa.string()),  # JSON list of reference strings
    ("audio_in_path", pa.string()),
    ("audio_in_bytes", pa.binary()),
    ("audio_in_start", pa.float64()),
    ("audio_in_end", pa.float64()),
    ("status", pa.string()),  # ok | input_error (here); generation_error (set by the generate stage)
    ("error", pa.string()),
])


def _subset_from_id(row: Mapping[str, Any]) -> str:
    """The subset of a spoken-QA row whose meta was lost to a reader error (an unparsable answer list): its
    record id is `<source>/<subset>/<index>`, so the failure is still counted under the right subset."""
    parts = row["record_id"].split("/")
    return parts[1] if len(parts) >= 3 else row["source"]


def _item(task: str, row: Mapping[str, Any]) -> dict[str, Any]:
    meta = json.loads(row["meta_json"]) if row.get("meta_json") else {}
    if task == "audio_qa":
        subset, references, metric = meta.get("subset") or _subset_from_id(row), meta.get("answers") or [], \
            meta.get("metric", "accuracy")
    else:
        subset, references, metric = row["source"], [row["text"]] if row["text"] else [], ""
    error = row.get("error") or ""
    if not error and task in ("asr", "tts") and not references:
        error = "no reference transcript"
    if not error and task in ("audio_qa", "asr") and not (row.get("audio_path") or row.get("audio_bytes")):
        error = "no input audio"
    return {
        "item_id": row["record_id"], "task": task, "source": row["source"], "subset": subset,
        "language": row.get("language") or "en", "metric": metric,
        "question": row["text"] if task != "asr" else "", "references_json": json.dumps(references, ensure_ascii=False),
        "audio_in_path": row.get("audio_path") or "", "audio_in_bytes": row.get("audio_bytes"),
        "audio_in_start": float(row.get("audio_start") or 0.0), "audio_in_end": row.get("audio_end"),
        "status": INPUT_ERROR if error else OK, "error": error,
    }


def load_items(task: str, sources: Sequence[Mapping[str, Any]], max_items: int | None = None
               ) -> tuple[pa.Table, dict[str, int]]:
    """All items of one task from its configured sources; at most `max_items` per (source, subset), in reader
    order (deterministic). Returns the table and how many rows each source dropped."""
    if task not in TASKS:
        raise ValueError(f"unknown eval task {task!r}; known: {', '.join(TASKS)}")
    items: list[dict[str, Any]] = []
    dropped: dict[str, int] = {}
    for mapping in sources:
        source = SourceConfig.from_mapping(mapping)
        reader = get_reader(source.kind)
        reader.validate(source)
        taken: dict[str, int] = {}
        for unit in reader.units(source):
            for row in reader.read(source, unit):
                if row.get("drop_reason"):
                    dropped[source.source_name] = dropped.get(source.source_name, 0) + 1
                    continue
                item = _item(task, row)
                if max_items is not None and taken.get(item["subset"], 0) >= max_items:
                    continue
                taken[item["subset"]] = taken.get(item["subset"], 0) + 1
                items.append(item)
    return pa.Table.from_pylist(items, schema=ITEM_SCHEMA), dropped
