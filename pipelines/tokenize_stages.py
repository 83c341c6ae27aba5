"""The per-row stages of the tokenize job, as Ray Data UDFs over pyarrow batches.

    read (tasks)  ->  decode (tasks)  ->  synthesize (actor pool)  ->  encode (actor pool, GPU in prod)
    ->  build (tasks)  ->  staging sink

Every stage returns fully typed columns (uniform block schemas) and never raises for bad data: errors
are caught per row and recorded in the status columns (`pipelines.quarantine`). Rows that are no
longer ok pass through the later stages untouched, so each record is staged exactly once.

Waveforms travel between stages as float32 PCM bytes at the codec's sample rate, codes as int32 bytes,
in `list<binary>` columns: cheap to move through the object store and free of Ray's variable-shaped
tensor extension types.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import soundfile as sf
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink

from pipelines import quarantine as q
from pipelines.records import RAW_ROW_SCHEMA, SourceConfig, raw_row
from pipelines.tasks import (
    IMPORT_KINDS,
    Record,
    build_sample,
    is_pretokenized,
    output_task,
    speech_plan,
    stable_fraction,
)
from tokenization.audio import load_audio, resample
from tokenization.codecs.base import AudioCodec, CodecIdentity
from tokenization.sequence import SPAN_ARROW_TYPE, spans_to_pylist
from tokenization.vocab_factory import make_vocab
from ttt_common.files import atomic_write

AUDIO_INPUT_TASKS = ("asr", "aac", "sec", "asc")  # tasks that cannot be built without the record's own audio
# Tasks whose text is a transcript of the record's own audio. Without time alignments (our rows have none) their
# over-long audio cannot be split: the text of each window is unknown. And their text must fit their audio's length.
# Captions, labels and spoken questions describe or accompany the audio, so those records' audio may be split.
PAIRED_TASKS = ("asr", "tts")
# How far a row's window may end past the end of its file: segment lists round their times, and compressed
# formats decode to a few ms more or less than their headers say. A window ending further out is not this file's.
WINDOW_SLACK_SECONDS = 0.5
PCM, CODES = "<f4", "<i4"
_BINARY_LIST = pa.list_(pa.binary())

READ_SCHEMA = pa.schema([
    *RAW_ROW_SCHEMA,  # `error` now holds the error class (see pipelines.quarantine); the message is `detail`
    ("status", pa.string()),
    ("stage", pa.string()),
    ("detail", pa.string()),
    ("copies", pa.int32()),  # samples this record yields (ratio up-sampling); 0 when dropped
    ("record_key", pa.binary(16)),  # blake2b-128 of record_id: resume filter and shard assignment
])

STAGED_SCHEMA = pa.schema([
    ("record_id", pa.string()),
    ("record_key", pa.binary(16)),
    ("copies", pa.int32()),
    ("source", pa.string()),
    ("kind", pa.string()),
    ("task", pa.string()),
    ("language", pa.string()),
    ("split", pa.string()),
    ("locator", pa.string()),
    ("speaker", pa.string()),
    ("status", pa.string()),
    ("stage", pa.string()),
    ("error", pa.string()),
    ("detail", pa.string()),
    ("drop_reason", pa.string()),
    ("n_tokens", pa.int32()),
    ("n_text_tokens", pa.int32()),
    ("n_audio_tokens", pa.int32()),
    ("audio_seconds", pa.float64()),
    ("input_seconds", pa.float64()),
    ("speech_seconds", pa.float64()),
    ("orig_sample_rate", pa.int32()),
    ("orig_channels", pa.int16()),
    ("resampled", pa.bool_()),
    ("downmixed", pa.bool_()),
    ("audio_windows", pa.int16()),
    ("tts_voice", pa.string()),
    ("text", pa.string()),
    ("spans", pa.list_(SPAN_ARROW_TYPE)),
    ("input_ids", pa.list_(pa.int32())),
])


def record_key(record_id: str) -> bytes:
    return hashlib.blake2b(record_id.encode("utf-8"), digest_size=16).digest()


def ratio_copies(record_id: str, ratio: float) -> int:
    """Samples a record yields under a source ratio: floor(ratio), plus one more for a stable hash-chosen
    fraction (ratio 0.3 keeps ~30% of records; 2.5 gives every record 2 or 3 copies)."""
    whole = math.floor(ratio)
    return whole + int(stable_fraction(record_id, "ratio") < ratio - whole)


class _Status:
    """The status columns of one batch, updated row by row and written back typed."""

    def __init__(self, table: pa.Table) -> None:
        self.status = table.column("status").to_pylist()
        self.stage = table.column("stage").to_pylist()
        self.error = table.column("error").to_pylist()
        self.detail = table.column("detail").to_pylist()
        self.drop_reason = table.column("drop_reason").to_pylist()

    def ok(self, i: int) -> bool:
        return self.status[i] == q.OK

    def quarantine(self, i: int, stage: str, error: str, detail: str) -> None:
        self.status[i], self.stage[i], self.error[i], self.detail[i] = q.QUARANTINE, stage, error, detail

    def drop(self, i: int, stage: str, reason: str) -> None:
        self.status[i], self.stage[i], self.drop_reason[i] = q.DROP, stage, reason

    def apply(self, table: pa.Table) -> pa.Table:
        for name in ("status", "stage", "error", "detail", "drop_reason"):
            table = table.set_column(table.schema.get_field_index(name), name,
                                     pa.array(getattr(self, name), pa.string()))
        return table


def _set(table: pa.Table, name: str, values: Sequence[Any], type_: pa.DataType) -> pa.Table:
    array = pa.array(list(values), type_)
    idx = table.schema.get_field_index(name)
    return table.set_column(idx, name, array) if idx >= 0 else table.append_column(name, array)


def _json(text: str | None, default: Any) -> Any:
    return json.loads(text) if text else default


def record_of(row: Mapping[str, Any], has_audio: bool, audio: Sequence[np.ndarray] = (),
              speech: Sequence[np.ndarray] = ()) -> Record:
    return Record(
        record_id=row["record_id"], kind=row["kind"], task=row["task"], language=row["language"] or "",
        text=row["text"] or "", messages=tuple(_json(row["messages_json"], [])), meta=_json(row["meta_json"], {}),
        has_audio=has_audio, audio=tuple(audio), speech=tuple(speech),
    )


# ---- read ----------------------------------------------------------------------------------------------

class DoneSet:
    """Record keys already staged by an earlier, interrupted run (sorted 16-byte keys; binary search)."""

    def __init__(self, keys: np.ndarray) -> None:
        self.keys = np.sort(np.asarray(keys, dtype="S16"))

    def __contains__(self, key: bytes) -> bool:
        i = int(np.searchsorted(self.keys, np.bytes_(key)))
        return i < len(self.keys) and self.keys[i] == key


_DONE_CACHE: dict[str, DoneSet] = {}


def _done_set(done: Any) -> DoneSet:
    """`done` is `[ObjectRef]` in the job (wrapped in a list so Ray passes the reference; resolved once per
    worker process: it can be ~100 MB at millions of records) or the keys themselves."""
    if isinstance(done, list) and done and isinstance(done[0], ray.ObjectRef):
        key = done[0].hex()
        if key not in _DONE_CACHE:
            _DONE_CACHE.clear()
            _DONE_CACHE[key] = DoneSet(ray.get(done[0]))
        return _DONE_CACHE[key]
    return DoneSet(done)


def classify_raw(raw: Mapping[str, Any], ratio: float) -> dict[str, Any]:
    """A reader row -> a work row with status: ratio-unselected -> drop "ratio"; reader error -> quarantine
    at stage read; reader drop_reason -> drop; else ok with its number of copies."""
    row = {**raw, "status": q.OK, "stage": "", "detail": "", "copies": ratio_copies(raw["record_id"], ratio),
           "record_key": record_key(raw["record_id"])}
    if row["copies"] == 0:
        row.update(status=q.DROP, stage="read", drop_reason="ratio", error="")
    elif raw["error"]:
        row.update(status=q.QUARANTINE, stage="read", error=q.READER_ERROR, detail=raw["error"])
    elif raw["drop_reason"]:
        row.update(status=q.DROP, stage="read", error="")
    else:
        row["error"] = ""
    return row


def read_units(batch: pa.Table, *, sources: Sequence[Mapping[str, Any]], done: Any,
               rows_per_block: int) -> Iterator[pa.Table]:
    """flat_map of units -> work rows, as a generator UDF so every block it yields carries the typed
    READ_SCHEMA (rows from `flat_map` get types inferred per block, e.g. all-null audio_bytes). Records
    staged by an interrupted earlier run are skipped here, before any decoding."""
    from pipelines.readers import get_reader

    done_set = _done_set(done)
    for source_index, unit in zip(batch.column("source_index").to_pylist(), batch.column("unit").to_pylist(),
                                  strict=True):
        source = SourceConfig.from_mapping(sources[source_index])
        reader = get_reader(source.kind)
        rows: list[dict[str, Any]] = []
        try:
            for raw in reader.read(source, unit):
                row = classify_raw(raw, source.ratio)
                if row["record_key"] not in done_set:
                    rows.append(row)
                if len(rows) >= rows_per_block:
                    yield pa.Table.from_pylist(rows, schema=READ_SCHEMA)
                    rows = []
        except Exception as exc:  # a reader bug or unreadable unit: one quarantine row for the unit
            failed = unit_failure_row(source, unit, exc)
            if failed["record_key"] not in done_set:
                rows.append(failed)
        if rows:
            yield pa.Table.from_pylist(rows, schema=READ_SCHEMA)


def unit_failure_row(source: SourceConfig, unit: str, exc: BaseException) -> dict[str, Any]:
    """The quarantine row standing for a unit whose reader raised (rows it yielded before are kept)."""
    raw = raw_row(record_id=f"{source.source_name}/!unit/{unit}", source=source.source_name, kind=source.kind,
                  task=source.task, locator=unit)
    row = classify_raw(raw, 1.0)
    row.update(status=q.QUARANTINE, stage="read", error=q.UNIT_FAILED, detail=q.error_detail(exc))
    return row


# ---- decode --------------------------------------------------------------------------------------------

def window_problem(source: str | bytes, start: float | None, end: float | None) -> str:
    """Why a row's time window does not fit its audio file, or "" (also for a row without a window).

    Checked before decoding because libsndfile answers a seek past the end with an internal error message, and
    a window that runs far past the end is read short without any error at all."""
    start = start or 0.0
    if not start and end is None:
        return ""
    window = f"[{start:.3f}, {'end' if end is None else f'{end:.3f}'}] s"
    if start < 0 or (end is not None and end <= start):
        return f"window {window} is empty or negative"
    duration = sf.info(io.BytesIO(source) if isinstance(source, bytes) else source).duration
    if not duration:
        return ""  # an empty file: empty_audio, whatever the window
    if start >= duration:
        return f"window {window} starts at or after the end of the {duration:.3f} s file"
    if end is not None and end > duration + WINDOW_SLACK_SECONDS:
        return (f"window {window} ends {end - duration:.3f} s after the end of the {duration:.3f} s file "
                f"(more than {WINDOW_SLACK_SECONDS} s)")
    return ""


def decode_audio(batch: pa.Table, *, sample_rate: int, max_seconds: float, too_long: str, min_seconds: float,
                 max_chars_per_second: float | None) -> pa.Table:
    """Decode each ok row's audio (file window or bytes) to mono float32 at the codec's rate.

    Resampling and down-mixing are recorded, not errors. Missing, corrupt, empty and non-finite audio and windows
    outside their file go to quarantine. Audio shorter than `min_seconds` is dropped (`too_short`: no codec here
    encodes a few ms), and so is a transcript longer than `max_chars_per_second` allows for its audio
    (`too_many_chars_per_second`: the text belongs to other audio, or the audio was cut). Audio longer than
    `max_seconds` is split into equal windows (`too_long: split`, each window becomes its own span) or
    quarantined (`too_long: quarantine`); split, a transcript paired with it (PAIRED_TASKS) would belong to no
    window, so such records are dropped instead (`too_long_unaligned`)."""
    st = _Status(batch)
    n = batch.num_rows
    pcm: list[list[bytes]] = [[] for _ in range(n)]
    info = {"orig_sample_rate": [0] * n, "orig_channels": [0] * n, "resampled": [False] * n,
            "downmixed": [False] * n, "audio_windows": [0] * n, "input_seconds": [0.0] * n}
    paths = batch.column("audio_path").to_pylist()
    blobs = batch.column("audio_bytes").to_pylist()
    starts, ends = batch.column("audio_start").to_pylist(), batch.column("audio_end").to_pylist()
    kinds, tasks = batch.column("kind").to_pylist(), batch.column("task").to_pylist()
    texts = batch.column("text").to_pylist()
    has_audio = [bool(p) or b is not None for p, b in zip(paths, blobs, strict=True)]
    for i in range(n):
        if not st.ok(i):
            continue
        if not has_audio[i]:
            if kinds[i] not in IMPORT_KINDS and tasks[i] in AUDIO_INPUT_TASKS:
                st.quarantine(i, "decode", q.NO_AUDIO, f"task {tasks[i]} needs audio; the row has none")
            continue
        if paths[i] and blobs[i] is None and not Path(paths[i]).is_file():
            st.quarantine(i, "decode", q.MISSING_AUDIO, f"no such file: {paths[i]}")
            continue
        source = blobs[i] if blobs[i] is not None else paths[i]
        try:
            bad_window = window_problem(source, starts[i], ends[i])
            if bad_window:
                st.quarantine(i, "decode", q.BAD_WINDOW, f"{bad_window}: {paths[i] or 'bytes'}")
                continue
            wav, _, ainfo = load_audio(source, sample_rate, starts[i] or 0.0, ends[i])
        except Exception as exc:  # libsndfile errors, truncated files
            st.quarantine(i, "decode", q.CORRUPT_AUDIO, q.error_detail(exc))
            continue
        problem = q.audio_problem(wav)
        if problem:
            st.quarantine(i, "decode", problem, f"{wav.size} samples decoded from {paths[i] or 'bytes'}")
            continue
        seconds = wav.size / sample_rate
        paired = kinds[i] not in IMPORT_KINDS and output_task(tasks[i]) in PAIRED_TASKS
        if seconds < min_seconds:
            st.drop(i, "decode", q.TOO_SHORT)
            continue
        if paired and max_chars_per_second and len((texts[i] or "").strip()) > max_chars_per_second * seconds:
            st.drop(i, "decode", q.TOO_FAST)
            continue
        if seconds > max_seconds and too_long != "split":
            st.quarantine(i, "decode", q.TOO_LONG, f"{seconds:.1f} s > data.audio.max_seconds={max_seconds}")
            continue
        if seconds > max_seconds and paired:
            st.drop(i, "decode", q.TOO_LONG_UNALIGNED)
            continue
        windows = q.split_windows(wav.size, sample_rate, max_seconds)
        pcm[i] = [wav[a:b].astype(PCM).tobytes() for a, b in windows]
        info["orig_sample_rate"][i], info["orig_channels"][i] = ainfo.orig_sample_rate, ainfo.orig_channels
        info["resampled"][i], info["downmixed"][i] = ainfo.resampled, ainfo.downmixed
        info["audio_windows"][i], info["input_seconds"][i] = len(windows), seconds
    out = st.apply(batch.drop_columns(["audio_bytes"]))
    out = _set(out, "has_audio", has_audio, pa.bool_())
    out = _set(out, "audio_pcm", pcm, _BINARY_LIST)
    types = {"orig_sample_rate": pa.int32(), "orig_channels": pa.int16(), "resampled": pa.bool_(),
             "downmixed": pa.bool_(), "audio_windows": pa.int16(), "input_seconds": pa.float64()}
    for name, type_ in types.items():
        out = _set(out, name, info[name], type_)
    # speech columns start empty, so the pipeline has the same shape when no source needs TTS
    out = _set(out, "speech_pcm", [[] for _ in range(n)], _BINARY_LIST)
    out = _set(out, "speech_seconds", [0.0] * n, pa.float64())
    return _set(out, "tts_voice", [""] * n, pa.string())


# ---- synthesize ----------------------------------------------------------------------------------------

class Synthesize:
    """Actor: speaks the texts `speech_plan` asks for (chat answers, document sentences, TTS targets of
    text-only sources). Voices load on first use, so a pool over audio-only data costs no model load."""

    MIN_SECONDS = 0.1  # shorter output is a voice that had nothing to say (e.g. "..." gives 7 ms of silence)

    def __init__(self, voice: str, voices: Mapping[str, str], sample_rate: int, max_chars: int) -> None:
        self.voice, self.voices = voice, dict(voices)
        self.sample_rate, self.max_chars = sample_rate, max_chars

    def _voice_name(self, language: str) -> str:
        return self.voices.get(language or "", self.voice)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from tokenization.tts import get_voice

        st = _Status(batch)
        n = batch.num_rows
        pcm: list[list[bytes]] = [[] for _ in range(n)]
        seconds, voices = [0.0] * n, [""] * n
        rows = batch.select(["record_id", "kind", "task", "language", "text", "messages_json", "meta_json",
                             "has_audio"]).to_pylist()
        for i, row in enumerate(rows):
            if not st.ok(i):
                continue
            try:
                plan = speech_plan(record_of(row, row["has_audio"]))
                if not plan:
                    continue
                chars = sum(len(t) for t in plan)
                if chars > self.max_chars:
                    st.drop(i, "tts", "tts_too_long")
                    continue
                name = self._voice_name(row["language"])
                voice = get_voice(name)
                waves = [resample(voice.synthesize(t), voice.sample_rate, self.sample_rate) for t in plan]
                for text, wave in zip(plan, waves, strict=True):
                    problem = q.audio_problem(wave) or ("too_short" if wave.size < self.MIN_SECONDS * self.sample_rate
                                                        else "")
                    if problem:
                        raise ValueError(f"voice {name} gave unusable audio ({problem}, {wave.size} samples) "
                                         f"for {text[:60]!r}")
                pcm[i] = [w.astype(PCM).tobytes() for w in waves]
                seconds[i], voices[i] = sum(w.size for w in waves) / self.sample_rate, name
            except Exception as exc:
                st.quarantine(i, "tts", q.TTS_FAILED, q.error_detail(exc))
        out = st.apply(batch)
        out = _set(out, "speech_pcm", pcm, _BINARY_LIST)
        out = _set(out, "speech_seconds", seconds, pa.float64())
        return _set(out, "tts_voice", voices, pa.string())


# ---- encode --------------------------------------------------------------------------------------------

def check_codes(codes: Any, codebook_size: int, num_samples: int) -> np.ndarray:
    """A codec's output as int32 codes; ValueError for anything but a non-empty 1-D run of integers in
    [0, codebook_size) (audio too short to give a single code cannot become an audio span)."""
    arr = np.asarray(codes)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"codec returned {arr.dtype} codes of shape {arr.shape}, expected 1-D integers")
    if arr.size == 0:
        raise ValueError(f"codec returned no codes for {num_samples} samples")
    if arr.size and (arr.min() < 0 or arr.max() >= codebook_size):
        raise ValueError(f"codec returned codes outside [0, {codebook_size})")
    return arr.astype(CODES)


def encode_grouped(codec: AudioCodec, waves: Sequence[np.ndarray], sample_rate: int,
                   max_samples: int) -> list[np.ndarray | BaseException]:
    """Encode waveforms in groups of similar length (sorted, at most `max_samples` per group, so a batched
    codec pads little); a failing group is retried one waveform at a time so only bad inputs fail.
    Results (codes or the exception) in input order."""
    size = codec.identity.codebook_size
    order = sorted(range(len(waves)), key=lambda i: (len(waves[i]), i))
    groups: list[list[int]] = []
    total = 0
    for i in order:
        if groups and total + len(waves[i]) <= max_samples:
            groups[-1].append(i)
            total += len(waves[i])
        else:
            groups.append([i])
            total = len(waves[i])
    out: list[np.ndarray | BaseException] = [ValueError("not encoded")] * len(waves)
    for group in groups:
        try:
            codes = codec.encode_batch([waves[i] for i in group], [sample_rate] * len(group))
            for i, c in zip(group, codes, strict=True):
                out[i] = check_codes(c, size, len(waves[i]))
        except Exception:
            for i in group:
                try:
                    out[i] = check_codes(codec.encode(waves[i], sample_rate), size, len(waves[i]))
                except Exception as exc:
                    out[i] = exc
    return out


class Encode:
    """Actor: the audio codec over every waveform of a batch (the records' audio and synthesised speech),
    grouped by length (`encode_grouped`); rows with a waveform the codec rejects go to quarantine."""

    def __init__(self, codec_cfg: Mapping[str, Any], sample_rate: int, max_batch_seconds: float) -> None:
        from tokenization.codecs import build_codec

        self.codec = build_codec(codec_cfg)
        self.sample_rate = sample_rate
        self.max_samples = max(1, int(max_batch_seconds * sample_rate))

    def __call__(self, batch: pa.Table) -> pa.Table:
        st = _Status(batch)
        columns = {"audio": batch.column("audio_pcm").to_pylist(), "speech": batch.column("speech_pcm").to_pylist()}
        where = [(k, i, j) for k, col in columns.items() for i in range(batch.num_rows) if st.ok(i)
                 for j in range(len(col[i]))]
        waves = [np.frombuffer(columns[k][i][j], PCM) for k, i, j in where]
        codes: dict[str, list[list[bytes]]] = {k: [[b""] * len(v) for v in col] for k, col in columns.items()}
        for (k, i, j), result in zip(where, encode_grouped(self.codec, waves, self.sample_rate, self.max_samples),
                                     strict=True):
            if isinstance(result, BaseException):
                if st.ok(i):
                    st.quarantine(i, "encode", q.ENCODE_FAILED, q.error_detail(result))
            else:
                codes[k][i][j] = result.tobytes()
        out = st.apply(batch.drop_columns(["audio_pcm", "speech_pcm"]))
        out = _set(out, "audio_codes", codes["audio"], _BINARY_LIST)
        return _set(out, "speech_codes", codes["speech"], _BINARY_LIST)


def without_codes(batch: pa.Table) -> pa.Table:
    """The `Encode` stage's output shape for a job with nothing to encode (a declared codec: every source is
    already codes, which the job checks before it starts), as a plain task instead of a codec actor pool."""
    n = batch.num_rows
    out = batch.drop_columns(["audio_pcm", "speech_pcm"])
    out = _set(out, "audio_codes", [[] for _ in range(n)], _BINARY_LIST)
    return _set(out, "speech_codes", [[] for _ in range(n)], _BINARY_LIST)


# ---- build ---------------------------------------------------------------------------------------------

def _codes(blobs: Sequence[bytes]) -> list[np.ndarray]:
    return [np.frombuffer(b, CODES).astype(np.int64) for b in blobs]


def build_rows(batch: pa.Table, *, text_tokenizer: str, codec_identity: Mapping[str, Any],
               layout: str, max_sample_tokens: int | None, text_subset: Sequence[int] = ()) -> pa.Table:
    """Text tokenize + task builder + span validation for each ok row -> STAGED_SCHEMA (one row per
    record, whatever its status). `text_subset`: the corpus-sized text vocabulary's base ids (or empty).

    A sample longer than `max_sample_tokens` (the training row; None: no limit) is dropped (`longer_than_row`),
    so it is counted here: the trainer would keep only a prefix of it (ttt_model/core/packing.py::fit_to_length),
    which cuts a chat where its answer is (an ASR transcript cut short, a TTS target span left out whole)."""
    identity = CodecIdentity(**codec_identity)
    vocab = make_vocab(text_tokenizer, identity, layout, tuple(text_subset))
    st = _Status(batch)
    rows = batch.select(["record_id", "kind", "task", "language", "text", "messages_json", "meta_json",
                         "has_audio", "audio_codes", "speech_codes", "input_seconds", "speech_seconds"]).to_pylist()
    n = len(rows)
    tasks = [output_task(r["task"]) for r in rows]
    texts = [r["text"] or "" for r in rows]
    ids: list[np.ndarray] = [np.zeros(0, np.int32)] * n
    spans: list[list[dict]] = [[] for _ in range(n)]
    n_text, n_audio = [0] * n, [0] * n
    audio_seconds = [0.0] * n
    for i, r in enumerate(rows):
        if not st.ok(i):
            continue
        try:
            rec = record_of(r, r["has_audio"], _codes(r["audio_codes"]), _codes(r["speech_codes"]))
            sample = build_sample(vocab, rec)
        except Exception as exc:
            st.quarantine(i, "build", q.BUILD_FAILED, q.error_detail(exc))
            continue
        seq = sample.sequence
        if max_sample_tokens is not None and len(seq.input_ids) > max_sample_tokens:
            st.drop(i, "build", q.LONGER_THAN_ROW)
            continue
        tasks[i], texts[i], ids[i] = sample.task, sample.text, seq.input_ids
        spans[i] = spans_to_pylist(seq.spans)
        n_text[i], n_audio[i] = seq.n_text_tokens, seq.n_audio_tokens
        codes_in_sample = int(vocab.is_audio(seq.input_ids).sum())
        audio_seconds[i] = (codes_in_sample / identity.token_rate if is_pretokenized(rec)
                            else r["input_seconds"] + r["speech_seconds"])
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int32, count=n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = np.concatenate(ids).astype(np.int32) if n else np.zeros(0, np.int32)
    batch = st.apply(batch)
    cols = {
        "task": pa.array(tasks, pa.string()), "text": pa.array(texts, pa.string()),
        "n_tokens": pa.array(lengths, pa.int32()), "n_text_tokens": pa.array(n_text, pa.int32()),
        "n_audio_tokens": pa.array(n_audio, pa.int32()), "audio_seconds": pa.array(audio_seconds, pa.float64()),
        "spans": pa.array(spans, pa.list_(SPAN_ARROW_TYPE)),
        "input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int32())),
    }
    return pa.table({f.name: cols[f.name] if f.name in cols else batch.column(f.name).cast(f.type)
                     for f in STAGED_SCHEMA}, schema=STAGED_SCHEMA)


# ---- staging -------------------------------------------------------------------------------------------

class StagingSink(Datasink[int]):
    """Writes each write task's rows to one Parquet file in the staging directory, atomically.

    A staged file that exists is complete, so the set of staged record keys is exactly what a resumed
    run may skip. `rows_per_file` bundles blocks into fewer, larger files (bounded file counts at
    millions of records) at the price of redoing up to that many rows per in-flight write after a kill."""

    def __init__(self, directory: str, rows_per_file: int) -> None:
        self.directory = directory
        self.rows_per_file = rows_per_file

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def write(self, blocks: Iterator[Block], ctx: Any) -> int:
        import uuid

        tables = [t for t in (BlockAccessor.for_block(b).to_arrow() for b in blocks) if t.num_rows]
        if not tables:
            return 0
        table = pa.concat_tables(tables).select(STAGED_SCHEMA.names).cast(STAGED_SCHEMA)
        path = Path(self.directory) / f"{uuid.uuid4().hex}.parquet"
        atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
        return table.num_rows


def staged_keys(directory: Path) -> np.ndarray:
    """Record keys of every complete staged file (reads one column)."""
    files = sorted(str(p) for p in directory.glob("*.parquet"))
    if not files:
        return np.zeros(0, dtype="S16")
    column = pq.ParquetDataset(files).read(columns=["record_key"]).column("record_key").combine_chunks()
    return np.frombuffer(column.buffers()[1], dtype="S16")[column.offset:column.offset + len(column)].copy()


__all__ = [
    "AUDIO_INPUT_TASKS", "PAIRED_TASKS", "READ_SCHEMA", "STAGED_SCHEMA", "WINDOW_SLACK_SECONDS", "DoneSet", "Encode",
    "StagingSink", "Synthesize", "build_rows", "check_codes", "classify_raw", "decode_audio", "encode_grouped",
    "ratio_copies", "read_units", "record_key", "record_of", "staged_keys", "unit_failure_row", "window_problem",
    "without_codes",
]
