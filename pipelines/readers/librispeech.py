"""LibriSpeech: `LibriSpeech/<subset>/<spk>/<chap>/<spk>-<chap>-<NNNN>.flac` + one `<spk>-<chap>.trans.txt`.

One unit = one chapter directory (a few dozen utterances): small enough to spread over many tasks,
and the transcript and its audio files always live together in it. The transcript is decoded line by line:
a line that is not UTF-8 is one error row (named by its utterance id when that part is readable).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.readers.common import (
    RowMaker,
    check_selection,
    iter_text_lines,
    require_dir,
    source_path,
    split_key,
    split_of,
)
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
        for line in iter_text_lines(trans) if trans.is_file() else ():
            if not line.text.strip():
                continue
            utt, text = split_key(line)
            lineno, locator = line.lineno, f"{trans}:{line.lineno}"
            if line.error:  # named by its utterance id when readable, so its flac is not reported orphaned too
                local_id = utt if utt and utt not in seen else f"{utt or 'line'}@{lineno}"
                yield rows.error(local_id, locator, line.error, audio_path=flacs.get(utt, ""), **common)
            elif utt in seen:
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
