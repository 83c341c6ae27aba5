"""Stage UDFs of the tokenize job, called directly (no Ray): reading with resume filtering, ratios,
decoding with every audio problem classified, and codec batching with bad-input isolation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from pipelines import quarantine as q
from pipelines.readers import get_reader
from pipelines.records import SourceConfig, raw_row
from pipelines.tokenize_stages import (
    READ_SCHEMA,
    DoneSet,
    build_rows,
    check_codes,
    classify_raw,
    decode_audio,
    encode_grouped,
    ratio_copies,
    read_units,
    record_key,
    without_codes,
)
from tokenization.codecs.base import AudioCodec, CodecIdentity

SR = 16000


# ---- read / ratio --------------------------------------------------------------------------------------

def test_ratio_copies_subsample_and_repeat_stably() -> None:
    ids = [f"s/{i}" for i in range(4000)]
    assert all(ratio_copies(i, 1.0) == 1 for i in ids[:50])
    assert all(ratio_copies(i, 0.0) == 0 for i in ids[:50])
    kept = sum(ratio_copies(i, 0.3) for i in ids)
    assert 0.27 * len(ids) < kept < 0.33 * len(ids)
    copies = [ratio_copies(i, 2.5) for i in ids]
    assert set(copies) == {2, 3} and 2.45 < np.mean(copies) < 2.55
    assert copies == [ratio_copies(i, 2.5) for i in ids]  # stable


def test_classify_raw_statuses() -> None:
    base = {"record_id": "s/1", "source": "s", "kind": "librispeech", "task": "asr", "locator": "x"}
    assert classify_raw(raw_row(**base), 1.0)["status"] == q.OK
    err = classify_raw(raw_row(**base, error="no transcript"), 1.0)
    assert (err["status"], err["stage"], err["error"], err["detail"]) == (q.QUARANTINE, "read", q.READER_ERROR,
                                                                          "no transcript")
    drop = classify_raw(raw_row(**base, drop_reason="garbage_tag"), 1.0)
    assert (drop["status"], drop["drop_reason"]) == (q.DROP, "garbage_tag")
    unselected = classify_raw(raw_row(**base, error="bad"), 0.0)  # ratio decides first: not in the dataset
    assert (unselected["status"], unselected["drop_reason"]) == (q.DROP, "ratio")


def _unit_batch(sources: list[SourceConfig]) -> tuple[pa.Table, list[dict]]:
    items = [(i, u) for i, s in enumerate(sources) for u in get_reader(s.kind).units(s)]
    table = pa.table({"source_index": [i for i, _ in items], "unit": [u for _, u in items]})
    return table, [s.__dict__ for s in sources]


def test_read_units_skips_staged_records_and_reports_failing_units(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.readers.ttt_json import TttJsonReader

    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    (tmp_path / "a.jsonl").write_text((json.dumps(good) + "\n") * 400)
    read = TttJsonReader.read

    def fails_midway(self: TttJsonReader, source: SourceConfig, unit: str) -> Iterator[dict[str, Any]]:
        for i, row in enumerate(read(self, source, unit)):
            if i == 150:
                raise OSError("the disk went away")  # e.g. a network filesystem dropping mid-file
            yield row

    monkeypatch.setattr(TttJsonReader, "read", fails_midway)
    source = SourceConfig.from_mapping({"kind": "ttt_json", "path": str(tmp_path), "name": "tj"})
    batch, sources = _unit_batch([source])
    rows = pa.concat_tables(list(read_units(batch, sources=sources, done=np.zeros(0, "S16"), rows_per_block=64)))
    assert rows.schema == READ_SCHEMA
    ids = rows.column("record_id").to_pylist()
    assert ids[:-1] == [f"tj/a/{i}" for i in range(150)]  # the rows read before the failure are kept
    failed = rows.to_pylist()[-1]
    assert (failed["record_id"], failed["status"], failed["stage"], failed["error"]) == (
        "tj/!unit/a.jsonl", q.QUARANTINE, "read", q.UNIT_FAILED)
    assert "OSError: the disk went away" in failed["detail"]
    done = np.array([record_key(i) for i in ids[::2]], dtype="S16")  # half of them staged by an earlier run
    again = pa.concat_tables(list(read_units(batch, sources=sources, done=done, rows_per_block=64)))
    assert again.column("record_id").to_pylist() == ids[1::2]
    assert record_key("tj/a/1") in DoneSet(np.array([record_key("tj/a/1")], "S16"))


# ---- decode --------------------------------------------------------------------------------------------

def _work_rows(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist([classify_raw(raw_row(**r), 1.0) for r in rows], schema=READ_SCHEMA)


def _tone(seconds: float, sr: int = SR, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    wav = 0.3 * np.sin(2 * np.pi * 220 * t).astype(np.float32)
    return np.stack([wav] * channels, axis=1) if channels > 1 else wav


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("audio")
    files = {name: d / f"{name}.{ext}" for name, ext in (
        ("good", "flac"), ("stereo44", "wav"), ("corrupt", "wav"), ("empty", "wav"), ("nan", "wav"), ("long", "wav"))}
    sf.write(files["good"], _tone(1.0), SR)
    sf.write(files["stereo44"], _tone(1.0, 44100, 2), 44100)
    files["corrupt"].write_bytes(b"RIFF\x00\x01junk that is not a wav file" * 10)
    sf.write(files["empty"], np.zeros(0, np.float32), SR)
    nan = _tone(0.5)
    nan[100:200] = np.nan
    sf.write(files["nan"], nan, SR, subtype="FLOAT")
    sf.write(files["long"], _tone(3.0), SR)
    return files


def _decode_case(audio_files: dict[str, Path], **kw: Any) -> list[dict[str, Any]]:
    base = {"source": "s", "kind": "lhotse", "task": "asr", "text": "T"}
    rows = [{**base, "record_id": f"s/{name}", "locator": name, "audio_path": str(path)}
            for name, path in audio_files.items()]
    rows += [{**base, "record_id": "s/missing", "locator": "m", "audio_path": str(audio_files["good"]) + ".gone"},
             {**base, "record_id": "s/noaudio", "locator": "n"},
             {**base, "record_id": "s/chat", "locator": "c", "task": "text_chat", "messages": [{"role": "user",
                                                                                               "content": "x"}]},
             {**base, "record_id": "s/bytes", "locator": "b", "audio_bytes": audio_files["good"].read_bytes()},
             {**base, "record_id": "s/window", "locator": "w", "audio_path": str(audio_files["long"]),
              "audio_start": 1.0, "audio_end": 1.5},
             {**base, "record_id": "s/caption", "locator": "a", "task": "aac", "audio_path": str(audio_files["long"])}]
    out = decode_audio(_work_rows(rows), sample_rate=SR, **{"min_seconds": 0.1, "max_chars_per_second": 30.0, **kw})
    assert "audio_bytes" not in out.column_names
    return out.to_pylist()


def test_decode_sorts_every_audio_problem_into_quarantine(audio_files: dict[str, Path]) -> None:
    rows = {r["record_id"].split("/")[1]: r for r in _decode_case(audio_files, max_seconds=2.0, too_long="split")}
    expected = {"corrupt": q.CORRUPT_AUDIO, "empty": q.EMPTY_AUDIO, "nan": q.NAN_AUDIO, "missing": q.MISSING_AUDIO,
                "noaudio": q.NO_AUDIO}
    for name, error in expected.items():
        assert (rows[name]["status"], rows[name]["stage"], rows[name]["error"]) == (q.QUARANTINE, "decode", error)
    for name in ("good", "stereo44", "chat", "bytes", "window", "caption"):
        assert rows[name]["status"] == q.OK, rows[name]["detail"]
    stereo = rows["stereo44"]
    assert (stereo["orig_sample_rate"], stereo["orig_channels"], stereo["resampled"], stereo["downmixed"]) == (
        44100, 2, True, True)
    assert len(np.frombuffer(stereo["audio_pcm"][0], "<f4")) == SR  # 1 s at the codec rate
    assert not rows["good"]["resampled"] and not rows["good"]["downmixed"]
    long = rows["caption"]  # a caption describes the whole clip, so every window keeps it
    assert long["audio_windows"] == 2 and [len(b) // 4 for b in long["audio_pcm"]] == [SR * 3 // 2] * 2
    assert len(rows["window"]["audio_pcm"][0]) // 4 == SR // 2  # a segment of a longer file
    assert rows["chat"]["audio_pcm"] == [] and not rows["chat"]["has_audio"]


def test_decode_can_quarantine_over_long_audio(audio_files: dict[str, Path]) -> None:
    rows = {r["record_id"]: r for r in _decode_case(audio_files, max_seconds=2.0, too_long="quarantine")}
    assert (rows["s/long"]["status"], rows["s/long"]["error"]) == (q.QUARANTINE, q.TOO_LONG)
    assert rows["s/good"]["status"] == q.OK


def _decode(rows: list[dict[str, Any]], **kw: Any) -> dict[str, dict[str, Any]]:
    """decode_audio over rows given as raw_row fields (asr on a 2 s limit unless they say otherwise), by id."""
    base = {"source": "s", "kind": "lhotse", "task": "asr", "text": "T"}
    settings = {"max_seconds": 2.0, "too_long": "split", "min_seconds": 0.1, "max_chars_per_second": 30.0, **kw}
    table = _work_rows([{**base, "locator": r["record_id"], **r} for r in rows])
    return {r["record_id"]: r for r in decode_audio(table, sample_rate=SR, **settings).to_pylist()}


def test_decode_drops_audio_too_short_to_encode_and_transcripts_too_long_for_their_audio(tmp_path: Path) -> None:
    blip = tmp_path / "blip.wav"
    sf.write(blip, _tone(0.01), SR)  # 10 ms: the embedded codec's STFT padding fails on it
    one = tmp_path / "one.wav"
    sf.write(one, _tone(1.0), SR)
    words = "WORDS " * 10  # 60 characters on 1 s of audio
    rows = _decode([{"record_id": "blip", "audio_path": str(blip)},
                    {"record_id": "rushed", "audio_path": str(one), "text": words},
                    {"record_id": "rushed_tts", "task": "tts", "audio_path": str(one), "text": words},
                    {"record_id": "caption", "task": "aac", "audio_path": str(one), "text": words},
                    {"record_id": "fine", "audio_path": str(one), "text": "WORDS " * 4}])
    assert (rows["blip"]["status"], rows["blip"]["stage"], rows["blip"]["drop_reason"]) == (q.DROP, "decode",
                                                                                           q.TOO_SHORT)
    for rid in ("rushed", "rushed_tts"):
        assert (rows[rid]["status"], rows[rid]["drop_reason"]) == (q.DROP, q.TOO_FAST), rid
    assert rows["caption"]["status"] == q.OK  # a caption is not a transcript: its length says nothing
    assert rows["fine"]["status"] == q.OK
    relaxed = _decode([{"record_id": "blip", "audio_path": str(blip)},
                       {"record_id": "rushed", "audio_path": str(one), "text": words}],
                      min_seconds=0.005, max_chars_per_second=None)
    assert all(r["status"] == q.OK for r in relaxed.values())


def test_decode_quarantines_windows_outside_their_file(audio_files: dict[str, Path]) -> None:
    long = str(audio_files["long"])  # 3 s
    rows = _decode([{"record_id": "past_start", "audio_path": long, "audio_start": 5.0, "audio_end": 6.0},
                    {"record_id": "at_end", "audio_path": long, "audio_start": 3.0},
                    {"record_id": "past_end", "audio_path": long, "audio_start": 2.0, "audio_end": 4.0},
                    {"record_id": "inverted", "audio_path": long, "audio_start": 1.0, "audio_end": 0.5},
                    {"record_id": "bytes", "audio_bytes": audio_files["long"].read_bytes(), "audio_start": 4.0},
                    {"record_id": "slack", "audio_path": long, "audio_start": 2.5, "audio_end": 3.2}])
    for rid in ("past_start", "at_end", "past_end", "inverted", "bytes"):
        assert (rows[rid]["status"], rows[rid]["stage"], rows[rid]["error"]) == (q.QUARANTINE, "decode",
                                                                                 q.BAD_WINDOW), rid
    assert rows["past_start"]["detail"] == (f"window [5.000, 6.000] s starts at or after the end of the 3.000 s "
                                            f"file: {long}")
    assert "ends 1.000 s after the end of the 3.000 s file" in rows["past_end"]["detail"]
    assert "empty or negative" in rows["inverted"]["detail"]
    assert rows["slack"]["status"] == q.OK  # within WINDOW_SLACK_SECONDS: read to the end of the file
    assert len(rows["slack"]["audio_pcm"][0]) // 4 == SR // 2


def test_decode_drops_over_long_transcribed_audio_and_splits_the_rest(audio_files: dict[str, Path]) -> None:
    long = str(audio_files["long"])  # 3 s on a 2 s limit
    rows = _decode([{"record_id": "asr", "audio_path": long}, {"record_id": "tts", "task": "tts", "audio_path": long},
                    {"record_id": "aac", "task": "aac", "audio_path": long},
                    {"record_id": "qa", "task": "spoken_qa", "audio_path": long}])
    for rid in ("asr", "tts"):
        assert (rows[rid]["status"], rows[rid]["stage"], rows[rid]["drop_reason"]) == (q.DROP, "decode",
                                                                                       q.TOO_LONG_UNALIGNED), rid
    for rid in ("aac", "qa"):  # a caption or a spoken question's answer holds for every window
        assert (rows[rid]["status"], rows[rid]["audio_windows"]) == (q.OK, 2), rid
    quarantined = _decode([{"record_id": "asr", "audio_path": long}], too_long="quarantine")
    assert (quarantined["asr"]["status"], quarantined["asr"]["error"]) == (q.QUARANTINE, q.TOO_LONG)


def test_build_drops_samples_longer_than_the_row() -> None:
    identity = CodecIdentity("recording", "1", 25.0, 64, SR, SR, "")
    chat = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]
    long_chat = [chat[0], {"role": "assistant", "content": "word " * 300}]
    base = {"source": "s", "kind": "sharegpt", "task": "text_chat"}
    table = _work_rows([{**base, "record_id": "s/short", "locator": "a", "messages": chat},
                        {**base, "record_id": "s/long", "locator": "b", "messages": long_chat}])
    decoded = decode_audio(table, sample_rate=SR, max_seconds=30.0, too_long="split", min_seconds=0.1,
                           max_chars_per_second=30.0)
    kw = {"text_tokenizer": "bundled:qwen", "codec_identity": identity.to_dict(), "layout": "compact"}
    rows = {r["record_id"]: r for r in build_rows(without_codes(decoded), max_sample_tokens=100, **kw).to_pylist()}
    assert rows["s/short"]["status"] == q.OK and 0 < rows["s/short"]["n_tokens"] <= 100
    long = rows["s/long"]
    assert (long["status"], long["stage"], long["drop_reason"], long["n_tokens"]) == (q.DROP, "build",
                                                                                      q.LONGER_THAN_ROW, 0)
    unlimited = build_rows(without_codes(decoded), max_sample_tokens=None, **kw).column("status").to_pylist()
    assert unlimited == [q.OK, q.OK]


# ---- encode --------------------------------------------------------------------------------------------

class RecordingCodec(AudioCodec):
    """Codes = frame energies; remembers batch sizes; refuses waveforms of exactly 777 samples."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    @property
    def identity(self) -> CodecIdentity:
        return CodecIdentity("recording", "1", 25.0, 64, SR, SR, "")

    def encode(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        if len(waveform) == 777:
            raise RuntimeError("bad input")
        return np.arange(max(1, len(waveform) // 640)) % 64

    def encode_batch(self, waveforms, sample_rates):  # type: ignore[no-untyped-def]
        self.calls.append([len(w) for w in waveforms])
        return [self.encode(w, sr) for w, sr in zip(waveforms, sample_rates, strict=True)]

    def decode(self, codes: np.ndarray) -> tuple[np.ndarray, int]:
        return np.zeros(len(codes) * 640, np.float32), SR


def test_encode_groups_by_length_and_isolates_bad_inputs() -> None:
    codec = RecordingCodec()
    lengths = [5000, 640, 9000, 777, 1280, 3000, 640]
    out = encode_grouped(codec, [np.zeros(n, np.float32) for n in lengths], SR, max_samples=10_000)
    assert [c if isinstance(c, BaseException) else len(c) for c in out][:3] == [7, 1, 14]
    assert isinstance(out[3], RuntimeError) and all(isinstance(c, np.ndarray) for i, c in enumerate(out) if i != 3)
    batches = [b for b in codec.calls if len(b) > 1 or b[0] != 777]
    assert all(sum(b) <= 10_000 for b in batches) and all(b == sorted(b) for b in batches)
    assert sorted(n for b in codec.calls for n in b if n != 777) == sorted(n for n in lengths if n != 777)


def test_check_codes_rejects_malformed_output() -> None:
    assert check_codes([1, 2], 4, 100).dtype == np.dtype("<i4")
    for bad in ([[1, 2]], [0.5], [4], [-1], []):
        with pytest.raises(ValueError):
            check_codes(bad, 4, 100)
