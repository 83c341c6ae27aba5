"""Common Voice: `cv-corpus-<ver>/<locale>/clips/*.mp3` + `train|dev|test|validated|...tsv` with a header.

The source path is the locale directory; `split` picks the TSV (default train). Both header generations
are read by name (old: `... accent locale segment`; new: `sentence_id ... accents variant locale ...`).
QUOTE_NONE matters: sentences contain bare `"` characters that the csv module would otherwise treat as
quoting and silently merge lines. The TSV is decoded row by row (a row that is not UTF-8 is one error row), and
clip paths are confined to the locale directory (common.confine; `options.allow_outside_root: true` lifts that).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.readers.common import (
    CsvRecord,
    RowMaker,
    TextLine,
    confine,
    iter_csv_records,
    iter_text_lines,
    language_code,
    require_dir,
    require_file,
    source_path,
)
from pipelines.records import SourceConfig

LAYOUT = "<locale>/clips/*.mp3 + <split>.tsv (Common Voice locale directory)"
REQUIRED_COLUMNS = ("path", "sentence")
META_COLUMNS = ("sentence_id", "up_votes", "down_votes", "age", "gender", "accent", "accents", "variant",
                "locale", "segment", "sentence_domain")


def _split(source: SourceConfig) -> str:
    return source.split or "train"


class CommonVoiceReader:
    kind = "commonvoice"
    default_task = "asr"

    def validate(self, source: SourceConfig) -> None:
        root = require_dir(source_path(source), source, LAYOUT)
        require_dir(root / "clips", source, LAYOUT)
        tsv = require_file(root / f"{_split(source)}.tsv", source, LAYOUT)
        first = next(iter_text_lines(tsv), TextLine(0, ""))
        if first.error:
            raise ValueError(f"commonvoice source {source.source_name!r}: {tsv} header {first.error}")
        header = next(csv.reader([first.text], delimiter="\t", quoting=csv.QUOTE_NONE), [])
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"commonvoice source {source.source_name!r}: {tsv} header lacks {missing} "
                             f"(header: {header})")

    def units(self, source: SourceConfig) -> list[str]:
        return [f"{_split(source)}.tsv"]

    def read(self, source: SourceConfig, unit: str) -> Iterator[dict[str, Any]]:
        root = source_path(source)
        tsv = root / unit
        split = Path(unit).stem
        rows = RowMaker(source, self.kind, self.default_task)
        for rec in iter_csv_records(tsv, delimiter="\t", quoting=csv.QUOTE_NONE):
            if rec.error:
                yield rows.error(f"{split}-row{rec.index}", rec.locator, rec.error, split=split)
            else:
                yield self._row(rows, source, split, rec)

    def _row(self, rows: RowMaker, source: SourceConfig, split: str, csv_rec: CsvRecord) -> dict[str, Any]:
        root, locator, rec = source_path(source), csv_rec.locator, csv_rec.fields
        clip = (rec.get("path") or "").strip()
        local_id = Path(clip).stem if clip else f"{split}-row{csv_rec.index}"
        locale = (rec.get("locale") or "").strip() or root.name
        fields: dict[str, Any] = {
            "language": language_code(locale), "split": split, "speaker": (rec.get("client_id") or "").strip(),
            "meta": {c: rec[c] for c in META_COLUMNS if rec.get(c)},
        }
        sentence = (rec.get("sentence") or "").strip()
        if None in rec:
            return rows.error(local_id, locator, f"more fields than header columns: {rec[None]!r}", **fields)
        if not clip:
            return rows.error(local_id, locator, "empty clip path", text=sentence, **fields)
        audio = root / "clips" / clip
        outside = confine(audio, root, source)
        if outside:
            return rows.error(local_id, locator, outside, text=sentence, **fields)
        if not sentence:
            return rows.error(local_id, locator, "empty sentence", audio_path=audio, **fields)
        if not audio.is_file():
            return rows.error(local_id, locator, f"audio file missing: {audio}", text=sentence, **fields)
        return rows.row(local_id, locator, text=sentence, audio_path=audio, **fields)
