"""OpenAudioBench-layout spoken QA reader: per-subset columns, answer lists, audio in audios/ or flat."""

from __future__ import annotations

import pytest

from pipelines.readers import get_reader
from pipelines.readers.spoken_qa import parse_answers
from pipelines.records import SourceConfig


def test_rows_from_fixture(corpora, read_all, fates, meta):
    ev = corpora / "spoken_qa/eval_datas"
    rows = read_all("spoken_qa", corpora / "spoken_qa", name="qa")
    assert fates(rows) == [
        ("qa/alpaca_eval/0", "ok"),
        ("qa/llama_questions/0", "ok"), ("qa/llama_questions/1", "error"),  # audio missing
        ("qa/trivia_qa/0", "ok"),
        ("qa/web_questions/0", "ok"), ("qa/web_questions/1", "error"),  # unparsable answer list
    ]
    assert [r["text"] for r in rows] == [
        "Give me a tip for sleeping well.", "What is the capital of France?", "Who wrote Hamlet?",
        "Which planet is called\nthe red planet?", "what is the largest ocean?", "what is broken?"]
    assert [meta(r) for r in (rows[0], rows[1], rows[3], rows[4])] == [
        {"subset": "alpaca_eval", "answers": ['Keep a regular schedule, and avoid "screens" before bed.'],
         "metric": "score"},
        {"subset": "llama_questions", "answers": ["Paris"], "metric": "accuracy"},
        {"subset": "trivia_qa", "answers": ["mars", "red planet"], "metric": "accuracy"},
        {"subset": "web_questions", "answers": ["Pacific Ocean", "the Pacific"], "metric": "accuracy"},
    ]
    assert rows[1]["audio_path"] == str(ev / "llama_questions/audios/0.wav")
    assert rows[4]["audio_path"] == str(ev / "web_questions/wq_0.wav")  # flat layout
    assert {(r["task"], r["language"], r["split"]) for r in rows} == {("spoken_qa", "en", "test")}
    assert [r["locator"].rsplit(":", 1)[1] for r in rows] == ["2", "2", "3", "2", "2", "3"]


def test_subset_selection_and_extra_subset_mapping(corpora, tmp_path, read_all, fates, meta):
    assert fates(read_all("spoken_qa", corpora / "spoken_qa/eval_datas", subsets=["trivia_qa"])) == [
        ("spoken_qa/trivia_qa/0", "ok")]
    sub = tmp_path / "eval_datas/reasoning_qa"
    (sub / "audios").mkdir(parents=True)
    (sub / "audios/r0.wav").write_bytes((corpora / "spoken_qa/eval_datas/trivia_qa/audios/tq_0.wav").read_bytes())
    (sub / "reasoning_qa.csv").write_text("Prompt,gt,audio_filename\nWhy?,Because,r0.wav\n")
    with pytest.raises(ValueError, match=r"no column mapping for subsets \['reasoning_qa'\]"):
        read_all("spoken_qa", tmp_path, subsets=["reasoning_qa"])
    rows = read_all("spoken_qa", tmp_path, options={
        "columns": {"reasoning_qa": {"question": "Prompt", "answer": "gt", "metric": "score"}}})
    assert [(r["text"], meta(r)) for r in rows] == [
        ("Why?", {"subset": "reasoning_qa", "answers": ["Because"], "metric": "score"})]


def test_parse_answers():
    assert parse_answers("['a', \"b's\", '']") == ["a", "b's"]
    assert parse_answers(" plain ") == ["plain"]
    assert parse_answers("") == []
    with pytest.raises(ValueError, match="does not parse"):
        parse_answers("[__import__('os')]")
    with pytest.raises(ValueError, match="does not parse"):
        parse_answers("[1][0]")


def test_validate_errors(corpora, tmp_path):
    reader = get_reader("spoken_qa")
    with pytest.raises(ValueError, match=r"subsets \['nope'\] not found"):
        reader.validate(SourceConfig(kind="spoken_qa", path=str(corpora / "spoken_qa"), subsets=("nope",)))
    with pytest.raises(ValueError, match="no known subset"):
        reader.validate(SourceConfig(kind="spoken_qa", path=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match=r"spoken_qa source 'spoken_qa': .* does not exist"):
        reader.validate(SourceConfig(kind="spoken_qa", path=str(tmp_path / "nope")))
