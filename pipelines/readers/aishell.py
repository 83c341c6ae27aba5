"""AISHELL-1 and AISHELL-2 (Mandarin read speech, 16 kHz wav).

AISHELL-1: `data_aishell/wav/{train,dev,test}/<spk>/BAC009<spk>W<nnnn>.wav` + one transcript file
`data_aishell/transcript/aishell_transcript_v0.8.txt` (`<uttid> <space-segmented words>`). Some wavs have
no transcript line: they become rows with drop_reason="no_transcript" (counted by the job, not quarantined,
because the corpus ships them that way). The reference text is the word segmentation with spaces removed.
One unit = one speaker directory; the transcript (~10 MB) is parsed once per worker process and cached.
`split` (or `subsets`, for several) selects wav/<split> directories; default all.

AISHELL-2: `iOS/data/{wav.scp,trans.txt,wav/<spk>/<uttid>.wav}`, both files `<uttid>\\t<value>`, wav.scp
paths relative to its directory. One unit = the wav.scp (one pass of line parsing; audio decoding happens
downstream in parallel). Transcripts are kept as written (they mix Chinese and spaced English words).
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
    require_dir,
    require_file,
    source_path,
    split_first,
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


@dataclass(frozen=True)
class _Transcript:
    lines: dict[str, _Line]  # uttid -> first line that names it
    by_speaker: dict[str, list[str]]  # speaker -> uttids in file order
    problems: list[tuple[int, str, str]]  # (lineno, uttid, message) for unusable lines


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
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            utt, words = split_first(line)
            text = "".join(words.split())
            if not text:
                problems.append((lineno, utt, "transcript line without text"))
            elif utt in lines:
                problems.append((lineno, utt, f"duplicate transcript line for {utt}"))
            else:
                lines[utt] = _Line(lineno, text)
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
        for utt, wav in wavs.items():
            line = transcript.lines.get(utt)
            if line is None:
                yield rows.drop(utt, str(wav), "no_transcript", audio_path=wav, **common)
            else:
                yield rows.row(utt, str(wav), text=line.text, audio_path=wav,
                               meta={"transcript_line": line.lineno}, **common)
        trans_path = root / TRANSCRIPT
        for utt in transcript.by_speaker.get(speaker, []):
            if utt not in wavs:
                line = transcript.lines[utt]
                yield rows.error(utt, f"{trans_path}:{line.lineno}", f"audio file missing: {root / unit / utt}.wav",
                                 text=line.text, **common)
        for lineno, utt, message in transcript.problems:
            if _aishell1_speaker(utt) == speaker:
                yield rows.error(f"{utt}@{lineno}", f"{trans_path}:{lineno}", message, **common)


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
        for lineno, utt, text in _kv_lines(trans_path):
            locator = f"{trans_path}:{lineno}"
            if not text:
                yield rows.error(f"{utt}@trans{lineno}", locator, "transcript line without text",
                                 language="zh", split=split)
            elif utt in texts:
                yield rows.error(f"{utt}@trans{lineno}", locator, f"duplicate transcript line for {utt}",
                                 language="zh", split=split)
            else:
                texts[utt] = _Line(lineno, text)
        listed: set[str] = set()
        for lineno, utt, rel in _kv_lines(scp_path):
            locator = f"{scp_path}:{lineno}"
            wav = root / rel
            common = {"language": "zh", "split": split, "speaker": Path(rel).parent.name}
            if not rel or utt in listed:
                why = "wav.scp line without a path" if not rel else f"duplicate wav.scp entry for {utt}"
                yield rows.error(f"{utt}@scp{lineno}", locator, why, **common)
                continue
            listed.add(utt)
            line = texts.get(utt)
            if line is None:
                yield rows.drop(utt, locator, "no_transcript", audio_path=wav, **common)
            elif not wav.is_file():
                yield rows.error(utt, locator, f"audio file missing: {wav}", text=line.text, **common)
            else:
                yield rows.row(utt, locator, text=line.text, audio_path=wav, **common)
        for utt, line in texts.items():
            if utt not in listed:
                yield rows.error(utt, f"{trans_path}:{line.lineno}", "transcript line without a wav.scp entry",
                                 text=line.text, language="zh", split=split)


def _kv_lines(path: Path) -> Iterator[tuple[int, str, str]]:
    """Kaldi-style `<key>\\t<value>` lines (any whitespace accepted after the key) with line numbers."""
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                key, value = split_first(line)
                yield lineno, key, value
