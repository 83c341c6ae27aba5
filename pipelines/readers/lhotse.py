"""lhotse manifests (jsonl / jsonl.gz), read as plain JSON — no lhotse dependency.

Two layouts, per part (e.g. `librispeech_{kind}_dev-clean.jsonl.gz`):
- `*recordings*` + `*supervisions*`: one unit per supervisions file; its recordings file is loaded into
  a dict (recordings are one per audio file, far fewer than supervisions), supervisions are streamed.
- `*cuts*` (MonoCut with the recording and supervisions inline): one unit per cuts file, streamed.
When a part has both, the cuts file wins (it is the later, curated artifact; reading both would
duplicate every utterance).
One row per supervision: audio_start = supervision start (+ cut start: supervision times inside a cut are
relative to the cut), audio_end = start + duration. Audio sources of type "file" resolve relative to
`options.audio_root` (default: the manifest directory) unless absolute, and must lie inside that root once
resolved (common.confine: a configured audio_root is trusted, a path in a manifest is not; lhotse recipes often
write absolute paths, which need `options.audio_root` or `options.allow_outside_root: true`); other source
types (url, command, memory) are error rows. Recordings with transforms other than Resample are error rows,
because speed/tempo transforms change the time axis the supervision times refer to.
Manifests are decoded line by line: a line that is not UTF-8 is one error row (in a recordings file it is
skipped, and the supervisions naming it become unknown-recording rows).
`subsets` keeps parts whose name contains any of the given strings (e.g. "dev-clean").
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.readers.common import (
    RowMaker,
    confine,
    iter_jsonl_lines,
    language_code,
    require_dir,
    source_path,
    split_of,
)
from pipelines.records import SourceConfig

LAYOUT = "a directory of lhotse manifests: *recordings*.jsonl(.gz) + *supervisions*.jsonl(.gz), or *cuts*.jsonl(.gz)"
_KIND = re.compile(r"(recordings|supervisions|cuts)")
_SUFFIXES = (".jsonl.gz", ".jsonl")
TIME_PRESERVING_TRANSFORMS = frozenset({"Resample"})


def _part(name: str) -> tuple[str, str] | None:
    """'x_supervisions_dev.jsonl.gz' -> ('supervisions', 'x_{}_dev'); None for other files."""
    if not name.endswith(_SUFFIXES):
        return None
    m = _KIND.search(name)
    if m is None:
        return None
    stem = name.removesuffix(".gz").removesuffix(".jsonl")
    return m.group(1), stem[:m.start()] + "{}" + stem[m.end():]


def _part_split(key: str) -> str:
    """'librispeech_{}_dev-clean' -> 'dev' (the part name after the manifest kind), '' when there is none."""
    tail = key.split("{}")[-1].strip("_-. ")
    return split_of(tail) if tail else ""


def _counterpart(unit: str, kind: str, root: Path) -> Path | None:
    """The recordings file next to a supervisions file (same part, either compression)."""
    parsed = _part(Path(unit).name)
    if parsed is None:
        return None
    base = parsed[1].format(kind)
    return next((root / (base + s) for s in _SUFFIXES if (root / (base + s)).is_file()), None)


class LhotseReader:
    kind = "lhotse"
    default_task = "asr"

    def validate(self, source: SourceConfig) -> None:
        root = require_dir(source_path(source), source, LAYOUT)
        if not self.units(source):
            matching = f" matching {list(source.subsets)}" if source.subsets else ""
            raise ValueError(f"lhotse source {source.source_name!r}: no usable manifests in {root}{matching} "
                             f"(expected {LAYOUT})")

    def units(self, source: SourceConfig) -> list[str]:
        root = source_path(source)
        parts: dict[str, dict[str, str]] = {}
        for p in sorted(root.iterdir()):
            parsed = _part(p.name)
            if parsed and p.is_file():
                parts.setdefault(parsed[1], {})[parsed[0]] = p.name
        out = []
        for key, files in sorted(parts.items()):
            if source.subsets and not any(s in key for s in source.subsets):
                continue
            if "cuts" in files:
                out.append(files["cuts"])
            elif "supervisions" in files and "recordings" in files:
                out.append(files["supervisions"])
        return out

    def read(self, source: SourceConfig, unit: str) -> Iterator[dict[str, Any]]:
        root = source_path(source)
        manifest = root / unit
        audio_root = Path(source.options.get("audio_root") or root).expanduser()
        rows = RowMaker(source, self.kind, self.default_task)
        kind, key = _part(unit) or ("", "")
        split = source.split or _part_split(key)
        if kind == "cuts":
            yield from self._read_cuts(rows, manifest, audio_root, split)
            return
        recordings: dict[str, dict[str, Any]] = {}
        rec_path = _counterpart(unit, "recordings", root)
        for _, rec, _ in iter_jsonl_lines(rec_path) if rec_path else ():
            if isinstance(rec, dict) and "id" in rec:
                recordings[str(rec["id"])] = rec
        for lineno, sup, err in iter_jsonl_lines(manifest):
            locator = f"{manifest}:{lineno}"
            if err or not isinstance(sup, dict):
                yield rows.error(f"{unit}:{lineno}", locator, err or "supervision is not an object", split=split)
                continue
            rec = recordings.get(str(sup.get("recording_id")))
            yield self._supervision_row(rows, locator, str(sup.get("id") or f"{unit}:{lineno}"), sup, rec, 0.0,
                                        audio_root, split)

    def _read_cuts(self, rows: RowMaker, manifest: Path, audio_root: Path, split: str) -> Iterator[dict[str, Any]]:
        for lineno, cut, err in iter_jsonl_lines(manifest):
            locator = f"{manifest}:{lineno}"
            if err or not isinstance(cut, dict):
                yield rows.error(f"{manifest.name}:{lineno}", locator, err or "cut is not an object", split=split)
                continue
            cut_id = str(cut.get("id") or f"{manifest.name}:{lineno}")
            if cut.get("type", "MonoCut") != "MonoCut":
                yield rows.error(cut_id, locator, f"unsupported cut type {cut.get('type')!r} (MonoCut only)",
                                 split=split)
                continue
            sups = cut.get("supervisions") or []
            if not sups:
                yield rows.drop(cut_id, locator, "no_supervision", split=split)
                continue
            offset = float(cut.get("start") or 0.0)
            for pos, sup in enumerate(sups):
                sup_id = str(sup.get("id") or "") if isinstance(sup, dict) else ""
                local_id = sup_id if sup_id == cut_id else f"{cut_id}/{sup_id or pos}"
                yield self._supervision_row(rows, locator, local_id, sup if isinstance(sup, dict) else {},
                                            cut.get("recording"), offset, audio_root, split)

    def _supervision_row(self, rows: RowMaker, locator: str, local_id: str, sup: dict[str, Any], rec: Any,
                         offset: float, audio_root: Path, split: str) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "split": split, "text": str(sup.get("text") or "").strip(), "speaker": str(sup.get("speaker") or ""),
            "language": language_code(sup.get("language")),
            "meta": {k: sup[k] for k in ("channel", "gender", "recording_id") if sup.get(k) is not None},
        }
        start, duration = sup.get("start"), sup.get("duration")
        if not isinstance(start, (int, float)) or not isinstance(duration, (int, float)) or duration <= 0:
            return rows.error(local_id, locator, f"bad supervision times start={start!r} duration={duration!r}",
                              **fields)
        fields.update(audio_start=max(0.0, offset + start), audio_end=offset + start + duration)
        if not isinstance(rec, dict):
            return rows.error(local_id, locator, f"unknown recording {sup.get('recording_id')!r}", **fields)
        audio, problem = _audio_file(rec, sup.get("channel"), audio_root, rows.source)
        if problem:
            return rows.error(local_id, locator, problem, audio_path=audio or "", **fields)
        if not fields["text"]:
            return rows.error(local_id, locator, "supervision without text", audio_path=audio or "", **fields)
        return rows.row(local_id, locator, audio_path=audio or "", **fields)


def _audio_file(rec: dict[str, Any], channel: Any, audio_root: Path, source: SourceConfig
                ) -> tuple[Path | None, str]:
    """The file holding a supervision's channel, or why there is none (or why it may not be read)."""
    transforms = [t.get("name") for t in rec.get("transforms") or [] if isinstance(t, dict)]
    changing = [t for t in transforms if t not in TIME_PRESERVING_TRANSFORMS]
    if changing:
        return None, f"recording {rec.get('id')!r} has time-changing transforms {changing}"
    sources = [s for s in rec.get("sources") or [] if isinstance(s, dict)]
    chosen = next((s for s in sources if channel is not None and channel in (s.get("channels") or [])),
                  sources[0] if sources else None)
    if chosen is None:
        return None, f"recording {rec.get('id')!r} has no sources"
    if chosen.get("type") != "file":
        return None, f"recording {rec.get('id')!r}: unsupported source type {chosen.get('type')!r} (file only)"
    path = Path(str(chosen.get("source") or ""))
    path = path if path.is_absolute() else audio_root / path
    outside = confine(path, audio_root, source)
    if outside:
        return None, outside
    return (path, "") if path.is_file() else (path, f"audio file missing: {path}")
