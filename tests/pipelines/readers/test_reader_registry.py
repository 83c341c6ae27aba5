"""Properties every reader must have, checked on every committed corpus fixture."""

from __future__ import annotations

import pickle

import pytest

from pipelines.readers import READERS, get_reader
from pipelines.records import SourceConfig
from tokenization.audio import load_audio

KINDS = {"librispeech", "commonvoice", "aishell1", "aishell2", "wenetspeech", "gigaspeech", "fleurs", "hf_parquet",
         "lhotse", "sharegpt", "ttt_json", "spoken_qa"}

# (kind, path under tests/fixtures/corpora) for every fixture corpus
FIXTURES = [
    ("librispeech", "librispeech/LibriSpeech"),
    ("commonvoice", "commonvoice/cv-corpus-5.1-2020-06-22/en"),
    ("commonvoice", "commonvoice/cv-corpus-17.0-2024-03-15/zh-CN"),
    ("aishell1", "aishell1/data_aishell"),
    ("aishell2", "aishell2/iOS/data"),
    ("wenetspeech", "wenetspeech"),
    ("gigaspeech", "gigaspeech"),
    ("fleurs", "fleurs"),
    ("hf_parquet", "hf_parquet"),
    ("lhotse", "lhotse"),
    ("sharegpt", "sharegpt"),
    ("ttt_json", "ttt_json"),
    ("spoken_qa", "spoken_qa"),
]


def test_registry_has_every_kind_and_readers_name_themselves():
    assert set(READERS) == KINDS
    assert all(r.kind == k and r.default_task for k, r in READERS.items())


def test_unknown_kind_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown corpus kind 'librispeach'") as e:
        get_reader("librispeach")
    assert all(k in str(e.value) for k in KINDS)


def test_readers_pickle_for_ray_tasks():
    again = pickle.loads(pickle.dumps(READERS))
    assert {k: type(v) for k, v in again.items()} == {k: type(v) for k, v in READERS.items()}


@pytest.mark.parametrize(("kind", "rel"), FIXTURES, ids=[f"{k}:{p}" for k, p in FIXTURES])
def test_fixture_rows_are_deterministic_unique_and_located(kind, rel, corpora, read_all):
    first = read_all(kind, corpora / rel, name="src")
    assert first == read_all(kind, corpora / rel, name="src")
    ids = [r["record_id"] for r in first]
    assert len(ids) == len(set(ids)), "record ids must be unique within a source"
    assert all(i.startswith("src/") for i in ids)
    assert all(r["locator"] and r["kind"] == kind and r["source"] == "src" for r in first)
    assert any(not r["error"] and not r["drop_reason"] for r in first)


@pytest.mark.parametrize(("kind", "rel"), [f for f in FIXTURES if f[0] not in ("sharegpt", "ttt_json")],
                         ids=[f"{k}:{p}" for k, p in FIXTURES if k not in ("sharegpt", "ttt_json")])
def test_usable_rows_point_at_decodable_audio_windows(kind, rel, corpora, read_all):
    """What the job will do next: decode every usable row's audio (path or bytes, with its window)."""
    for row in read_all(kind, corpora / rel):
        if row["error"] or row["drop_reason"]:
            continue
        audio = row["audio_bytes"] if row["audio_bytes"] is not None else row["audio_path"]
        assert audio, row["record_id"]
        wav, sr, _ = load_audio(audio, 16000, row["audio_start"], row["audio_end"])
        if row["audio_end"] is not None:
            assert len(wav) == pytest.approx((row["audio_end"] - row["audio_start"]) * sr, abs=2)
        else:
            assert len(wav) > 0.2 * sr


def test_configured_task_and_language_override_the_reader(corpora, read_all):
    rows = read_all("librispeech", corpora / "librispeech/LibriSpeech", task="tts", language="en-GB")
    assert {(r["task"], r["language"]) for r in rows} == {("tts", "en-GB")}


def test_source_name_defaults_to_the_kind(corpora):
    source = SourceConfig(kind="aishell2", path=str(corpora / "aishell2/iOS/data"))
    reader = get_reader("aishell2")
    rows = list(reader.read(source, reader.units(source)[0]))
    assert rows[0]["record_id"] == "aishell2/IC0001W0001" and rows[0]["source"] == "aishell2"
