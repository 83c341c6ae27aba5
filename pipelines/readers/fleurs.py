"""FLEURS: `data/<lang>/{train,dev,test}.tsv` (no header, 7 columns) + `data/<lang>/audio/<split>.tar.gz`.

Columns: id, file_name, raw_transcription, transcription, chars, num_samples, gender. The `id` is the
FLoRes sentence id, shared by every speaker who read it, so rows are keyed by `file_name`.
Audio stays in the gzip tar: random access into it would re-decompress from the start for every member,
so one unit = one (lang, split): the TSV goes into a dict, the tar is streamed once, and each matching
member is emitted with its bytes (`audio_bytes`). TSV rows whose audio never appears → error rows;
tar members without a TSV row → drop_reason="no_transcript".
Text = raw_transcription (cased, punctuated); the normalised transcription is kept in meta.
The TSV is decoded line by line: a line that is not UTF-8 is one error row (its tar member, when the file_name
column is readable, is matched to it rather than dropped as untranscribed). Audio comes from the fixed archive
path by member name, never from a path the TSV names, so there is nothing to confine to the source root.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pipelines.readers.common import (
    RowMaker,
    TextLine,
    check_selection,
    iter_text_lines,
    language_code,
    readable,
    require_dir,
    source_path,
)
from pipelines.records import SourceConfig

LAYOUT = "a FLEURS root holding data/<lang>/<split>.tsv and data/<lang>/audio/<split>.tar.gz"
SPLITS = ("train", "dev", "test")
N_COLUMNS = 7


@dataclass(frozen=True)
class _Entry:
    lineno: int
    sentence_id: str
    file_name: str
    raw_transcription: str
    transcription: str
    num_samples: str
    gender: str
    error: str = ""  # the line is not UTF-8: only file_name is known, the entry is an error row


def _data_dir(source: SourceConfig) -> Path:
    """Accept the dataset root (holding data/) or the data/ directory itself."""
    root = require_dir(source_path(source), source, LAYOUT)
    return root / "data" if (root / "data").is_dir() else root


class FleursReader:
    kind = "fleurs"
    default_task = "asr"

    def _pairs(self, source: SourceConfig) -> list[tuple[str, str]]:
        data = _data_dir(source)
        present = {(p.parent.name, p.stem) for p in data.glob("*/*.tsv") if p.stem in SPLITS}
        langs = sorted({lang for lang, _ in present})
        check_selection(source, source.subsets, langs, "languages")
        if source.split:
            check_selection(source, [source.split], SPLITS, "split")
        return sorted((lang, split) for lang, split in present
                      if (not source.subsets or lang in source.subsets) and (not source.split or split == source.split))

    def validate(self, source: SourceConfig) -> None:
        if not self._pairs(source):
            raise ValueError(f"fleurs source {source.source_name!r}: no <lang>/<split>.tsv under "
                             f"{_data_dir(source)} for the selection (expected {LAYOUT})")

    def units(self, source: SourceConfig) -> list[str]:
        return [f"{lang}/{split}" for lang, split in self._pairs(source)]

    def read(self, source: SourceConfig, unit: str) -> Iterator[dict[str, Any]]:
        lang, split = unit.split("/")
        lang_dir = _data_dir(source) / lang
        tsv, tar = lang_dir / f"{split}.tsv", lang_dir / "audio" / f"{split}.tar.gz"
        rows = RowMaker(source, self.kind, self.default_task)
        common = {"language": language_code(lang), "split": split}
        pending: dict[str, _Entry] = {}
        for line in iter_text_lines(tsv):
            if not line.text.strip():
                continue
            entry, why = _entry(line)
            if entry and entry.file_name in pending:
                entry, why = None, entry.error or f"duplicate file_name {entry.file_name}"
            if entry:
                pending[entry.file_name] = entry
            else:
                yield rows.error(f"{lang}/{split}-line{line.lineno}", f"{tsv}:{line.lineno}", why, **common)
        if tar.is_file():
            yield from self._stream_tar(rows, tsv, tar, lang, pending, common)
        for entry in pending.values():
            why = f"audio {entry.file_name} not found in {tar}" if tar.is_file() else f"audio archive missing: {tar}"
            yield rows.error(f"{lang}/{PurePosixPath(entry.file_name).stem}", f"{tsv}:{entry.lineno}",
                             entry.error or why, text=entry.raw_transcription, meta=_meta(entry), **common)

    def _stream_tar(self, rows: RowMaker, tsv: Path, tar: Path, lang: str, pending: dict[str, _Entry],
                    common: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """One sequential pass over the gzip tar ('r|gz' = stream mode, no seeking back)."""
        with tarfile.open(tar, mode="r|gz") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                name = PurePosixPath(member.name).name
                local_id = f"{lang}/{PurePosixPath(name).stem}"
                entry = pending.pop(name, None)
                if entry is None:
                    yield rows.drop(local_id, f"{tar}#{member.name}", "no_transcript", **common)
                    continue
                if entry.error:
                    yield rows.error(local_id, f"{tsv}:{entry.lineno}", entry.error, meta=_meta(entry), **common)
                    continue
                handle = archive.extractfile(member)
                data = handle.read() if handle is not None else b""
                yield rows.row(local_id, f"{tsv}:{entry.lineno}", text=entry.raw_transcription, audio_bytes=data,
                               meta={**_meta(entry), "archive_member": member.name}, **common)


def _entry(line: TextLine) -> tuple[_Entry | None, str]:
    """A TSV line -> (entry, "") or (None, why it is unusable). A line that is not UTF-8 still gives an entry
    (with only file_name and the error) when its file_name column is readable."""
    cols = line.text.split("\t")
    if len(cols) != N_COLUMNS:
        return None, line.error or f"expected {N_COLUMNS} tab-separated columns, got {len(cols)}"
    if line.error:
        return (_Entry(line.lineno, "", cols[1], "", "", "", "", line.error), "") if readable(cols[1]) else (
            None, line.error)
    return _Entry(line.lineno, cols[0], cols[1], cols[2].strip(), cols[3].strip(), cols[5], cols[6]), ""


def _meta(entry: _Entry) -> dict[str, Any]:
    if entry.error:
        return {"file_name": entry.file_name}
    samples = int(entry.num_samples) if entry.num_samples.isdigit() else entry.num_samples
    return {"sentence_id": entry.sentence_id, "transcription": entry.transcription, "num_samples": samples,
            "gender": entry.gender, "file_name": entry.file_name}
