"""WenetSpeech reader: time windows of long opus files, subset selection, sharding, and proof of streaming."""

from __future__ import annotations

import json
import shutil

import pytest

from pipelines.readers import get_reader
from pipelines.records import SourceConfig

Y0 = "Y0000000000_--5llN02F84"


def test_rows_from_fixture(corpora, read_all, fates, meta):
    root = corpora / "wenetspeech"
    rows = read_all("wenetspeech", root, name="ws")
    assert fates(rows) == [
        (f"ws/{Y0}_S00000", "ok"), (f"ws/{Y0}_S00001", "ok"), ("ws/X0000000001_100638174_S00000", "ok"),
        ("ws/X0000000002_missing_S00000", "error"),  # its opus file is missing
    ]
    assert [(r["audio_start"], r["audio_end"]) for r in rows] == [(0.0, 0.4), (0.4, 0.9), (0.12, 0.68), (0.0, 0.5)]
    assert [r["text"] for r in rows[:3]] == ["怎么样这些日子住得还习惯吧", "挺好的", "新闻联播"]
    assert rows[0]["audio_path"] == str(root / f"audio/train/youtube/B00000/{Y0}.opus")
    assert rows[0]["locator"] == f"{root / 'WenetSpeech.json'}#{Y0}_S00000"
    assert [r["split"] for r in rows] == ["train", "train", "train", "dev"]
    assert meta(rows[1]) == {"aid": Y0, "subsets": ["S", "M", "L"], "confidence": 0.95}
    assert rows[3]["error"].startswith("audio file missing")


def test_subset_selection_keeps_segments_in_any_selected_subset(corpora, read_all, fates):
    rows = read_all("wenetspeech", corpora / "wenetspeech", subsets=["m"])
    assert fates(rows) == [(f"wenetspeech/{Y0}_S00001", "ok"), ("wenetspeech/X0000000001_100638174_S00000", "ok")]
    with pytest.raises(ValueError, match=r"subsets \['XL'\] not found"):
        read_all("wenetspeech", corpora / "wenetspeech", subsets=["XL"])


def test_shards_partition_the_manifest(corpora, read_all):
    whole = read_all("wenetspeech", corpora / "wenetspeech")
    source = SourceConfig(kind="wenetspeech", path=str(corpora / "wenetspeech"), options={"shards": 2})
    reader = get_reader("wenetspeech")
    assert reader.units(source) == ["WenetSpeech.json#0/2", "WenetSpeech.json#1/2"]
    parts = [[r["record_id"] for r in reader.read(source, u)] for u in reader.units(source)]
    assert parts == [[f"wenetspeech/{Y0}_S00000", f"wenetspeech/{Y0}_S00001", "wenetspeech/X0000000002_missing_S00000"],
                     ["wenetspeech/X0000000001_100638174_S00000"]]
    assert sorted(parts[0] + parts[1]) == sorted(r["record_id"] for r in whole)


def test_validate_errors(corpora, tmp_path):
    reader = get_reader("wenetspeech")
    with pytest.raises(FileNotFoundError, match=r"wenetspeech source 'ws': missing .*WenetSpeech\.json"):
        reader.validate(SourceConfig(kind="wenetspeech", path=str(tmp_path), name="ws"))
    with pytest.raises(ValueError, match=r"options\.shards must be >= 1"):
        reader.validate(SourceConfig(kind="wenetspeech", path=str(corpora / "wenetspeech"), options={"shards": 0}))


def test_bad_segments_and_truncated_manifest_become_error_rows(corpora, tmp_path, read_all, fates):
    opus = corpora / "wenetspeech" / f"audio/train/youtube/B00000/{Y0}.opus"
    shutil.copy(opus, tmp_path / "a.opus")
    audios = [{"aid": "A", "path": "a.opus", "segments": [
        {"sid": "A_0", "begin_time": 0.5, "end_time": 0.2, "subsets": ["L"], "text": "反了"},
        {"sid": "A_1", "begin_time": 0.1, "end_time": 0.2, "subsets": ["L"], "text": "  "},
        "not a segment"]},
        {"aid": "B", "path": "a.opus"}]
    text = json.dumps({"audios": audios}, ensure_ascii=False)
    (tmp_path / "WenetSpeech.json").write_text(text[:-2] + ', {"aid": "C", "segm', encoding="utf-8")
    rows = read_all("wenetspeech", tmp_path)
    assert fates(rows) == [("wenetspeech/A_0", "error"), ("wenetspeech/A_1", "error"),
                           ("wenetspeech/A/seg2", "error"), ("wenetspeech/WenetSpeech.json#audio1", "error"),
                           ("wenetspeech/WenetSpeech.json#audio2", "error")]
    assert "empty or negative segment window" in rows[0]["error"]
    assert rows[1]["error"] == "segment without text"
    assert rows[3]["error"] == "audio entry is not an object with a segments list"
    assert rows[4]["error"].startswith("invalid JSON after audio entry 1")
    sharded = read_all("wenetspeech", tmp_path, options={"shards": 2})  # the parse error is reported once
    assert sorted(fates(sharded)) == sorted(fates(rows))


def test_manifest_is_streamed_not_loaded(corpora, tmp_path, counted_opens):
    """A ~3 MB manifest: the first row arrives after a small fraction of the file was read, and every read
    is a bounded chunk — the whole file is never held in memory."""
    shutil.copy(corpora / "wenetspeech" / f"audio/train/youtube/B00000/{Y0}.opus", tmp_path / "a.opus")
    n = 6000
    audios = [{"aid": f"A{i:05d}", "path": "a.opus", "duration": 1.0, "segments": [
        {"sid": f"A{i:05d}_S0", "begin_time": 0.0, "end_time": 0.5, "subsets": ["L"], "confidence": 1.0,
         "text": "这是一个用来证明流式解析的很长的句子" * 4}]} for i in range(n)]
    manifest = tmp_path / "WenetSpeech.json"
    manifest.write_text(json.dumps({"dataset": "WenetSpeech", "audios": audios}, ensure_ascii=False, indent=1),
                        encoding="utf-8")
    size = manifest.stat().st_size
    assert size > 2_500_000
    source = SourceConfig(kind="wenetspeech", path=str(tmp_path))
    rows = get_reader("wenetspeech").read(source, "WenetSpeech.json#0/1")
    assert next(rows)["record_id"] == "wenetspeech/A00000_S0"
    assert counted_opens[0].total <= 256 * 1024 < size // 10
    assert sum(1 for _ in rows) == n - 1
    f = counted_opens[0]
    assert f.total == size and max(f.sizes) <= 64 * 1024 and len(f.sizes) > 40
