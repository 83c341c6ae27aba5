"""lhotse manifest reader (plain JSON): recordings+supervisions, MonoCuts, source resolution, errors."""

from __future__ import annotations

import gzip
import json
import shutil

import pytest

from pipelines.readers import get_reader
from pipelines.records import SourceConfig


def test_rows_from_fixture(corpora, read_all, fates, meta):
    root = corpora / "lhotse"
    rows = read_all("lhotse", root, name="lh")
    assert fates(rows) == [
        ("lh/sup1", "ok"), ("lh/sup2", "ok"),
        ("lh/sup3", "error"),  # unknown recording id
        ("lh/sup4", "error"),  # url source
        ("lh/cut1/cs1", "ok"), ("lh/cut1/cs2", "ok"),
        ("lh/cut2", "drop:no_supervision"), ("lh/mix1", "error"),
    ]
    # supervision times inside a cut are relative to the cut start (0.2 s)
    assert [(r["audio_start"], r["audio_end"]) for r in rows[:6]] == [
        (0.1, 0.4), (0.0, 0.5), (0.0, 0.5), (0.0, 0.5), (0.2, 0.5), (0.5, 0.7)]
    assert rows[0]["audio_path"] == str(root / "audio/rec1.wav") and rows[1]["audio_path"].endswith("rec2.flac")
    assert [(r["text"], r["language"], r["speaker"], r["split"]) for r in rows[:2]] == [
        ("FIRST ONE", "en", "spk1", "dev"), ("SECOND ONE", "en", "spk2", "dev")]
    assert rows[4]["split"] == "test"
    assert meta(rows[0]) == {"channel": 0, "gender": "F", "recording_id": "rec1"}
    assert rows[0]["locator"] == f"{root / 'mini_supervisions_dev.jsonl.gz'}:1"
    assert rows[2]["error"] == "unknown recording 'nope'"
    assert "unsupported source type 'url'" in rows[3]["error"]
    assert "MixedCut" in rows[7]["error"]


def test_cuts_win_over_recordings_and_supervisions_of_the_same_part(corpora, tmp_path):
    shutil.copytree(corpora / "lhotse", tmp_path / "m")
    for kind in ("recordings", "supervisions"):
        shutil.copy(tmp_path / f"m/mini_{kind}_dev.jsonl.gz", tmp_path / f"m/mini_{kind}_test.jsonl.gz")
    reader = get_reader("lhotse")
    assert reader.units(SourceConfig(kind="lhotse", path=str(tmp_path / "m"))) == [
        "mini_supervisions_dev.jsonl.gz", "mini_cuts_test.jsonl.gz"]
    assert reader.units(SourceConfig(kind="lhotse", path=str(tmp_path / "m"), subsets=("test",))) == [
        "mini_cuts_test.jsonl.gz"]


def test_absolute_paths_audio_root_transforms_and_bad_lines(corpora, tmp_path, read_all, fates):
    audio = corpora / "lhotse/audio/rec1.wav"
    recs = [
        {"id": "abs", "sources": [{"type": "file", "channels": [0], "source": str(audio)}], "duration": 1.0},
        {"id": "rel", "sources": [{"type": "file", "channels": [0], "source": "rec1.wav"}], "duration": 1.0},
        {"id": "fast", "sources": [{"type": "file", "channels": [0], "source": str(audio)}], "duration": 1.0,
         "transforms": [{"name": "Speed", "kwargs": {"factor": 1.1}}]},
        {"id": "two", "sources": [{"type": "file", "channels": [0], "source": "nope.wav"},
                                  {"type": "file", "channels": [1], "source": "rec1.wav"}], "duration": 1.0},
    ]
    sups = [{"id": f"s-{r['id']}", "recording_id": r["id"], "start": 0.25, "duration": 0.5, "channel": 1,
             "text": "x", "language": "zh"} for r in recs]
    (tmp_path / "x_recordings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    with gzip.open(tmp_path / "x_supervisions.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(s) + "\n" for s in sups))
        f.write('{"id": "broken"\n')
        f.write(json.dumps({"id": "neg", "recording_id": "abs", "start": 0.1, "duration": -1, "text": "y"}) + "\n")
    rows = read_all("lhotse", tmp_path, options={"audio_root": str(audio.parent)})
    assert fates(rows) == [("lhotse/s-abs", "ok"), ("lhotse/s-rel", "ok"), ("lhotse/s-fast", "error"),
                           ("lhotse/s-two", "ok"), ("lhotse/x_supervisions.jsonl.gz:5", "error"),
                           ("lhotse/neg", "error")]
    assert rows[1]["audio_path"] == rows[3]["audio_path"] == str(audio)  # channel 1 picks the second source
    assert "time-changing transforms ['Speed']" in rows[2]["error"]
    assert rows[4]["error"].startswith("invalid JSON") and "bad supervision times" in rows[5]["error"]
    assert {r["language"] for r in rows[:4]} == {"zh"} and rows[0]["split"] == ""


def test_validate_errors(corpora, tmp_path):
    reader = get_reader("lhotse")
    (tmp_path / "only_recordings_x.jsonl.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="lhotse source 'lhotse': no usable manifests"):
        reader.validate(SourceConfig(kind="lhotse", path=str(tmp_path)))
    with pytest.raises(ValueError, match=r"matching \['train'\]"):
        reader.validate(SourceConfig(kind="lhotse", path=str(corpora / "lhotse"), subsets=("train",)))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        reader.validate(SourceConfig(kind="lhotse", path=str(tmp_path / "none")))
