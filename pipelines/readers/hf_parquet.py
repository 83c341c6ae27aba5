"""Hugging Face `datasets` Parquet exports: `data/<split>-00000-of-000NN.parquet` (or `<config>/<split>/*.parquet`).

The audio column is a struct `{bytes, path}`; the reader passes the encoded bytes through (`audio_bytes`)
and the job decodes them with soundfile. Which column is audio comes from the `huggingface` schema
metadata (the `Audio` feature) when present, else `options.audio_column` (default "audio"); the text
column from `options.text_column`, else the first of text/sentence/transcription/normalized_text.
Optional options: id_column (record ids; default `<file>/<row>`: HF exports often have no unique id —
FLEURS' `id` is shared by speakers), speaker_column, language_column, meta_columns (list),
batch_rows (rows per read batch, default 64: bounds memory, audio bytes are large).
One unit = one parquet file, read in row batches.
Parquet does not make writers validate strings: a batch holding a string that is not UTF-8 is re-read row by
row, so only that row is an error (naming the column). Audio given as a path (no bytes) resolves against the
file's directory and is confined to the source root (common.confine; `options.allow_outside_root: true`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.readers.common import RowMaker, base_dir, confine, data_files, language_code, not_utf8
from pipelines.records import SourceConfig

TEXT_CANDIDATES = ("text", "sentence", "transcription", "normalized_text")
_SHARD_NAME = re.compile(r"^(.+?)-\d+-of-\d+")


def file_split(rel: str) -> str:
    """'data/train-00000-of-00003.parquet' -> 'train'; 'cfg/test/0000.parquet' -> 'test'."""
    p = PurePosixPath(rel)
    m = _SHARD_NAME.match(p.name)
    if m:
        return m.group(1)
    return p.parent.name if len(p.parts) > 1 else ""


def audio_columns(schema: pa.Schema) -> list[str]:
    """Columns declared as `Audio` features in the HF metadata (empty when there is none)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return []
    features = json.loads(raw).get("info", {}).get("features", {})
    return [name for name, f in features.items() if isinstance(f, dict) and f.get("_type") == "Audio"]


def resolve_columns(schema: pa.Schema, options: dict[str, Any]) -> tuple[str, str]:
    """(audio column, text column) for one file; ValueError naming what is missing."""
    declared = audio_columns(schema)
    audio = str(options.get("audio_column") or (declared[0] if declared else "audio"))
    if audio not in schema.names:
        raise ValueError(f"no audio column {audio!r} (columns: {schema.names}); set options.audio_column")
    text = options.get("text_column") or next((c for c in TEXT_CANDIDATES if c in schema.names), "")
    if not text or text not in schema.names:
        raise ValueError(f"no text column {text or TEXT_CANDIDATES!r} (columns: {schema.names}); "
                         "set options.text_column")
    return audio, str(text)


def batch_records(batch: pa.RecordBatch) -> list[tuple[dict[str, Any], str]]:
    """(row, "") per row of a batch; ({}, why) for a row holding a string that is not UTF-8. The whole
    batch converts at once in the common case; only a failing batch pays for cell-by-cell conversion."""
    try:
        return [(r, "") for r in batch.to_pylist()]
    except UnicodeDecodeError:
        return [_cell_by_cell(batch, i) for i in range(batch.num_rows)]


def _cell_by_cell(batch: pa.RecordBatch, i: int) -> tuple[dict[str, Any], str]:
    row: dict[str, Any] = {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        try:
            row[name] = column[i].as_py()
        except UnicodeDecodeError as e:
            return {}, f"column {name!r} is {not_utf8(e)}"
    return row, ""


class HfParquetReader:
    kind = "hf_parquet"
    default_task = "asr"

    def _files(self, source: SourceConfig) -> list[str]:
        _, names = data_files(source, (".parquet",))
        return [n for n in names if not source.split or file_split(n) == source.split]

    def validate(self, source: SourceConfig) -> None:
        files = self._files(source)
        if not files:
            raise ValueError(f"hf_parquet source {source.source_name!r}: no *.parquet files"
                             f"{' for split ' + repr(source.split) if source.split else ''} under {source.path}")
        schema = pq.read_schema(base_dir(source) / files[0])
        try:
            resolve_columns(schema, dict(source.options))
        except ValueError as e:
            raise ValueError(f"hf_parquet source {source.source_name!r}: {files[0]}: {e}") from None
        for key in ("id_column", "speaker_column", "language_column"):
            col = source.options.get(key)
            if col and col not in schema.names:
                raise ValueError(f"hf_parquet source {source.source_name!r}: options.{key}={col!r} not in "
                                 f"{files[0]} (columns: {schema.names})")

    def units(self, source: SourceConfig) -> list[str]:
        return self._files(source)

    def read(self, source: SourceConfig, unit: str) -> Iterator[dict[str, Any]]:
        path = base_dir(source) / unit
        stem = unit.removesuffix(".parquet")
        rows = RowMaker(source, self.kind, self.default_task)
        options = dict(source.options)
        split = file_split(unit)
        with pq.ParquetFile(path) as pf:
            try:
                audio_col, text_col = resolve_columns(pf.schema_arrow, options)
            except ValueError as e:
                yield rows.error(f"{stem}#file", str(path), str(e), split=split)
                return
            extra = {k: options.get(k) or "" for k in ("id_column", "speaker_column", "language_column")}
            meta_cols = [str(c) for c in options.get("meta_columns") or []]
            columns = list(dict.fromkeys(c for c in [audio_col, text_col, *extra.values(), *meta_cols] if c))
            batches = pf.iter_batches(batch_size=int(options.get("batch_rows", 64)), columns=columns)
            for index, (rec, problem) in enumerate(r for batch in batches for r in batch_records(batch)):
                if problem:
                    yield rows.error(f"{stem}/{index}", f"{path}#row={index}", problem, split=split)
                    continue
                local_id = str(rec[extra["id_column"]]) if extra["id_column"] else f"{stem}/{index}"
                fields: dict[str, Any] = {
                    "split": split, "text": str(rec.get(text_col) or "").strip(),
                    "speaker": str(rec.get(extra["speaker_column"]) or "") if extra["speaker_column"] else "",
                    "language": language_code(rec.get(extra["language_column"])) if extra["language_column"] else "",
                }
                yield self._row(rows, source, local_id, f"{path}#row={index}", path.parent, rec[audio_col],
                                {"row": index, **{c: rec.get(c) for c in meta_cols}}, fields)

    def _row(self, rows: RowMaker, source: SourceConfig, local_id: str, locator: str, file_dir: Path, audio: Any,
             meta: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        """Audio as struct {bytes, path}, plain binary, or a path string (exports made without embedding)."""
        data, name = (audio.get("bytes"), audio.get("path")) if isinstance(audio, dict) else (
            (audio, None) if isinstance(audio, bytes) else (None, audio))
        if name:
            meta["audio_filename"] = name
        if not fields["text"]:
            return rows.error(local_id, locator, "empty text", meta=meta, **fields)
        if data:
            return rows.row(local_id, locator, audio_bytes=data, meta=meta, **fields)
        if isinstance(name, str) and name:
            candidate = Path(name) if Path(name).is_absolute() else file_dir / name
            outside = confine(candidate, base_dir(source), source)
            if outside:
                return rows.error(local_id, locator, outside, meta=meta, **fields)
            if candidate.is_file():
                return rows.row(local_id, locator, audio_path=candidate, meta=meta, **fields)
            return rows.error(local_id, locator, f"audio has no bytes and {candidate} does not exist",
                              meta=meta, **fields)
        return rows.error(local_id, locator, "audio is null", meta=meta, **fields)
