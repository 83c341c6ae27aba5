"""The tokenize job: config checks (fail fast), the commit step, and full runs on a local Ray cluster with
a tiny fitted embedded codec: the readers' fixtures end to end, every error class to quarantine with
counts that reconcile, byte-identical reruns, and resume after a real SIGKILL."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines import quarantine as q
from pipelines.readers import get_reader
from pipelines.records import SourceConfig
from pipelines.tokenize_job import (
    JobConfigError,
    JobSettings,
    JobStalledError,
    StallWatchdog,
    commit,
    fingerprint,
    format_summary,
    load_sources,
    plan_sources,
    settings_from_config,
    size_pools,
    watching,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "corpora"


# ---- configuration -------------------------------------------------------------------------------------

def _cfg(tmp_path: Path, sources: Any, **data: Any) -> dict[str, Any]:
    return {"paths": {"shards": str(tmp_path / "shards")}, "codec": {"kind": "embedded"},
            "data": {"sources": sources, **data}}


def test_config_errors_fail_fast_listing_every_problem(tmp_path: Path) -> None:
    sources = [{"kind": "librispeech", "path": str(tmp_path / "nope")},
               {"kind": "klingon", "path": str(tmp_path)},
               {"kind": "sharegpt", "path": str(FIXTURES / "sharegpt"), "name": "chat"},
               {"kind": "ttt_json", "path": str(FIXTURES / "ttt_json"), "name": "chat"}]
    settings = settings_from_config(_cfg(tmp_path, sources))
    with pytest.raises(JobConfigError) as err:
        plan_sources(settings.sources)
    msg = str(err.value)
    assert "does not exist" in msg and "unknown corpus kind 'klingon'" in msg and "'chat' used twice" in msg
    assert not (tmp_path / "shards").exists()  # nothing was started


@pytest.mark.parametrize(("data", "match"), [
    ({"sources": []}, "non-empty list"),
    ({"sources": [{"kind": "lhotse"}]}, "'kind' and 'path' are required"),
    ({"sources": [{"kind": "lhotse", "path": ".", "colour": "red"}]}, "unknown keys"),
    ({"sources_file": "/no/such/sources.yaml"}, "does not exist"),
    ({"sources": [{"kind": "lhotse", "path": "."}], "audio": {"too_long": "truncate"}}, "split|quarantine"),
    ({"sources": [{"kind": "lhotse", "path": "."}], "shards": {"rows_per_shard": 0}}, "rows_per_shard"),
    ({"sources": [{"kind": "lhotse", "path": "."}], "audio": {"min_seconds": 40}}, "below data.audio.max_seconds"),
    ({"sources": [{"kind": "lhotse", "path": "."}], "audio": {"max_chars_per_second": 0}}, "positive or null"),
    ({"sources": [{"kind": "lhotse", "path": "."}], "max_sample_tokens": -1}, "max_sample_tokens must be positive"),
    ({"sources": [{"kind": "lhotse", "path": "."}], "job": {"stall_warn_seconds": 60, "stall_fail_seconds": 30}},
     "must not exceed data.job.stall_fail_seconds"),
])
def test_bad_settings_are_config_errors(tmp_path: Path, data: dict, match: str) -> None:
    with pytest.raises(JobConfigError, match=match):
        settings_from_config({"paths": {"shards": str(tmp_path)}, "codec": {"kind": "embedded"}, "data": data})


def test_sources_file_is_a_yaml_list(tmp_path: Path) -> None:
    path = tmp_path / "sources.yaml"
    path.write_text(f"- {{kind: lhotse, path: {FIXTURES / 'lhotse'}, ratio: 0.5}}\n")
    (source,) = load_sources({"sources_file": str(path), "sources": [{"kind": "ignored", "path": "."}]})
    assert (source.kind, source.ratio) == ("lhotse", 0.5)


def test_commit_is_idempotent_after_a_partial_move(tmp_path: Path) -> None:
    from pipelines.tokenize_job import RunLayout

    layout = RunLayout(tmp_path, "f" * 64)
    for name in ("parquet", "wds", "quarantine"):
        (layout.final / name).mkdir(parents=True)
        (layout.final / name / "part-00000-of-00001.x").write_text(name)
    (layout.final / "manifest.json").write_text(json.dumps({"fingerprint": "f" * 64}))
    (tmp_path / "wds").mkdir()
    (tmp_path / "wds" / "stale.tar").write_text("old run")
    os.replace(layout.final / "parquet", tmp_path / "parquet")  # a crash after the first move
    manifest = {"shards": {"webdataset": True}}
    commit(layout, manifest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "parquet", "quarantine", "wds"]
    assert [p.name for p in (tmp_path / "wds").iterdir()] == ["part-00000-of-00001.x"]


# ---- full runs on Ray (tiny fitted embedded codec) -----------------------------------------------------

TINY_CODEC = {"kind": "embedded", "codebook_sizes": [16, 16], "pca_dim": 16, "kmeans_iterations": 4}


@pytest.fixture(scope="module")
def codec_cfg(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny embedded codec fitted once per module on a few seconds of espeak speech."""
    from tokenization.codecs.embedded import fit_embedded_codec
    from tokenization.tts import get_voice

    voice = get_voice("espeak:en")
    waves = [(voice.synthesize(t), voice.sample_rate) for t in (
        "The quick brown fox jumps over the lazy dog.", "She sells sea shells by the sea shore.",
        "How much wood would a woodchuck chuck?")]
    cfg = {**TINY_CODEC, "path": str(tmp_path_factory.mktemp("codec"))}
    fit_embedded_codec(waves, cfg, cfg["path"], seed=0)
    return cfg


def fixture_sources() -> list[dict[str, Any]]:
    """One source per reader kind over the readers' fixtures (bad rows included on purpose)."""
    paths = {"librispeech": "librispeech/LibriSpeech", "aishell1": "aishell1/data_aishell",
             "aishell2": "aishell2/iOS/data", "wenetspeech": "wenetspeech", "gigaspeech": "gigaspeech",
             "fleurs": "fleurs", "hf_parquet": "hf_parquet", "lhotse": "lhotse", "spoken_qa": "spoken_qa",
             "ttt_json": "ttt_json"}
    sources = [{"kind": k, "path": str(FIXTURES / p)} for k, p in paths.items()]
    sources += [
        {"kind": "commonvoice", "name": "cv_en", "path": str(FIXTURES / "commonvoice/cv-corpus-5.1-2020-06-22/en")},
        {"kind": "commonvoice", "name": "cv_zh", "path": str(FIXTURES / "commonvoice/cv-corpus-17.0-2024-03-15/zh-CN")},
        {"kind": "sharegpt", "path": str(FIXTURES / "sharegpt"), "task": "audio_chat", "ratio": 2.0},
        {"kind": "librispeech", "name": "libri_tts", "path": str(FIXTURES / "librispeech/LibriSpeech"), "task": "tts",
         "ratio": 0.5},
    ]
    return sources


def job_cfg(shards: Path, sources: list[dict[str, Any]], codec: dict[str, Any], **job: Any) -> dict[str, Any]:
    # no characters-per-second limit: the readers' fixtures pair 0.25 s tones with whole sentences
    data = {"tts": {"voice": "espeak:en", "voices": {"zh": "espeak:cmn"}},
            "audio": {"max_seconds": 2.0, "too_long": "quarantine", "max_chars_per_second": None},
            "shards": {"rows_per_shard": 16, "row_group_rows": 4}, "job": {"rows_per_block": 4, **job},
            "sources": sources}
    return {"paths": {"shards": str(shards)}, "codec": codec, "data": data}


def reader_rows(sources: list[dict[str, Any]]) -> dict[str, int]:
    """Rows the readers yield per source, counted without the job."""
    counts: dict[str, int] = {}
    for m in sources:
        s = SourceConfig.from_mapping(m)
        reader = get_reader(s.kind)
        n = 0
        for unit in reader.units(s):
            try:
                for _ in reader.read(s, unit):
                    n += 1
            except EOFError:  # the unit that fails on purpose (a truncated gzip): the job adds one row for it
                n += 1
        counts[s.source_name] = n
    return counts


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _write_jsonl_gz(path: Path, rows: list[dict[str, Any]]) -> None:
    import gzip

    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def make_lhotse(root: Path, clips: dict[str, tuple[Path, float, int, int]], texts: dict[str, str],
                windows: dict[str, tuple[float, float]] | None = None) -> Path:
    """lhotse recordings + supervisions over existing files: clip id -> (path, seconds, rate, channels); a
    supervision covers its whole clip unless `windows` gives it (start, duration)."""
    root.mkdir(parents=True, exist_ok=True)
    recordings = [{"id": cid, "sources": [{"type": "file", "channels": list(range(ch)), "source": str(path)}],
                   "sampling_rate": sr, "num_samples": int(sec * sr), "duration": sec}
                  for cid, (path, sec, sr, ch) in clips.items()]
    spans = {cid: (windows or {}).get(cid, (0.0, clips[cid][1])) for cid in texts}
    supervisions = [{"id": f"sup-{cid}", "recording_id": cid, "start": spans[cid][0], "duration": spans[cid][1],
                     "channel": 0, "text": text, "language": "English", "speaker": "spk"}
                    for cid, text in texts.items()]
    _write_jsonl_gz(root / "test_recordings_train.jsonl.gz", recordings)
    _write_jsonl_gz(root / "test_supervisions_train.jsonl.gz", supervisions)
    return root


def speech_clips(root: Path, texts: list[str]) -> dict[str, tuple[Path, float, int, int]]:
    import soundfile as sf

    from tokenization.tts import get_voice

    voice = get_voice("espeak:en")
    root.mkdir(parents=True, exist_ok=True)
    clips = {}
    for i, text in enumerate(texts):
        wav = voice.synthesize(text)
        path = root / f"clip{i:03d}.wav"
        sf.write(path, wav, voice.sample_rate)
        clips[f"clip{i:03d}"] = (path, len(wav) / voice.sample_rate, voice.sample_rate, 1)
    return clips


def error_corpus(root: Path) -> list[dict[str, Any]]:
    """Sources in which every quarantine class occurs at least once, next to good rows."""
    import soundfile as sf

    audio = root / "lhotse" / "audio"  # inside the source root, where the readers confine audio paths
    clips = speech_clips(audio, ["A good sentence.", "Another fine one."])
    sr = 16000
    tone = (0.3 * np.sin(np.arange(sr) / sr * 2 * np.pi * 220)).astype(np.float32)
    sf.write(audio / "stereo.wav", np.stack([tone, tone], 1), sr)
    (audio / "corrupt.wav").write_bytes(b"RIFF" + bytes(range(256)) * 4)
    sf.write(audio / "empty.wav", np.zeros(0, np.float32), sr)
    nan = tone.copy()
    nan[10:20] = np.nan
    sf.write(audio / "nan.wav", nan, sr, subtype="FLOAT")
    sf.write(audio / "long.wav", np.tile(tone, 3), sr)
    sf.write(audio / "blip.wav", tone[: sr // 100], sr)
    clips |= {"stereo": (audio / "stereo.wav", 1.0, sr, 2), "corrupt": (audio / "corrupt.wav", 1.0, sr, 1),
              "empty": (audio / "empty.wav", 1.0, sr, 1), "nan": (audio / "nan.wav", 1.0, sr, 1),
              "long": (audio / "long.wav", 3.0, sr, 1), "gone": (audio / "gone.wav", 1.0, sr, 1),
              "late": (audio / "long.wav", 3.0, sr, 1), "blip": (audio / "blip.wav", 0.01, sr, 1)}
    lhotse = make_lhotse(root / "lhotse", clips, {cid: "SOME WORDS" for cid in clips}, windows={"late": (5.0, 1.0)})
    chat = root / "chat"
    chat.mkdir()
    convs = [{"id": "ok", "conversations": [{"from": "human", "value": "Hello there."},
                                            {"from": "gpt", "value": "Hi, how can I help?"}]},
             {"id": "mute", "conversations": [{"from": "human", "value": "Say nothing."},
                                              {"from": "gpt", "value": "..."}]}]
    (chat / "chat.json").write_text(json.dumps(convs))
    tj = root / "ttt"
    tj.mkdir()
    (tj / "a.jsonl").write_text(json.dumps({"id": "fine", "text": "Plain <|begin_of_audio|><|audio_3|>"
                                                                 "<|end_of_audio_new|> text."}) + "\n"
                                + json.dumps({"id": "bogus", "text": "x <|bogus_token|> y"}) + "\n")
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    (tj / "b.jsonl").write_bytes((json.dumps(good) + "\n").encode() * 300 + b"\xff\xfe\n")  # costs one line
    for part in ("recordings", "supervisions"):  # a truncated gzip pair: the lhotse reader fails on the unit
        (lhotse / f"{part}_broken.jsonl.gz").write_bytes(b"\x1f\x8bgarbage")
    return [{"kind": "lhotse", "path": str(lhotse), "name": "lh"},
            {"kind": "sharegpt", "path": str(chat), "name": "chat", "task": "audio_chat"},
            {"kind": "ttt_json", "path": str(tj), "name": "tj"}]


@dataclass(frozen=True)
class Run:
    shards: Path
    report: Any
    sources: list[dict[str, Any]]
    config: dict[str, Any]


@pytest.fixture(scope="module")
def reference(ray_local: Any, codec_cfg: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One uninterrupted run over the readers' fixtures plus a corpus with every error class; the tests
    below check it from several sides, and the resume test must reproduce it byte for byte."""
    from pipelines.tokenize_job import run_tokenize_job

    root = tmp_path_factory.mktemp("reference")
    sources = fixture_sources() + error_corpus(root / "corpus")
    config = job_cfg(root / "shards", sources, codec_cfg)
    return Run(root / "shards", run_tokenize_job(config), sources, config)


def test_fixture_corpora_end_to_end(reference: Run, codec_cfg: dict[str, Any]) -> None:
    from pipelines import duck
    from tokenization.codecs import build_codec
    from tokenization.sequence import spans_from_pylist, validate_spans
    from tokenization.shard_format import read_vocab_manifest
    from tokenization.vocab_factory import make_vocab

    manifest = reference.report.manifest
    counts = manifest["counts"]["sources"]
    assert {k: v["read"] for k, v in counts.items()} == reader_rows(reference.sources)
    for name, c in counts.items():
        assert c["read"] == c["written_records"] + c["quarantined"] + sum(c["dropped"].values()), name
    assert counts["sharegpt"]["written_samples"] == 2 * counts["sharegpt"]["written_records"]  # ratio 2
    assert counts["libri_tts"]["dropped"].get("ratio", 0) > 0
    vocab = make_vocab("bundled:qwen", build_codec(codec_cfg).identity, "compact")
    table = pq.read_table(reference.shards / "parquet")
    assert table.num_rows == manifest["counts"]["total"]["written_samples"] > 0
    assert len(set(table.column("sample_id").to_pylist())) == table.num_rows
    for row in table.to_pylist():
        ids = np.asarray(row["input_ids"], np.int32)
        validate_spans(vocab, ids, spans_from_pylist(row["spans"]))
        assert row["n_tokens"] == len(ids) == row["n_text_tokens"] + row["n_audio_tokens"]
    assert {"asr", "tts", "audio_chat", "text_chat", "interleaved"} <= set(table.column("task").to_pylist())
    for path in sorted((reference.shards / "parquet").glob("*.parquet")):
        assert read_vocab_manifest(path) == vocab.manifest()
    quarantined = duck.query("SELECT count(*) AS n FROM quarantine", reference.shards).column("n")[0].as_py()
    assert quarantined == manifest["counts"]["total"]["quarantined"]
    assert json.loads((reference.shards / "manifest.json").read_text()) == manifest
    assert not (reference.shards / "_staging").exists()


def test_every_error_class_is_quarantined_at_its_stage(reference: Run) -> None:
    from pipelines import duck

    rows = duck.query("SELECT record_id, stage, error FROM quarantine", reference.shards).to_pylist()
    got = {r["record_id"]: (r["stage"], r["error"]) for r in rows}
    assert got["lh/sup-gone"] == ("read", q.READER_ERROR)  # the lhotse reader checks files itself
    assert got["tj/b/300"] == ("read", q.READER_ERROR)  # the line that is not UTF-8, not its whole file
    assert got["lh/!unit/supervisions_broken.jsonl.gz"] == ("read", q.UNIT_FAILED)
    assert got["lh/sup-corrupt"] == ("decode", q.CORRUPT_AUDIO)
    assert got["lh/sup-empty"] == ("decode", q.EMPTY_AUDIO)
    assert got["lh/sup-nan"] == ("decode", q.NAN_AUDIO)
    assert got["lh/sup-long"] == ("decode", q.TOO_LONG)
    assert got["lh/sup-late"] == ("decode", q.BAD_WINDOW)  # a window past the end of its file
    assert got["chat/mute"] == ("tts", q.TTS_FAILED)
    assert got["tj/bogus"] == ("build", q.BUILD_FAILED)
    reasons = reference.report.manifest["counts"]["quarantine_reasons"]
    assert sum(reasons.values()) == len(rows)
    samples = {r["sample_id"]: r for r in duck.query(
        "SELECT sample_id, resampled, downmixed, orig_channels FROM samples", reference.shards).to_pylist()}
    assert {"lh/sup-clip000", "lh/sup-clip001", "chat/ok", "tj/fine"} <= set(samples)
    stereo = samples["lh/sup-stereo"]
    assert (stereo["resampled"], stereo["downmixed"], stereo["orig_channels"]) == (False, True, 2)
    assert samples["lh/sup-clip000"]["resampled"]  # espeak's 22.05 kHz resampled to the codec's 16 kHz


def test_threshold_drops_are_counted_with_their_settings(reference: Run) -> None:
    counts = reference.report.manifest["counts"]
    lh = counts["sources"]["lh"]
    assert lh["dropped"] == {q.TOO_SHORT: 1}  # 10 ms of audio
    assert lh["read"] == lh["written_records"] + lh["quarantined"] + sum(lh["dropped"].values())
    assert f"dropped {q.TOO_SHORT}: 1 (below data.audio.min_seconds=0.1)" in format_summary(counts)


def test_finished_run_is_recognised(reference: Run) -> None:
    from pipelines.tokenize_job import run_tokenize_job

    before = tree_bytes(reference.shards)
    again = run_tokenize_job(reference.config)
    assert again.up_to_date and tree_bytes(reference.shards) == before


def test_resume_after_sigkill_gives_the_same_bytes(reference: Run, ray_local: Any, tmp_path: Path) -> None:
    """A separate driver process runs the same input with other block sizes, is SIGKILLed once it has
    staged something, and a new run resumes: the shards must equal the uninterrupted reference."""
    from pipelines.tokenize_job import run_tokenize_job

    config = json.loads(json.dumps(reference.config))
    config["paths"]["shards"] = str(tmp_path / "shards")
    config["data"]["job"] |= {"rows_per_block": 1, "staging_rows_per_file": 1}
    (tmp_path / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    script = ("import json, sys; from pipelines.tokenize_job import run_tokenize_job; "
              "run_tokenize_job(json.load(open(sys.argv[1])))")
    with (tmp_path / "killed.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "config.json")], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        rows = tmp_path / "shards" / "_staging"
        deadline = time.monotonic() + 600
        while not list(rows.glob("*/rows/*.parquet")):
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "nothing staged in 600 s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started in its session
        assert proc.wait() == -signal.SIGKILL
    assert not list(rows.glob("*/rows.done")), "killed too late: staging had finished"
    assert not (tmp_path / "shards" / "manifest.json").exists()

    resumed = run_tokenize_job(config)
    assert 0 < resumed.resumed_records < sum(reference.report.manifest["counts"]["sources"][s]["read"]
                                             for s in reference.report.manifest["counts"]["sources"])
    assert tree_bytes(tmp_path / "shards") == tree_bytes(reference.shards)


def test_encode_stage_quarantines_only_rows_the_codec_rejects(codec_cfg: dict[str, Any], tmp_path: Path) -> None:
    import pyarrow as pa

    from pipelines.records import raw_row
    from pipelines.tokenize_stages import READ_SCHEMA, Encode, classify_raw, decode_audio

    clips = speech_clips(tmp_path, ["One two three.", "Four five six."])
    rows = [classify_raw(raw_row(record_id=f"s/{cid}", source="s", kind="lhotse", task="asr", locator=cid,
                                 text="X", audio_path=path), 1.0) for cid, (path, *_rest) in clips.items()]
    decoded = decode_audio(pa.Table.from_pylist(rows, schema=READ_SCHEMA), sample_rate=16000, max_seconds=30.0,
                           too_long="split", min_seconds=0.1, max_chars_per_second=30.0)
    pcm = decoded.column("audio_pcm").to_pylist()
    pcm[1] = [b""]  # what the codec refuses: an empty waveform (the decode stage never lets one through)
    decoded = decoded.set_column(decoded.schema.get_field_index("audio_pcm"), "audio_pcm",
                                 pa.array(pcm, pa.list_(pa.binary())))
    out = Encode(codec_cfg, 16000, max_batch_seconds=60.0)(decoded).to_pylist()
    assert out[0]["status"] == q.OK and len(out[0]["audio_codes"][0]) > 0
    assert (out[1]["status"], out[1]["stage"], out[1]["error"]) == (q.QUARANTINE, "encode", q.ENCODE_FAILED)
    assert "empty" in out[1]["detail"]


def test_corpus_text_vocab_gives_the_same_samples_in_fewer_ids(reference: Run, tmp_path: Path) -> None:
    """data.text_vocab=corpus: every sample means exactly what it means under the full Qwen vocabulary (same
    inline string, same span table, same token count), the shards' manifest carries the id mapping, and
    training/inference rebuild the vocabulary from that manifest alone."""
    from pipelines.tokenize_job import run_tokenize_job
    from tokenization.codecs import build_codec
    from tokenization.vocab_factory import make_vocab, manifest_subset

    config = {**reference.config, "paths": {"shards": str(tmp_path / "shards")},
              "data": {**reference.config["data"], "text_vocab": "corpus"}}
    report = run_tokenize_job(config)
    manifest = report.manifest
    identity = build_codec(config["codec"]).identity
    full = make_vocab("bundled:qwen", identity, "compact")
    small = make_vocab("bundled:qwen", identity, "compact", manifest_subset(manifest))
    assert 300 < small.text_vocab_size < full.text_vocab_size // 50
    assert small.size == manifest["vocab_size"] and manifest["text_tokenizer"]["base_ids"]
    assert manifest["counts"]["total"] == reference.report.manifest["counts"]["total"]
    ours = {r["sample_id"]: r for r in pq.read_table(tmp_path / "shards" / "parquet").to_pylist()}
    theirs = {r["sample_id"]: r for r in pq.read_table(reference.shards / "parquet").to_pylist()}
    assert ours.keys() == theirs.keys()
    for sample_id, row in ours.items():
        other = theirs[sample_id]
        assert small.to_mixed_string(row["input_ids"]) == full.to_mixed_string(other["input_ids"]), sample_id
        assert row["spans"] == other["spans"] and row["n_tokens"] == other["n_tokens"]


def test_corpus_text_vocab_needs_the_compact_layout(tmp_path: Path) -> None:
    data = {"sources": [{"kind": "lhotse", "path": "."}], "text_vocab": "corpus", "vocab_layout": "reference"}
    with pytest.raises(JobConfigError, match="vocab_layout=compact"):
        settings_from_config({"paths": {"shards": str(tmp_path)}, "codec": {"kind": "embedded"}, "data": data})
    with pytest.raises(JobConfigError, match=r"full\|corpus"):
        settings_from_config({"paths": {"shards": str(tmp_path)}, "codec": {"kind": "embedded"},
                              "data": {**data, "text_vocab": "tiny", "vocab_layout": "compact"}})


# ---- thresholds, over-long records, actor pools and the stall watchdog (issue #16) -----------------------

def test_limits_are_read_from_the_config_and_null_means_none(tmp_path: Path) -> None:
    sources = [{"kind": "lhotse", "path": "."}]
    defaults = settings_from_config(_cfg(tmp_path, sources))
    assert (defaults.min_seconds, defaults.max_chars_per_second, defaults.max_sample_tokens) == (0.1, 30.0, None)
    s = settings_from_config(_cfg(tmp_path, sources, audio={"min_seconds": 0.2, "max_chars_per_second": None},
                                  max_sample_tokens=1280, job={"stall_warn_seconds": 5, "stall_fail_seconds": 9}))
    assert (s.min_seconds, s.max_chars_per_second, s.max_sample_tokens) == (0.2, None, 1280)
    assert (s.stall_warn_seconds, s.stall_fail_seconds) == (5.0, 9.0)
    assert fingerprint(s, {}) != fingerprint(defaults, {})  # the limits decide what is written


def _pool_settings(tmp_path: Path, tts: tuple[int, float], encode: tuple[int, float]) -> JobSettings:
    """A job whose source needs speech, so it runs both actor pools: (actors, CPUs each)."""
    sources = [{"kind": "lhotse", "path": str(FIXTURES / "lhotse"), "task": "tts"}]
    return settings_from_config(_cfg(tmp_path, sources, tts={"pool_size": tts[0], "num_cpus": tts[1]},
                                     encode={"pool_size": encode[0], "num_cpus": encode[1]}))


def test_pools_that_leave_the_tasks_a_cpu_are_kept(tmp_path: Path) -> None:
    settings = _pool_settings(tmp_path, (2, 0.5), (1, 1.0))  # the embedded defaults on 4 logical CPUs
    assert size_pools(settings, 4.0) is settings


def test_pools_that_would_hold_every_cpu_are_shrunk_with_a_warning(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    settings = _pool_settings(tmp_path, (4, 0.5), (2, 1.0))  # data=small's pools on 4 CPUs: 4 held, none left
    with caplog.at_level(logging.WARNING, logger="pipelines.tokenize_job"):
        sized = size_pools(settings, 4.0)
    assert (sized.tts_pool, sized.encode_pool) == (3, 1)  # 2.5 CPUs held, 1.5 left to the tasks
    assert "data.tts.pool_size=3 (configured 4), data.encode.pool_size=1 (configured 2)" in caplog.text
    assert fingerprint(sized, {}) == fingerprint(settings, {})  # pool sizes never change the shards


def test_pools_that_cannot_leave_a_cpu_refuse_to_start(tmp_path: Path) -> None:
    """The hang of issue #16: data.job.num_cpus=2 with the embedded pools (2 x 0.5 + 1 x 1 CPU)."""
    settings = _pool_settings(tmp_path, (2, 0.5), (1, 1.0))
    with pytest.raises(JobConfigError, match=r"has 2 CPUs .* hold 1\.5 of them .* Raise data\.job\.num_cpus to at "
                                             r"least 2\.5 .* data\.tts\.num_cpus / data\.encode\.num_cpus"):
        size_pools(settings, 2.0)


def test_a_job_whose_pools_hold_every_cpu_fails_fast(ray_local: Any, codec_cfg: dict[str, Any],
                                                     tmp_path: Path) -> None:
    from pipelines.tokenize_job import run_tokenize_job

    sources = [{"kind": "lhotse", "path": str(FIXTURES / "lhotse"), "task": "tts"}]
    config = job_cfg(tmp_path / "shards", sources, codec_cfg)
    cpus = ray_local.cluster_resources()["CPU"]
    config["data"] |= {"tts": {"voice": "espeak:en", "pool_size": 1, "num_cpus": cpus / 2},
                       "encode": {"pool_size": 1, "num_cpus": cpus / 2}}
    t0 = time.monotonic()
    with pytest.raises(JobConfigError, match="Ray Data would wait forever"):
        run_tokenize_job(config)
    assert time.monotonic() - t0 < 60
    assert not list((tmp_path / "shards").glob("_staging/*/rows/*.parquet"))


def test_stall_watchdog_warns_then_gives_the_reason_to_fail(caplog: pytest.LogCaptureFixture) -> None:
    now, files = [0.0], [0]
    watchdog = StallWatchdog("the stage phase", lambda: files[0], lambda: "Ray cluster: CPU 0 free of 2",
                             warn_s=300, fail_s=1800, clock=lambda: now[0])

    def at(t: float) -> str | None:
        now[0] = t
        return watchdog.check()

    with caplog.at_level(logging.WARNING, logger="pipelines.tokenize_job"):
        assert at(299) is None and not caplog.records
        assert at(300) is None and len(caplog.records) == 1
        assert "the stage phase has made no progress for 300 s; Ray cluster: CPU 0 free of 2" in caplog.text
        assert at(450) is None and len(caplog.records) == 1  # then once every warn_s
        assert at(600) is None and len(caplog.records) == 2
        files[0] = 1  # progress restarts the clock
        assert at(700) is None and at(999) is None and len(caplog.records) == 2
        assert at(2499) is None
        assert at(2500) == ("the stage phase made no progress for 1800 s (data.job.stall_fail_seconds=1800); "
                            "Ray cluster: CPU 0 free of 2")


def test_watching_stops_a_stalled_body_in_its_own_thread() -> None:
    """The body waits the way Ray Data's consumer does (10 ms sleeps), in a thread that is not the main one."""
    errors: list[BaseException] = []

    def job() -> None:
        watchdog = StallWatchdog("a phase", lambda: 0, lambda: "Ray cluster: CPU 0 free of 2", warn_s=0.05,
                                 fail_s=0.2)
        try:
            with watching(watchdog, poll_s=0.02):
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    time.sleep(0.01)
        except JobStalledError as e:
            errors.append(e)

    thread = threading.Thread(target=job)
    thread.start()
    thread.join(30)
    assert len(errors) == 1 and str(errors[0]).startswith("a phase made no progress for")
    assert str(errors[0]).endswith("(data.job.stall_fail_seconds=0.2); Ray cluster: CPU 0 free of 2")
    finished = StallWatchdog("a phase", lambda: 0, lambda: "", warn_s=0.05, fail_s=0.2)
    with watching(finished, poll_s=0.02):  # a body that ends in time is left alone
        time.sleep(0.05)


def test_a_stalled_stage_fails_with_the_reason_and_frees_the_cluster(ray_local: Any, codec_cfg: dict[str, Any],
                                                                     tmp_path: Path) -> None:
    """Pools that hold every CPU (what `size_pools` now refuses) used to leave the stage phase waiting forever;
    the watchdog fails it after data.job.stall_fail_seconds, and Ray Data releases the actors."""
    from pipelines.tokenize_job import RunLayout, stage_records
    from tokenization.codecs import build_codec

    sources = [{"kind": "lhotse", "path": str(FIXTURES / "lhotse"), "task": "tts"}]
    config = job_cfg(tmp_path / "shards", sources, codec_cfg, stall_warn_seconds=2, stall_fail_seconds=5)
    cpus = ray_local.cluster_resources()["CPU"]
    config["data"] |= {"tts": {"voice": "espeak:en", "pool_size": 1, "num_cpus": cpus / 2},
                       "encode": {"pool_size": 1, "num_cpus": cpus / 2}}
    settings = settings_from_config(config)
    layout = RunLayout(settings.shards_dir, "0" * 64)
    layout.prepare(force=False)
    with pytest.raises(JobStalledError, match=r"^the stage phase .* made no progress for \d+ s "
                                              r"\(data.job.stall_fail_seconds=5\); Ray cluster: CPU .* actor pools "
                                              rf"hold data.tts: 1 x {cpus / 2:g} CPU, data.encode: 1 x {cpus / 2:g}"):
        stage_records(settings, plan_sources(settings.sources), build_codec(settings.codec).identity, layout)
    deadline = time.monotonic() + 60
    while ray_local.available_resources().get("CPU", 0.0) < cpus:
        assert time.monotonic() < deadline, f"actors still hold CPUs: {ray_local.available_resources()}"
        time.sleep(0.2)


def test_transcribed_audio_is_not_split_and_samples_fit_the_row(ray_local: Any, codec_cfg: dict[str, Any],
                                                                tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """Over-long audio with a transcript is dropped, captioned audio is split, samples longer than the row and
    transcripts too long for their audio are dropped, each counted by reason; the pools as configured would hold
    every CPU, so they run smaller."""
    import soundfile as sf

    from pipelines.tokenize_job import run_tokenize_job

    def corpus(root: Path, texts: dict[str, str]) -> Path:
        audio = root / "audio"  # inside the source root, where the readers confine audio paths
        clips = speech_clips(audio, ["A good sentence."])
        sr = 16000
        tone = (0.3 * np.sin(np.arange(sr) / sr * 2 * np.pi * 220)).astype(np.float32)
        sf.write(audio / "one.wav", tone, sr)
        sf.write(audio / "three.wav", np.tile(tone, 3), sr)
        clips |= {"one": (audio / "one.wav", 1.0, sr, 1), "three": (audio / "three.wav", 3.0, sr, 1)}
        return make_lhotse(root, clips, texts)

    # 60 characters on 1 s of audio: more than data.audio.max_chars_per_second (30 by default) allows
    speech = corpus(tmp_path / "speech", {"clip000": "A GOOD SENTENCE", "three": "A TONE", "one": "WORDS " * 10})
    captions = corpus(tmp_path / "captions", {"one": "A TONE", "three": "A LONGER TONE"})
    sources = [{"kind": "lhotse", "path": str(speech), "name": "asr"},
               {"kind": "lhotse", "path": str(speech), "name": "tts", "task": "tts"},
               {"kind": "lhotse", "path": str(captions), "name": "aac", "task": "aac"}]
    config = job_cfg(tmp_path / "shards", sources, codec_cfg)
    cpus = ray_local.cluster_resources()["CPU"]
    # 100 codes/s (TINY_CODEC): 3 s of captioned audio is ~300 tokens, a sentence of speech ~150
    config["data"] |= {"audio": {"max_seconds": 2.0, "too_long": "split"}, "max_sample_tokens": 250,
                       "tts": {"voice": "espeak:en", "pool_size": 2, "num_cpus": cpus / 4},
                       "encode": {"pool_size": 2, "num_cpus": cpus / 4}}
    with caplog.at_level(logging.WARNING, logger="pipelines.tokenize_job"):
        report = run_tokenize_job(config)
    assert "data.tts.pool_size=1 (configured 2)" in caplog.text
    counts = report.manifest["counts"]
    got = {name: (c["read"], c["written_records"], c["quarantined"], c["dropped"])
           for name, c in counts["sources"].items()}
    paired = (3, 1, 0, {q.TOO_LONG_UNALIGNED: 1, q.TOO_FAST: 1})
    assert got == {"asr": paired, "tts": paired, "aac": (2, 1, 0, {q.LONGER_THAN_ROW: 1})}
    summary = format_summary(counts)
    assert f"dropped {q.TOO_FAST}: 2 (above data.audio.max_chars_per_second=30.0)" in summary
    assert f"dropped {q.TOO_LONG_UNALIGNED}: 2 (transcribed audio above data.audio.max_seconds=2)" in summary
    assert f"dropped {q.LONGER_THAN_ROW}: 1 (above data.max_sample_tokens=250)" in summary
    table = pq.read_table(tmp_path / "shards" / "parquet")
    assert sorted(table.column("sample_id").to_pylist()) == ["aac/sup-one", "asr/sup-clip000", "tts/sup-clip000"]
    assert max(table.column("n_tokens").to_pylist()) <= 250
