"""AISHELL-1 and AISHELL-2 (Mandarin read speech, 16 kHz wav).

AISHELL-1: `data_aishell/wav/{train,dev,test}/<spk>/BAC009<spk>W<nnnn>.wav` + one transcript file
`data_aishell/transcript/aishell_transcript_v0.8.txt` (`<uttid> <space-segmented words>`). Some wavs have
no transcript line: they become rows with drop_reason="no_transcript" (counted by the job, not quarantined,
because the corpus ships them that way). The reference text is the word segmentation with spaces removed.
One unit = one speaker directory; the transcript (~10 MB) is parsed once per worker process and cached.
`split` (or `subsets`, for several) selects wav/<split> directories; default all.

AISHELL-2: `iOS/data/{wav.scp,trans.txt,wav/<spk>/<uttid>.wav}`, both files `<uttid>\\t<value>`, wav.scp
paths relative to its directory and confined to it (common.confine; `options.allow_outside_root: true` lifts
that). One unit = the wav.scp (one pass of line parsing; audio decoding happens downstream in parallel).
Transcripts are kept as written (they mix Chinese and spaced English words).

Transcripts and wav.scp (both corpora) are decoded line by line: a line that is not UTF-8 is one error row,
named by its utterance id when that part is readable, so the utterance is not reported again as unmatched (an
AISHELL-1 line whose id is unreadable names no speaker: the source's first unit reports it).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipelines.readers.common import (
    RowMaker,
    check_selection,
    confine,
    iter_text_lines,
    require_dir,
    require_file,
    source_path,
    split_key,
    split_of,
)
from pipelines.records import SourceConfig

AISHELL1_LAYOUT = "data_aishell/ with wav/<split>/<speaker>/*.wav and transcript/aishell_transcript_v0.8.txt"
AISHELL2_LAYOUT = "the AISHELL-2 iOS/data directory holding wav.scp and trans.txt"
TRANSCRIPT = "transcript/aishell_transcript_v0.8.txt"


@dataclass(frozen=True)
class _Line:
    lineno: int
    text: str
    error: str = ""  # the line is not UTF-8: its utterance is an error row, not a wav without transcript


@dataclass(frozen=True)
class _Transcript:
    lines: dict[str, _Line]  # uttid -> first line that names it
    by_speaker: dict[str, list[str]]  # speaker -> uttids in file order
    problems: list[tuple[int, str, str]]  # (lineno, uttid or "" when unreadable, message) for unusable lines


def _aishell1_speaker(uttid: str) -> str:
    """BAC009S0002W0122 -> S0002 (AISHELL-1's fixed id layout, as used by its Kaldi/lhotse recipes)."""
    return uttid[6:11]


@lru_cache(maxsize=4)
def _load_transcript(path: str, mtime_ns: int, size: int) -> _Transcript:
    """Parse the transcript once per process; the key includes mtime/size so an edited file is re-read."""
    del mtime_ns, size
    lines: dict[str, _Line] = {}
    by_speaker: dict[str, list[str]] = defaultdict(list)
    problems: list[tuple[int, str, str]] = []
    for line in iter_text_lines(Path(path)):
        if not line.text.strip():
            continue
        utt, words = split_key(line)
        text = "".join(words.split())
        if line.error and utt and utt not in lines:
            lines[utt] = _Line(line.lineno, "", line.error)
            by_speaker[_aishell1_speaker(utt)].append(utt)
        elif line.error:
            problems.append((line.lineno, utt, line.error))
        elif not text:
            problems.append((line.lineno, utt, "transcript line without text"))
        elif utt in lines:
            problems.append((line.lineno, utt, f"duplicate transcript line for {utt}"))
        else:
            lines[utt] = _Line(line.lineno, text)
            by_speaker[_aishell1_speaker(utt)].append(utt)
    return _Transcript(lines, dict(by_speaker), problems)


def _transcript(root: Path) -> _Transcript:
    path = root / TRANSCRIPT
    st = os.stat(path)
    return _load_transcript(str(path), st.st_mtime_ns, st.st_size)


class Aishell1Reader:
    kind = "aishell1"
    default_task = "asr"

    def _splits(self, source: SourceConfig) -> list[str]:
        wav_root = require_dir(source_path(source) / "wav", source, AISHELL1_LAYOUT)
        present = sorted(p.name for p in wav_root.iterdir() if p.is_dir())
        wanted = [source.split] if source.split else list(source.subsets)
        check_selection(source, wanted, present, "splits")
        return wanted or present

    def validate(self, source: SourceConfig) -> None:
        root = require_dir(source_path(source), source, AISHELL1_LAYOUT)
        require_file(root / TRANSCRIPT, source, AISHELL1_LAYOUT)
        if not self._splits(source):
            raise ValueError(f"aishell1 source {source.source_name!r}: {root / 'wav'} has no split directories "
                             "(the corpus ships wav/*.tar.gz per speaker: extract them first)")

    def units(self, source: SourceConfig) -> list[str]:
        root = source_path(source)
        return [spk.relative_to(root).as_posix()
                for split in self._splits(source)
                for spk in sorted((root / "wav" / split).iterdir()) if spk.is_dir()]

    def read(self, source: SourceConfig, unit: str) -> Iterator[dict[str, Any]]:
        root = source_path(source)
        _, split, speaker = Path(unit).parts
        transcript = _transcript(root)
        rows = RowMaker(source, self.kind, self.default_task)
        common = {"language": "zh", "split": split_of(split), "speaker": speaker}
        wavs = {p.stem: p for p in sorted((root / unit).glob("*.wav"))}
        trans_path = root / TRANSCRIPT
        for utt, wav in wavs.items():
            line = transcript.lines.get(utt)
            if line is None:
                yield rows.drop(utt, str(wav), "no_transcript", audio_path=wav, **common)
            elif line.error:
                yield rows.error(utt, f"{trans_path}:{line.lineno}", line.error, audio_path=wav, **common)
            else:
                yield rows.row(utt, str(wav), text=line.text, audio_path=wav,
                               meta={"transcript_line": line.lineno}, **common)
        for utt in transcript.by_speaker.get(speaker, []):
            if utt not in wavs:
                line = transcript.lines[utt]
                why = line.error or f"audio file missing: {root / unit / utt}.wav"
                yield rows.error(utt, f"{trans_path}:{line.lineno}", why, text=line.text, **common)
        # a line whose id is unreadable names no speaker: the source's first unit reports it, once
        reports_unnamed = any(not utt for _, utt, _ in transcript.problems) and unit == self.units(source)[0]
        for lineno, utt, message in transcript.problems:
            if (_aishell1_speaker(utt) == speaker) if utt else reports_unnamed:
                yield rows.error(f"{utt or 'line'}@{lineno}", f"{trans_path}:{lineno}", message, **common)


class Aishell2Reader:
    kind = "aishell2"
    default_task = "asr"

    def validate(self, source: SourceConfig) -> None:
        root = require_dir(source_path(source), source, AISHELL2_LAYOUT)
        require_file(root / "wav.scp", source, AISHELL2_LAYOUT)
        require_file(root / "trans.txt", source, AISHELL2_LAYOUT)

    def units(self, source: SourceConfig) -> list[str]:
        return ["wav.scp"]

    def read(self, source: SourceConfig, unit: str) -> Iterator[dict[str, Any]]:
        root = source_path(source)
        rows = RowMaker(source, self.kind, self.default_task)
        split = source.split or (root.name if root.name in ("dev", "test") else "train")
        trans_path, scp_path = root / "trans.txt", root / unit
        texts: dict[str, _Line] = {}
        yield from self._transcripts(rows, trans_path, split, texts)
        listed: set[str] = set()
        for line in iter_text_lines(scp_path):
            if not line.text.strip():
                continue
            utt, rel = split_key(line)
            locator = f"{scp_path}:{line.lineno}"
            common = {"language": "zh", "split": split, "speaker": Path(rel).parent.name}
            if line.error and utt and utt not in listed:  # its transcript is not reported as unlisted too
                yield rows.error(utt, locator, line.error, **common)
            elif line.error or not rel or utt in listed:
                why = line.error or ("wav.scp line without a path" if not rel else f"duplicate wav.scp entry for {utt}")
                yield rows.error(f"{utt or 'line'}@scp{line.lineno}", locator, why, **common)
                continue
            else:
                yield self._entry_row(rows, source, locator, utt, root / rel, texts.get(utt), trans_path, common)
            listed.add(utt)
        for utt, line in texts.items():
            if utt not in listed:
                yield rows.error(utt, f"{trans_path}:{line.lineno}", line.error or "transcript line without a "
                                 "wav.scp entry", text=line.text, language="zh", split=split)

    def _transcripts(self, rows: RowMaker, path: Path, split: str, texts: dict[str, _Line]
                     ) -> Iterator[dict[str, Any]]:
        """Fill `texts` from trans.txt and yield error rows for its unusable lines. A line that is not UTF-8 but
        names its utterance is kept as an error entry: the utterance's wav.scp entry reports it, once."""
        for line in iter_text_lines(path):
            if not line.text.strip():
                continue
            utt, text = split_key(line)
            if line.error and utt and utt not in texts:
                texts[utt] = _Line(line.lineno, "", line.error)
                continue
            why = line.error or ("transcript line without text" if not text else
                                 f"duplicate transcript line for {utt}" if utt in texts else "")
            if why:
                yield rows.error(f"{utt or 'line'}@trans{line.lineno}", f"{path}:{line.lineno}", why,
                                 language="zh", split=split)
            else:
                texts[utt] = _Line(line.lineno, text)

    def _entry_row(self, rows: RowMaker, source: SourceConfig, locator: str, utt: str, wav: Path,
                   line: _Line | None, trans_path: Path, common: dict[str, Any]) -> dict[str, Any]:
        """The row of one wav.scp entry; its path is confined to the source root before anything touches it."""
        outside = confine(wav, source_path(source), source)
        if outside:
            return rows.error(utt, locator, outside, **common)
        if line is None:
            return rows.drop(utt, locator, "no_transcript", audio_path=wav, **common)
        if line.error:
            return rows.error(utt, f"{trans_path}:{line.lineno}", line.error, audio_path=wav, **common)
        if not wav.is_file():
            return rows.error(utt, locator, f"audio file missing: {wav}", text=line.text, **common)
        return rows.row(utt, locator, text=line.text, audio_path=wav, **common)
