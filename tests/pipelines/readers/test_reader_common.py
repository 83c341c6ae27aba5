"""Helpers shared by the readers: name mapping, JSON record streaming, row building."""

from __future__ import annotations

import pytest

from pipelines.readers.common import (
    RowMaker,
    iter_json_records,
    language_code,
    manifest_split,
    scalar_meta,
    segment_window,
    split_first,
    split_of,
    subset_key,
)
from pipelines.records import SourceConfig


@pytest.mark.parametrize(("tag", "code"), [
    ("en_us", "en"), ("zh-CN", "zh"), ("cmn_hans_cn", "zh"), ("English", "en"), ("Mandarin", "zh"),
    ("yue_hant_hk", "yue"), ("fr", "fr"), ("", ""), (None, ""),
])
def test_language_code(tag, code):
    assert language_code(tag) == code


def test_split_and_subset_names():
    assert [split_of(n) for n in ("train-clean-100", "dev-other", "test_clean", "validation", "other")] == [
        "train", "dev", "test", "dev", "other"]
    assert [subset_key(s) for s in ("{XL}", "xl", " M ")] == ["XL", "XL", "M"]
    assert [manifest_split(k) for k in (["L", "M"], ["DEV"], ["TEST_NET"], [])] == ["train", "dev", "test", "train"]


def test_segment_window():
    assert segment_window({"begin_time": 1, "end_time": 2.5}) == (1.0, 2.5)
    with pytest.raises(ValueError, match="missing or not numbers"):
        segment_window({"begin_time": "1", "end_time": 2})
    with pytest.raises(ValueError, match="empty or negative"):
        segment_window({"begin_time": 2, "end_time": 2})


def test_json_records_of_each_file_shape(tmp_path):
    (tmp_path / "empty.json").write_text("  \n")
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf[1, 2]")
    (tmp_path / "concat.json").write_text('{"a": 1}\n{"a": 2}\n')
    (tmp_path / "scalar.json").write_text('"just a string"')
    assert list(iter_json_records(tmp_path / "empty.json")) == []
    assert [r.value for r in iter_json_records(tmp_path / "bom.json")] == [1, 2]
    concat = list(iter_json_records(tmp_path / "concat.json"))
    assert [(r.index, r.value, r.locator.endswith(f"#{r.index}")) for r in concat] == [(0, {"a": 1}, True),
                                                                                          (1, {"a": 2}, True)]
    (bad,) = iter_json_records(tmp_path / "scalar.json")
    assert "not a JSON array or object" in bad.error


def test_row_maker_prefixes_ids_and_applies_overrides():
    rows = RowMaker(SourceConfig(kind="k", path="/x", name="src"), "k", "asr")
    row = rows.row("u1", "/x:1", task="tts", language="zh", text="t")
    assert (row["record_id"], row["source"], row["kind"], row["task"], row["language"]) == (
        "src/u1", "src", "k", "tts", "zh")
    forced = RowMaker(SourceConfig(kind="k", path="/x", task="audio_chat", language="en"), "k", "asr")
    assert (forced.row("u", "l", task="tts", language="zh")["task"], forced.drop("u", "l", "why")["language"]) == (
        "audio_chat", "en")
    assert forced.error("u", "l", "bad")["error"] == "bad" and forced.drop("u", "l", "why")["drop_reason"] == "why"


def test_small_helpers():
    assert split_first("id  some text here \n") == ("id", "some text here")
    assert split_first("lonely") == ("lonely", "")
    assert scalar_meta({"a": 1, "b": None, "c": "", "d": [1], "e": "x", "skip": 2}, skip=("skip",)) == {
        "a": 1, "e": "x"}
