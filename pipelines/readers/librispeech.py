"""LibriSpeech: `LibriSpeech/<subset>/<spk>/<chap>/<spk>-<chap>-<NNNN>.flac` + one `<spk>-<chap>.trans.txt`.

One unit = one chapter directory (a few dozen utterances): small enough to spread over many tasks,
and the transcript and its audio files always live together in it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.readers.common import RowMaker, check_selection, require_dir, source_path, split_first, split_of
from pipelines.records import SourceConfig

LAYOUT = "LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt + *.flac"


class LibriSpeechReader:
    kind = "librispeech"
    default_task = "asr"

    def _subsets(self, source: SourceConfig) -> list[str]:
        root = require_dir(source_path(source), source, LAYOUT)
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        check_selection(source, source.subsets, present, "subsets")
        return list(source.subsets) if source.subsets else present

    def validate(self, source: SourceConfig) -> None:
        root = source_path(source)
        subsets = self._subsets(source)
        if not any(next((root / s).glob("*/*/*.trans.txt"), None) for s in subsets):
            raise ValueError(f"librispeech source {source.source_name!r}: no chapter transcripts under {root} "
                             f"(expected {LAYOUT})")

    def units(self, source: SourceConfig) -> list[str]:
        root = source_path(source)
        return [chapter.relative_to(root).as_posix()
                for subset in self._subsets(source)
                for chapter in sorted((root / subset).glob("*/*"))
                if chapter.is_dir()]

    def read(self, source: SourceConfig, unit: str) -> Iterator[dict[str, Any]]:
        chapter = source_path(source) / unit
        subset, speaker, chap = Path(unit).parts
        rows = RowMaker(source, self.kind, self.default_task)
        common = {"language": "en", "split": split_of(subset), "speaker": speaker, "meta": {"subset": subset}}
        flacs = {p.stem: p for p in chapter.glob("*.flac")}
        trans = chapter / f"{speaker}-{chap}.trans.txt"
        seen: set[str] = set()
        lines = trans.read_text(encoding="utf-8").splitlines() if trans.is_file() else []
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            utt, text = split_first(line)
            locator = f"{trans}:{lineno}"
            if utt in seen:
                yield rows.error(f"{utt}@{lineno}", locator, f"duplicate transcript line for {utt}", **common)
            elif not text:
                yield rows.error(utt, locator, "transcript line without text", **common)
            elif utt not in flacs:
                yield rows.error(utt, locator, f"audio file missing: {chapter / (utt + '.flac')}", text=text, **common)
            else:
                yield rows.row(utt, locator, text=text, audio_path=flacs[utt], **common)
            seen.add(utt)
        for utt in sorted(set(flacs) - seen):
            yield rows.error(utt, str(flacs[utt]), f"no transcript line in {trans.name}",
                             audio_path=flacs[utt], **common)
