"""GigaSpeech: `GigaSpeech.json` over long .opus files (`audio/{podcast,youtube,audiobook}/...`).

Per segment: `sid, speaker, begin_time, end_time, text_tn, subsets: ["{XL}", "{L}", ...]` (braces in the
JSON; configs may say "XL" or "{XL}"). The manifest is streamed (common.iter_manifest_segments).
Audio paths must lie inside the source root once resolved (`options.allow_outside_root: true` lifts that);
bytes that are not UTF-8 end the stream as any JSON syntax error does (one error row after the last good entry).

Text: `text_tn` is upper case with punctuation tags. Tags <COMMA> <PERIOD> <QUESTIONMARK>
<EXCLAMATIONPOINT> become the mark, attached to the previous word. Case (`options.case`):
"sentence" (default) lower-cases and capitalises sentence starts and the pronoun "I", because all-caps
text tokenises into rare BPE pieces and teaches TTS/ASR a register the other corpora never use;
proper nouns are lost (no truecaser). "upper" keeps the corpus casing.
Utterances holding a garbage tag <SIL> <MUSIC> <NOISE> <OTHER> are not speech transcripts (GigaSpeech's own
recipes drop them): they get drop_reason="garbage_tag". Any other <TAG> is an error row.
"""

from __future__ import annotations

import re
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

MANIFEST = "GigaSpeech.json"
LAYOUT = f"a directory holding {MANIFEST} and the audio/ tree it names"
SUBSETS = ("XS", "S", "M", "L", "XL", "DEV", "TEST")
PUNCTUATION_TAGS = {"<COMMA>": ",", "<PERIOD>": ".", "<QUESTIONMARK>": "?", "<EXCLAMATIONPOINT>": "!"}
GARBAGE_TAGS = frozenset({"<SIL>", "<MUSIC>", "<NOISE>", "<OTHER>"})
CASES = ("sentence", "upper")
_TAG = re.compile(r"^<[A-Z_]+>$")
_PRONOUN_I = re.compile(r"\bi\b(?=$|['’\s,.?!])")
_SENTENCE_START = re.compile(r"(^|[.?!]\s+)([a-z])")


class GarbageUtterance(ValueError):
    """The segment is labelled noise/music/silence/other rather than transcribed speech."""


def gigaspeech_text(text_tn: str, case: str = "sentence") -> str:
    """GigaSpeech `text_tn` -> plain text; raises GarbageUtterance or ValueError (unknown tag, empty)."""
    tokens = text_tn.split()
    garbage = sorted(GARBAGE_TAGS.intersection(tokens))
    if garbage:
        raise GarbageUtterance(f"garbage tags {garbage}")
    words: list[str] = []
    for tok in tokens:
        if tok in PUNCTUATION_TAGS:
            if words:
                words[-1] += PUNCTUATION_TAGS[tok]
        elif _TAG.match(tok):
            raise ValueError(f"unknown tag {tok}")
        else:
            words.append(tok)
    text = " ".join(words)
    if not text:
        raise ValueError("empty text after removing tags")
    if case == "upper":
        return text
    text = _PRONOUN_I.sub("I", text.lower())
    return _SENTENCE_START.sub(lambda m: m.group(1) + m.group(2).upper(), text)


class GigaSpeechReader:
    kind = "gigaspeech"
    default_task = "asr"

    def validate(self, source: SourceConfig) -> None:
        root = require_dir(source_path(source), source, LAYOUT)
        require_file(root / MANIFEST, source, LAYOUT)
        check_selection(source, [subset_key(s) for s in source.subsets], SUBSETS, "subsets")
        if source.options.get("case", "sentence") not in CASES:
            raise ValueError(f"gigaspeech source {source.source_name!r}: options.case must be one of {CASES}")
        manifest_units(source, MANIFEST)

    def units(self, source: SourceConfig) -> list[str]:
        return manifest_units(source, MANIFEST)

    def read(self, source: SourceConfig, unit: str) -> Iterator[dict[str, Any]]:
        rows = RowMaker(source, self.kind, self.default_task)
        case = str(source.options.get("case", "sentence"))
        for s in iter_manifest_segments(source, MANIFEST, unit):
            if s.error:
                yield rows.error(s.local_id, s.locator, s.error, language="en")
                continue
            speaker = str(s.segment.get("speaker") or "")
            text_tn = s.segment.get("text_tn")
            meta: dict[str, Any] = {"aid": s.aid, "subsets": s.subsets}
            fields: dict[str, Any] = {
                "language": "en", "split": manifest_split(s.subsets), "audio_path": s.audio_path or "",
                "speaker": "" if speaker == "N/A" else speaker,
            }
            try:
                begin, end = segment_window(s.segment)
                fields.update(audio_start=begin, audio_end=end)
                text = gigaspeech_text(text_tn if isinstance(text_tn, str) else "", case)
            except GarbageUtterance as e:
                yield rows.drop(s.local_id, s.locator, "garbage_tag", meta={**meta, "why": str(e)}, **fields)
                continue
            except ValueError as e:
                yield rows.error(s.local_id, s.locator, str(e), meta=meta, **fields)
                continue
            if s.audio_error:
                yield rows.error(s.local_id, s.locator, s.audio_error, text=text, meta=meta, **fields)
            else:
                yield rows.row(s.local_id, s.locator, text=text, meta=meta, **fields)
