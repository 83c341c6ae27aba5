"""Reference TtT format reader: samples pass through unchanged, structure checked, task guessed."""

from __future__ import annotations

import json

import pytest

from pipelines.readers import get_reader
from pipelines.readers.ttt_json import check_messages
from pipelines.records import SourceConfig


def test_rows_from_fixture(corpora, read_all, fates):
    root = corpora / "ttt_json"
    rows = read_all("ttt_json", root, name="t")
    assert fates(rows) == [
        ("t/doc-1", "ok"),  # more/array.json (a JSON array)
        ("t/samples/0", "ok"), ("t/tc-1", "ok"), ("t/samples/2", "ok"),
        ("t/samples/3", "error"), ("t/samples/4", "error"), ("t/samples/5", "error"),
    ]
    assert [r["task"] for r in rows[:4]] == ["interleaved", "audio_chat", "text_chat", "interleaved"]
    source_lines = (root / "samples.jsonl").read_text().splitlines()
    assert json.loads(rows[1]["messages_json"]) == json.loads(source_lines[0])["messages"]  # unchanged
    assert rows[3]["text"] == json.loads(source_lines[2])["text"]
    assert rows[0]["locator"] == f"{root / 'more/array.json'}#0" and rows[1]["locator"] == f"{root / 'samples.jsonl'}:1"
    assert "role 'bot'" in rows[4]["error"]
    assert rows[5]["error"] == "sample 4: neither 'messages' nor 'text'"
    assert rows[6]["error"] == "sample 5: both 'messages' and 'text'"


def test_configured_task_overrides_the_guess(corpora, read_all):
    rows = read_all("ttt_json", corpora / "ttt_json/samples.jsonl", task="asr")
    assert {r["task"] for r in rows} == {"asr"}


def test_single_object_file(tmp_path, read_all, fates):
    (tmp_path / "one.json").write_text(json.dumps({"messages": [{"role": "user", "content": "a"},
                                                                {"role": "assistant", "content": "b"}]}, indent=2))
    assert fates(read_all("ttt_json", tmp_path)) == [("ttt_json/one/0", "ok")]


def test_check_messages():
    with pytest.raises(ValueError, match="non-empty list"):
        check_messages([])
    with pytest.raises(ValueError, match="content must be a string"):
        check_messages([{"role": "user", "content": ["a"]}])
    with pytest.raises(ValueError, match="no assistant message"):
        check_messages([{"role": "user", "content": "a"}])


def test_validate_errors(tmp_path):
    with pytest.raises(ValueError, match=r"ttt_json source 'mine': no \.json/\.jsonl files"):
        get_reader("ttt_json").validate(SourceConfig(kind="ttt_json", path=str(tmp_path), name="mine"))
