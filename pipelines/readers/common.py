"""Small helpers shared by the corpus readers: row building, path checks, streaming text and JSON, name mapping.

Everything here is pure or touches only the files it is given, so readers stay plain, picklable objects
that Ray tasks can call in any process.

Two input checks live here so every reader applies them the same way:
- Text is decoded per record (`iter_text_lines`, `iter_csv_records`, `iter_json_records`): one line that is not
  UTF-8 costs that line, with its file:line, never the file around it.
- Paths that a manifest names are confined to the source root (`confine`): a manifest is data, and data must
  not make the job read (and write into training shards) files it was never pointed at.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

import ijson

from pipelines.records import SourceConfig, raw_row

# ISO 639 codes for the language names and ISO 639-3 codes that corpora use instead of 639-1 codes.
_LANGUAGE_ALIASES = {
    "english": "en", "chinese": "zh", "mandarin": "zh", "cmn": "zh", "zho": "zh", "eng": "en",
    "french": "fr", "german": "de", "spanish": "es", "japanese": "ja", "korean": "ko", "cantonese": "yue",
}


@dataclass(frozen=True)
class RowMaker:
    """Binds a source and a reader kind, so readers only pass what varies per row.

    The record id is `<source name>/<local id>`; the source's `task`/`language` settings, when given,
    override what the reader detects (a configured value is a deliberate choice by the user).
    """

    source: SourceConfig
    kind: str
    default_task: str

    def row(self, local_id: str, locator: str, **fields: Any) -> dict[str, Any]:
        detected_task, detected_language = fields.pop("task", ""), fields.pop("language", "")
        task = self.source.task or detected_task or self.default_task
        language = self.source.language or detected_language
        return raw_row(
            record_id=f"{self.source.source_name}/{local_id}", source=self.source.source_name, kind=self.kind,
            task=task, language=language, locator=locator, **fields,
        )

    def error(self, local_id: str, locator: str, message: str, **fields: Any) -> dict[str, Any]:
        return self.row(local_id, locator, error=message, **fields)

    def drop(self, local_id: str, locator: str, reason: str, **fields: Any) -> dict[str, Any]:
        return self.row(local_id, locator, drop_reason=reason, **fields)


def source_path(source: SourceConfig) -> Path:
    """Absolute, so rows keep pointing at the audio from any worker's working directory (a relative
    `source.path` itself is only safe when the job makes it absolute on the driver)."""
    return Path(source.path).expanduser().absolute()


def require_dir(path: Path, source: SourceConfig, what: str) -> Path:
    """Fail fast with a message that names the source, the kind and the expected layout."""
    if not path.is_dir():
        state = "is not a directory" if path.exists() else "does not exist"
        raise FileNotFoundError(f"{source.kind} source {source.source_name!r}: {path} {state} (expected {what})")
    return path


def require_file(path: Path, source: SourceConfig, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{source.kind} source {source.source_name!r}: missing {path} (expected {what})")
    return path


def check_selection(source: SourceConfig, wanted: Iterable[str], available: Iterable[str], what: str) -> None:
    """Configured subsets/splits that do not exist are a config error, not an empty result."""
    have = sorted(set(available))
    missing = sorted(set(wanted) - set(have))
    if missing:
        raise ValueError(f"{source.kind} source {source.source_name!r}: {what} {missing} not found (available: {have})")


def language_code(tag: str | None) -> str:
    """'en_us' / 'zh-CN' / 'cmn_hans_cn' / 'English' -> the ISO 639-1 primary code when one exists."""
    t = (tag or "").strip().lower().replace("_", "-")
    if not t:
        return ""
    if t in _LANGUAGE_ALIASES:
        return _LANGUAGE_ALIASES[t]
    primary = t.split("-")[0]
    return _LANGUAGE_ALIASES.get(primary, primary)


def split_of(name: str) -> str:
    """Corpus subset/split names ('train-clean-100', 'dev_clean', 'TEST_NET', 'validation') -> train/dev/test."""
    n = name.strip().lower()
    for prefix, split in (("train", "train"), ("dev", "dev"), ("valid", "dev"), ("test", "test")):
        if n.startswith(prefix):
            return split
    return n


def subset_key(name: str) -> str:
    """GigaSpeech writes subsets as '{XL}', configs say 'XL' or 'xl': compare on one spelling."""
    return name.strip().strip("{}").upper()


# ---- manifest paths confined to the source root -------------------------------------------------------------

ALLOW_OUTSIDE_ROOT = "allow_outside_root"


def confine(path: Path, root: Path, source: SourceConfig) -> str:
    """"" when `path` lies inside `root` once `..` and symlinks are resolved, else the row's error message.

    A manifest is data, not configuration: an absolute path, a `../` climb or a symlink in it must not make the
    job read a file outside the corpus (a key, /etc/passwd) and write it into the shards as a training sample.
    The root is resolved too, so a corpus directory that is itself a symlink to another disk still works. A
    source whose manifests point elsewhere on purpose opts out with `options.allow_outside_root: true`.
    """
    if source.options.get(ALLOW_OUTSIDE_ROOT) is True:
        return ""
    resolved = path.resolve()
    if resolved.is_relative_to(root.resolve()):
        return ""
    shown = str(path) if resolved == path else f"{path} (-> {resolved})"
    return f"audio path outside the source root {root}: {shown} (set options.{ALLOW_OUTSIDE_ROOT}: true to allow)"


# ---- text decoded per record ---------------------------------------------------------------------------------

_BOM = b"\xef\xbb\xbf"


class TextLine(NamedTuple):
    """One physical line of a text file, without its line ending.

    For a line that is not UTF-8, `error` says where, and `text` keeps the undecodable bytes as surrogate escapes:
    enough to recover an ASCII key on the line (an utterance id) or to keep a CSV parser in step, never to be
    written into a row (Arrow refuses surrogates).
    """

    lineno: int  # 1-based
    text: str
    error: str = ""


def not_utf8(e: UnicodeDecodeError) -> str:
    """Where bytes stop being UTF-8 (first bad byte, 1-based column), so a human can find it in an editor."""
    return f"not valid UTF-8 (byte 0x{e.object[e.start]:02x} at column {e.start + 1})"


def readable(text: str) -> bool:
    """False when `text` still carries undecodable bytes (the surrogate escapes of a TextLine with an error)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _decode_line(lineno: int, data: bytes) -> TextLine:
    body = data.removesuffix(b"\n").removesuffix(b"\r")
    if lineno == 1:
        body = body.removeprefix(_BOM)
    try:
        return TextLine(lineno, body.decode("utf-8"))
    except UnicodeDecodeError as e:
        return TextLine(lineno, body.decode("utf-8", "surrogateescape"), f"line is {not_utf8(e)}")


def iter_text_lines(path: Path) -> Iterator[TextLine]:
    """Every line of a text file (gzip-compressed when named *.gz), each decoded on its own.

    The file is read as bytes and split on b"\\n" (\\r\\n and a UTF-8 BOM on the first line are accepted), then
    every line is decoded strictly by itself: decoding the file as a whole turns one bad byte into the loss of
    every good record in it.
    """
    with path.open("rb") as raw, (gzip.GzipFile(fileobj=raw) if path.name.endswith(".gz") else raw) as f:
        for lineno, data in enumerate(f, start=1):
            yield _decode_line(lineno, data)


def split_key(line: TextLine) -> tuple[str, str]:
    """A Kaldi-style '<key> <value>' line -> (key, value). For a line that is not UTF-8 the value is "" and the
    key is kept only when it is readable, so the error row still names the utterance it costs."""
    key, value = split_first(line.text)
    if not line.error:
        return key, value
    return (key if readable(key) else ""), ""


@dataclass(frozen=True)
class CsvRecord:
    """One data row of a CSV/TSV file with a header, or why it is unreadable."""

    index: int  # 0-based data row
    locator: str  # path:line of the row's first line, or of its line that is not UTF-8
    fields: dict[str | None, Any]
    error: str = ""


def iter_csv_records(path: Path, **fmt: Any) -> Iterator[CsvRecord]:
    """The rows of a CSV/TSV file (csv.DictReader with `fmt`), decoded and checked one by one.

    Lines come from iter_text_lines; a bad one is fed to csv with its bytes escaped, so a quoted field spanning
    lines keeps the parser in step, and the row holding it becomes an error record, as does a row csv rejects.
    A header that is not UTF-8 leaves every column unknowable: ValueError, the file fails as a whole.
    """
    consumed: dict[int, TextLine] = {}  # the lines csv has taken since the last row

    def feed() -> Iterator[str]:
        for line in iter_text_lines(path):
            consumed[line.lineno] = line
            yield line.text + "\n"

    reader = csv.DictReader(feed(), **fmt)
    if reader.fieldnames is not None:  # csv reads the header on first access
        header_error = next((line for line in consumed.values() if line.error), None)
        if header_error:
            raise ValueError(f"{path}:{header_error.lineno}: CSV header {header_error.error}")
    consumed.clear()
    index = 0
    while True:
        try:
            fields, error = next(reader, None), ""
        except csv.Error as e:
            fields, error = {}, f"unparsable CSV row: {e}"
        if fields is None:
            return
        yield _csv_record(path, index, fields, error, consumed)
        consumed.clear()
        index += 1


def _csv_record(path: Path, index: int, fields: dict[str | None, Any], error: str,
                lines: dict[int, TextLine]) -> CsvRecord:
    bad = next((line for line in lines.values() if line.error), None)
    if bad:
        return CsvRecord(index, f"{path}:{bad.lineno}", {}, bad.error)
    start = min((n for n, line in lines.items() if line.text.strip()), default=min(lines))
    return CsvRecord(index, f"{path}:{start}", {} if error else fields, error)


def open_binary(path: Path) -> IO[bytes]:
    """The one place readers open JSON arrays and manifests for ijson (a seam for tests that prove streaming)."""
    return path.open("rb")


def iter_json_items(path: Path, prefix: str) -> Iterator[Any]:
    """Stream the values at an ijson prefix ('audios.item', 'item') without loading the file.

    ijson (yajl C backend) parses in fixed-size reads, so memory stays bounded by one item even for the
    multi-GB WenetSpeech/GigaSpeech manifests. Floats come back as float, not Decimal.
    """
    with open_binary(path) as f:
        yield from ijson.items(f, prefix, use_float=True)


@dataclass(frozen=True)
class JsonRecord:
    """One sample of a JSON-array or JSONL file: its position, and the value or why it is unreadable."""

    index: int  # 0-based sample index in the file
    locator: str  # path:line (JSONL) or path#index (JSON array)
    value: Any = None
    error: str = ""


def _peek_json_start(f: IO[bytes]) -> bytes:
    """First non-whitespace byte of a file (b'' when empty); leaves the file at its start, past a UTF-8 BOM
    (Windows tools write one; the JSON parser would reject it)."""
    start = 3 if f.read(3) == b"\xef\xbb\xbf" else 0
    f.seek(start)
    while chunk := f.read(1 << 16):
        stripped = chunk.lstrip(b" \t\r\n")
        if stripped:
            f.seek(start)
            return stripped[:1]
    return b""


def iter_json_records(path: Path) -> Iterator[JsonRecord]:
    """Samples of a chat/sample file, one at a time: a JSON array (streamed), one JSON object, or JSONL.

    `.jsonl` files are read line by line so one broken line costs one error record. A `.json` file that
    starts with '[' is streamed item by item; one that starts with '{' is read as a stream of concatenated
    objects (a single object, or JSONL saved as .json). A syntax error in a JSON stream cannot be skipped
    (the parser loses its place), so it ends the file with one error record at the failing index; bytes that
    are not UTF-8 inside a string are such an error to the parser (yajl rejects them), so they too keep every
    earlier sample and cost the rest of the stream. JSONL is the format where they cost one line.
    """
    if path.suffix == ".jsonl":
        yield from _iter_jsonl(path)
        return
    with open_binary(path) as f:
        first = _peek_json_start(f)
        if not first:
            return
        if first not in b"[{":
            yield JsonRecord(0, f"{path}#0", error=f"not a JSON array or object (starts with {first!r})")
            return
        items = ijson.items(f, "item" if first == b"[" else "", use_float=True, multiple_values=first == b"{")
        last = -1
        try:
            for last, value in enumerate(items):
                yield JsonRecord(last, f"{path}#{last}", value)
        except ijson.JSONError as e:
            yield JsonRecord(last + 1, f"{path}#{last + 1}", error=f"invalid JSON: {json_reason(e)}")


def json_reason(e: Exception) -> str:
    """The first line of a parser error. yajl's messages are bytes followed by an excerpt of the data, which may
    hold the very bytes that are not UTF-8: the reason line ('invalid bytes in UTF8 string.') is what helps."""
    reason = e.args[0] if e.args else ""
    text = (reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def iter_jsonl_lines(path: Path) -> Iterator[tuple[int, Any, str]]:
    """(line number, parsed value or None, error) per non-blank line of a JSONL(.gz) file: a line that is not
    UTF-8 or not JSON costs that line only."""
    for line in iter_text_lines(path):
        if line.error:
            yield line.lineno, None, line.error
        elif line.text.strip():
            try:
                yield line.lineno, json.loads(line.text), ""
            except json.JSONDecodeError as e:
                yield line.lineno, None, f"invalid JSON: {e}"


def _iter_jsonl(path: Path) -> Iterator[JsonRecord]:
    for index, (lineno, value, error) in enumerate(iter_jsonl_lines(path)):
        yield JsonRecord(index, f"{path}:{lineno}", value, error)


def data_files(source: SourceConfig, suffixes: tuple[str, ...]) -> tuple[Path, list[str]]:
    """A source path that is one file or a directory of files -> (base dir, sorted relative names)."""
    path = source_path(source)
    if path.is_file():
        return path.parent, [path.name]
    if not path.is_dir():
        raise FileNotFoundError(f"{source.kind} source {source.source_name!r}: {path} does not exist")
    names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() and p.suffix in suffixes)
    return path, names


def base_dir(source: SourceConfig) -> Path:
    path = source_path(source)
    return path.parent if path.is_file() else path


def scalar_meta(record: dict[str, Any], skip: Iterable[str]) -> dict[str, Any]:
    """Top-level scalar fields worth keeping in meta_json (nulls and nested values left out)."""
    skipped = set(skip)
    return {k: v for k, v in record.items()
            if k not in skipped and v is not None and v != "" and isinstance(v, (str, int, float, bool))}


def split_first(line: str) -> tuple[str, str]:
    """'<id><whitespace><text>' -> (id, text); text '' when the line has a single field."""
    parts = re.split(r"\s+", line.strip(), maxsplit=1)
    return parts[0], parts[1].strip() if len(parts) > 1 else ""


# ---- long-audio JSON manifests (WenetSpeech.json, GigaSpeech.json) ------------------------------------------

def manifest_units(source: SourceConfig, file_name: str) -> list[str]:
    """`options.shards` = n splits one manifest into n units `<file>#k/n` (audio i goes to unit i mod n).

    Each unit still streams the whole file (byte-range splitting of JSON is fragile), but only builds rows
    for its own audios; that trades n parses for n-way parallel row building on the biggest corpora.
    """
    n = int(source.options.get("shards", 1))
    if n < 1:
        raise ValueError(f"{source.kind} source {source.source_name!r}: options.shards must be >= 1, got {n}")
    return [f"{file_name}#{k}/{n}" for k in range(n)]


@dataclass(frozen=True)
class ManifestSegment:
    """One selected segment of a long-audio manifest, or a structural problem found while streaming it."""

    local_id: str  # sid (or a positional id when the entry has none)
    locator: str
    segment: dict[str, Any]
    subsets: list[str]  # normalised subset keys
    aid: str = ""  # the long audio's id
    audio_path: Path | None = None
    audio_error: str = ""  # the long audio file is missing: every one of its segments is an error
    error: str = ""  # the entry itself is unusable


def iter_manifest_segments(source: SourceConfig, manifest_name: str, unit: str) -> Iterator[ManifestSegment]:
    """Stream `audios[*].segments[*]` of this unit's shard, keeping segments in any of the source's subsets
    (all when none is configured). Audio paths are relative to the source root and confined to it; a parse error
    (bytes that are not UTF-8 included) ends the stream with one error."""
    root = source_path(source)
    manifest = root / manifest_name
    selected = {subset_key(s) for s in source.subsets}
    k, n = (int(x) for x in unit.rpartition("#")[2].split("/"))
    index = -1
    try:
        for index, audio in enumerate(iter_json_items(manifest, "audios.item")):
            if index % n == k:
                yield from _audio_segments(source, manifest, index, audio, selected)
    except ijson.JSONError as e:
        if (index + 1) % n == k:  # every shard meets the error; the shard owning the broken entry reports it
            yield ManifestSegment(f"{manifest.name}#audio{index + 1}", f"{manifest}#audios[{index + 1}]", {}, [],
                                  error=f"invalid JSON after audio entry {index}: {json_reason(e)}")


def _audio_file(source: SourceConfig, rel: Any) -> tuple[Path | None, str]:
    """An audio entry's `path` -> (file, "") or (file or None, why it is unusable); None when the path is absent
    or outside the source root, so no row points at a file the job must not read."""
    if not isinstance(rel, str) or not rel:
        return None, "audio entry without a path"
    path = source_path(source) / rel
    outside = confine(path, source_path(source), source)
    if outside:
        return None, outside
    return path, "" if path.is_file() else f"audio file missing: {path}"


def _audio_segments(source: SourceConfig, manifest: Path, index: int, audio: Any, selected: set[str]
                    ) -> Iterator[ManifestSegment]:
    if not isinstance(audio, dict) or not isinstance(audio.get("segments"), list):
        yield ManifestSegment(f"{manifest.name}#audio{index}", f"{manifest}#audios[{index}]", {}, [],
                              error="audio entry is not an object with a segments list")
        return
    aid = str(audio.get("aid") or f"audio{index}")
    audio_path, audio_error = _audio_file(source, audio.get("path"))
    for pos, seg in enumerate(audio["segments"]):
        if not isinstance(seg, dict):
            yield ManifestSegment(f"{aid}/seg{pos}", f"{manifest}#{aid}", {}, [], error="segment is not an object")
            continue
        keys = [subset_key(s) for s in seg.get("subsets") or [] if isinstance(s, str)]
        if selected and selected.isdisjoint(keys):
            continue
        sid = str(seg.get("sid") or f"{aid}/seg{pos}")
        yield ManifestSegment(sid, f"{manifest}#{sid}", seg, keys, aid, audio_path, audio_error)


def segment_window(seg: dict[str, Any]) -> tuple[float, float]:
    """(begin, end) seconds of a manifest segment; ValueError when missing or empty."""
    begin, end = seg.get("begin_time"), seg.get("end_time")
    if not isinstance(begin, (int, float)) or not isinstance(end, (int, float)):
        raise ValueError(f"segment times missing or not numbers: begin_time={begin!r} end_time={end!r}")
    if begin < 0 or end <= begin:
        raise ValueError(f"empty or negative segment window [{begin}, {end}]")
    return float(begin), float(end)


def manifest_split(subset_keys: Iterable[str]) -> str:
    """WenetSpeech/GigaSpeech subsets -> split: DEV* -> dev, TEST* -> test, training sizes -> train."""
    keys = list(subset_keys)
    if any(k.startswith("DEV") for k in keys):
        return "dev"
    if any(k.startswith("TEST") for k in keys):
        return "test"
    return "train"
