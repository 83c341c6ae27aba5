"""Spoken QA eval sets in the OpenAudioBench layout: `eval_datas/<subset>/<subset>.csv` + audio files.

The audio column `audio_filename` is relative to the subset directory, in an `audios/` subfolder in the
published set (both places are tried). Question/answer columns differ per subset (docs/corpora.md); unknown
subsets (e.g. reasoning_qa) can be added with `options.columns: {subset: {question, answer, metric}}`.
Answers that are lists written as strings ("['a', 'b']") are parsed with ast.literal_eval (literals
only, never code). Row: text = the question (empty when the CSV has none), meta = {subset, answers, metric}.
The CSV is decoded row by row (a row holding a line that is not UTF-8 is one error row), and audio files must
lie inside the source root once resolved (common.confine; `options.allow_outside_root: true` lifts that).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.readers.common import (
    CsvRecord,
    RowMaker,
    check_selection,
    confine,
    iter_csv_records,
    require_dir,
    require_file,
    source_path,
)
from pipelines.records import SourceConfig

LAYOUT = "OpenAudioBench eval_datas/<subset>/<subset>.csv + audios/"
AUDIO_COLUMN = "audio_filename"


@dataclass(frozen=True)
class Columns:
    question: str
    answer: str
    metric: str


SUBSETS = {
    "llama_questions": Columns("Questions", "Answer", "accuracy"),
    "web_questions": Columns("question", "answers", "accuracy"),
    "trivia_qa": Columns("question", "answer_normalized_aliases", "accuracy"),
    "alpaca_eval": Columns("instruction", "output", "score"),
}


def parse_answers(raw: str) -> list[str]:
    """'["a", "b"]' -> ['a', 'b']; a plain answer -> [answer]; ValueError for a malformed list."""
    s = raw.strip()
    if not s:
        return []
    if not s.startswith("["):
        return [s]
    try:
        value = ast.literal_eval(s)  # a literal starting with "[" can only be a list
    except (ValueError, SyntaxError) as e:
        raise ValueError(f"answer list does not parse: {s[:80]!r} ({e.__class__.__name__})") from None
    return [str(v).strip() for v in value if str(v).strip()]


def _eval_root(source: SourceConfig) -> Path:
    root = require_dir(source_path(source), source, LAYOUT)
    return root / "eval_datas" if (root / "eval_datas").is_dir() else root


def _columns(source: SourceConfig) -> dict[str, Columns]:
    extra = {name: Columns(**cols) for name, cols in (source.options.get("columns") or {}).items()}
    return {**SUBSETS, **extra}


class SpokenQaReader:
    kind = "spoken_qa"
    default_task = "spoken_qa"

    def _subsets(self, source: SourceConfig) -> list[str]:
        root = _eval_root(source)
        known = _columns(source)
        present = sorted(p.name for p in root.iterdir() if (p / f"{p.name}.csv").is_file())
        check_selection(source, source.subsets, present, "subsets")
        unknown = sorted(set(source.subsets) - set(known))
        if unknown:
            raise ValueError(f"spoken_qa source {source.source_name!r}: no column mapping for subsets {unknown}; "
                             "add options.columns: {subset: {question, answer, metric}}")
        return list(source.subsets) if source.subsets else [s for s in present if s in known]

    def validate(self, source: SourceConfig) -> None:
        subsets = self._subsets(source)
        if not subsets:
            raise ValueError(f"spoken_qa source {source.source_name!r}: no known subset under {_eval_root(source)} "
                             f"(expected {LAYOUT}; known: {sorted(_columns(source))})")
        for subset in subsets:
            require_file(_eval_root(source) / subset / f"{subset}.csv", source, LAYOUT)

    def units(self, source: SourceConfig) -> list[str]:
        return self._subsets(source)

    def read(self, source: SourceConfig, unit: str) -> Iterator[dict[str, Any]]:
        subset_dir = _eval_root(source) / unit
        cols = _columns(source)[unit]
        csv_path = subset_dir / f"{unit}.csv"
        rows = RowMaker(source, self.kind, self.default_task)
        for rec in iter_csv_records(csv_path):  # a quoted field may span lines: rows are located by their start
            if rec.error:
                yield rows.error(f"{unit}/{rec.index}", rec.locator, rec.error, language="en", split="test")
            else:
                yield self._row(rows, source, cols, subset_dir, rec)

    def _row(self, rows: RowMaker, source: SourceConfig, cols: Columns, subset_dir: Path, csv_rec: CsvRecord
             ) -> dict[str, Any]:
        subset, locator, rec = subset_dir.name, csv_rec.locator, csv_rec.fields
        question = (rec.get(cols.question) or "").strip()
        fields: dict[str, Any] = {"language": "en", "split": "test", "text": question}
        local_id = f"{subset}/{csv_rec.index}"
        try:
            answers = parse_answers(rec.get(cols.answer) or "")
        except ValueError as e:
            return rows.error(local_id, locator, str(e), **fields)
        fields["meta"] = {"subset": subset, "answers": answers, "metric": cols.metric}
        if not answers:
            return rows.error(local_id, locator, f"no reference answer in column {cols.answer!r}", **fields)
        name = (rec.get(AUDIO_COLUMN) or "").strip()
        if not name:
            return rows.error(local_id, locator, f"empty {AUDIO_COLUMN}", **fields)
        audio = next((p for p in (subset_dir / "audios" / name, subset_dir / name) if p.is_file()), None)
        if audio is None:
            return rows.error(local_id, locator, f"audio file missing: {name} (looked in {subset_dir}/audios and "
                                                 f"{subset_dir})", **fields)
        outside = confine(audio, source_path(source), source)
        if outside:
            return rows.error(local_id, locator, outside, **fields)
        return rows.row(local_id, locator, audio_path=audio, **fields)
