"""ShareGPT / OpenHermes reader: role mapping, tolerated nulls, malformed conversations, streamed arrays."""

from __future__ import annotations

import json

import pytest

from pipelines.readers import get_reader
from pipelines.readers.sharegpt import to_messages
from pipelines.records import SourceConfig


def test_rows_from_fixture(corpora, read_all, fates, meta):
    root = corpora / "sharegpt"
    rows = read_all("sharegpt", root, name="sg")
    assert fates(rows) == [
        ("sg/openhermes/0", "ok"),  # id null -> positional id
        ("sg/abc-1", "ok"),
        ("sg/openhermes/2", "error"),  # conversations null
        ("sg/openhermes/3", "error"),  # unknown speaker
        ("sg/openhermes/4", "error"),  # no assistant turn
        ("sg/sg1", "ok"),
        ("sg/sharegpt/1", "error"),  # broken JSONL line
        ("sg/sharegpt/2", "ok"),  # role/content turns
    ]
    assert json.loads(rows[0]["messages_json"]) == [  # the empty system prompt is skipped
        {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 = 4."}]
    assert meta(rows[0]) == {"index": 0, "source": "airoboros2.2", "category": "orca",
                             "skip_prompt_formatting": False}
    assert meta(rows[1]) == {"index": 1, "weights": [None, 1.0]}
    assert [m["role"] for m in json.loads(rows[5]["messages_json"])] == ["user", "assistant"] * 2
    assert {r["task"] for r in rows} == {"text_chat"} and {r["text"] for r in rows} == {""}
    assert rows[2]["error"] == "sample 2: missing or empty 'conversations' list"
    assert rows[2]["locator"] == f"{root / 'openhermes.json'}#2"
    assert rows[6]["locator"] == f"{root / 'sharegpt.jsonl'}:2" and "invalid JSON" in rows[6]["error"]


def test_audio_chat_task_from_config_and_single_file_path(corpora, read_all, fates):
    rows = read_all("sharegpt", corpora / "sharegpt/sharegpt.jsonl", task="audio_chat")
    assert fates(rows) == [("sharegpt/sg1", "ok"), ("sharegpt/sharegpt/1", "error"), ("sharegpt/sharegpt/2", "ok")]
    assert {r["task"] for r in rows} == {"audio_chat"}


def test_to_messages_problems():
    assert to_messages([{"from": "USER", "value": "a"}, {"from": "chatgpt", "value": "b"}]) == [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(ValueError, match=r"turn 1 \(assistant\): empty or non-string content"):
        to_messages([{"from": "human", "value": "a"}, {"from": "gpt", "value": None}])
    with pytest.raises(ValueError, match="turn 0 is not an object"):
        to_messages(["hi"])


def test_truncated_array_reports_where_it_broke(tmp_path, read_all, fates):
    good = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    (tmp_path / "cut.json").write_text("[" + json.dumps(good) + ", " + json.dumps(good)[:20])
    rows = read_all("sharegpt", tmp_path)
    assert fates(rows) == [("sharegpt/cut/0", "ok"), ("sharegpt/cut/1", "error")]
    assert rows[1]["error"].startswith("sample 1: invalid JSON")


def test_json_array_is_streamed(tmp_path, counted_opens):
    conv = {"conversations": [{"from": "human", "value": "question " * 20}, {"from": "gpt", "value": "answer " * 40}],
            "source": None}
    (tmp_path / "big.json").write_text(json.dumps([conv] * 3000))
    size = (tmp_path / "big.json").stat().st_size
    source = SourceConfig(kind="sharegpt", path=str(tmp_path))
    rows = get_reader("sharegpt").read(source, "big.json")
    assert next(rows)["record_id"] == "sharegpt/big/0"
    assert sum(f.total for f in counted_opens) <= 256 * 1024 < size // 5


def test_validate_errors(tmp_path):
    with pytest.raises(ValueError, match=r"no \.json/\.jsonl files"):
        get_reader("sharegpt").validate(SourceConfig(kind="sharegpt", path=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_reader("sharegpt").validate(SourceConfig(kind="sharegpt", path=str(tmp_path / "x.json")))
