"""WenetSpeech: one huge `WenetSpeech.json` over long 16 kHz .opus files; rows are time windows of them.

`{"audios": [{aid, path, duration, segments: [{sid, begin_time, end_time, subsets, text, confidence}]}]}`.
The manifest is tens of GB, so it is streamed one audio entry at a time (common.iter_manifest_segments).
Audio paths must lie inside the source root once resolved (`options.allow_outside_root: true` lifts that);
bytes that are not UTF-8 end the stream as any JSON syntax error does (one error row after the last good entry).
`subsets` (e.g. ["M"]) keeps a segment when any of its subsets is selected; the default keeps all.
Selection is not a drop: unselected segments produce no rows at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pipelines.readers.common import (
    RowMaker,
    check_selection,
    iter_manifest_segments,
    manifest_split,
    manifest_units,
    require_dir,
    require_file,
    segment_window,
    source_path,
    subset_key,
)
from pipelines.records import SourceConfig

MANIFEST = "WenetSpeech.json"
LAYOUT = f"a directory holding {MANIFEST} and the audio/ tree it names"
SUBSETS = ("L", "M", "S", "W", "DEV", "TEST_NET", "TEST_MEETING")


class WenetSpeechReader:
    kind = "wenetspeech"
    default_task = "asr"

    def validate(self, source: SourceConfig) -> None:
        root = require_dir(source_path(source), source, LAYOUT)
        require_file(root / MANIFEST, source, LAYOUT)
        check_selection(source, [subset_key(s) for s in source.subsets], SUBSETS, "subsets")
        manifest_units(source, MANIFEST)

    def units(self, source: SourceConfig) -> list[str]:
        return manifest_units(source, MANIFEST)

    def read(self, source: SourceConfig, unit: str) -> Iterator[dict[str, Any]]:
        rows = RowMaker(source, self.kind, self.default_task)
        for s in iter_manifest_segments(source, MANIFEST, unit):
            if s.error:
                yield rows.error(s.local_id, s.locator, s.error, language="zh")
                continue
            text = s.segment.get("text")
            fields: dict[str, Any] = {
                "language": "zh", "split": manifest_split(s.subsets), "audio_path": s.audio_path or "",
                "text": text.strip() if isinstance(text, str) else "",
                "meta": {"aid": s.aid, "subsets": s.subsets, "confidence": s.segment.get("confidence")},
            }
            try:
                begin, end = segment_window(s.segment)
            except ValueError as e:
                yield rows.error(s.local_id, s.locator, str(e), **fields)
                continue
            problem = s.audio_error or ("" if fields["text"] else "segment without text")
            if problem:
                yield rows.error(s.local_id, s.locator, problem, audio_start=begin, audio_end=end, **fields)
            else:
                yield rows.row(s.local_id, s.locator, audio_start=begin, audio_end=end, **fields)
