"""System-vs-system comparisons: per-item scores match the corpus-level scores, items are paired by id, and a
winner is named only when the paired interval excludes 0."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.eval.compare import compare_pair, compare_runs, compare_systems, comparisons_markdown, item_scores
from pipelines.eval.scoring import error_rate
from pipelines.eval.table import build_table, system_label, table_markdown

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "near", "my", "small", "green", "house"]


def _sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(n)]


def _row(item_id: str, task: str, subset: str, reference: str, **fields: object) -> dict[str, object]:
    base = {"item_id": item_id, "task": task, "subset": subset, "language": "en", "metric": "wer",
            "references_json": json.dumps([reference]), "status": "ok", "answer_text": "", "speech_transcript": "",
            "asr_error": "", "speech_verdict": "", "speech_score": None, "text_verdict": "", "text_score": None}
    return {**base, **fields}


def _asr_table(refs: list[str], hyps: list[str]) -> pa.Table:
    return pa.Table.from_pylist([_row(f"asr/{i:03d}", "asr", "test", r, answer_text=h)
                                 for i, (r, h) in enumerate(zip(refs, hyps, strict=True))])


def _qa_table(correct: list[bool]) -> pa.Table:
    return pa.Table.from_pylist([
        _row(f"qa/{i:03d}", "audio_qa", "trivia_qa", "paris", metric="accuracy",
             text_verdict="correct" if ok else "incorrect", text_score=100.0 if ok else 0.0)
        for i, ok in enumerate(correct)])


def test_item_scores_give_the_corpus_rate() -> None:
    refs = _sentences(20)
    hyps = [" ".join(r.split()[:4]) for r in refs]  # two deletions each
    scores = item_scores(_asr_table(refs, hyps))["asr/test"]
    c = compare_pair(scores, scores, bootstrap=0)
    assert c["a"] == pytest.approx(error_rate(refs, hyps).rate)
    assert c["a"] == pytest.approx(2 / 6)


def test_better_system_is_named_only_when_the_interval_excludes_zero() -> None:
    refs = _sentences(40)
    good = item_scores(_asr_table(refs, refs))["asr/test"]
    bad = item_scores(_asr_table(refs, _sentences(40, seed=1)))["asr/test"]
    assert compare_pair(good, bad, bootstrap=500)["verdict"] == "a better"
    assert compare_pair(bad, good, bootstrap=500)["verdict"] == "b better"
    same = compare_pair(bad, bad, bootstrap=500)
    assert same["verdict"] == "no difference" and same["diff"] == 0.0
    high = item_scores(_qa_table([i % 10 != 0 for i in range(50)]))["audio_qa/trivia_qa/text"]
    low = item_scores(_qa_table([i % 10 == 0 for i in range(50)]))["audio_qa/trivia_qa/text"]
    result = compare_pair(high, low, bootstrap=500)
    assert result["verdict"] == "a better"  # higher accuracy wins: the orientation follows the metric
    assert result["a"] == pytest.approx(90.0) and result["b"] == pytest.approx(10.0)
    # one item of difference in fifty is noise, not an ordering
    close = item_scores(_qa_table([i not in (1, 2) for i in range(50)]))["audio_qa/trivia_qa/text"]
    nearly = item_scores(_qa_table([i not in (1, 2, 3) for i in range(50)]))["audio_qa/trivia_qa/text"]
    assert compare_pair(close, nearly, bootstrap=500)["verdict"] == "no difference"


def test_items_are_paired_by_id_not_position() -> None:
    refs = _sentences(30)
    a = _asr_table(refs, refs)
    rows = a.to_pylist()
    random.Random(3).shuffle(rows)
    shuffled = pa.Table.from_pylist(rows[:25])  # B answered 25 of the items, in another order
    c = compare_pair(item_scores(a)["asr/test"], item_scores(shuffled)["asr/test"], bootstrap=200)
    assert c["n"] == 25 and c["diff"] == 0.0


def test_left_out_items_match_summarize() -> None:
    table = pa.Table.from_pylist([
        _row("tts/0", "tts", "test", "a b c", speech_transcript="a b c"),
        _row("tts/1", "tts", "test", "a b c", asr_error="no speech"),
        _row("tts/2", "tts", "test", "a b c", status="input_error"),
        _row("qa/0", "audio_qa", "web", "x", metric="accuracy", speech_verdict="invalid", speech_score=None,
             text_verdict="correct", text_score=100.0),
    ])
    scores = item_scores(table)
    assert scores["tts/test"].item_ids == ("tts/0",)
    assert scores["audio_qa/web/speech"].item_ids == ()
    assert scores["audio_qa/web/text"].item_ids == ("qa/0",)


def test_compare_systems_runs_the_paper_pairs_present(tmp_path) -> None:
    refs = _sentences(30)
    runs = {"TtT": _asr_table(refs, refs), "AR baseline": _asr_table(refs, _sentences(30, seed=2))}
    out = compare_systems(runs, bootstrap=300)
    assert [(c["a"], c["b"], c["set"], c["winner"]) for c in out] == [("TtT", "AR baseline", "asr/test", "TtT")]
    assert "TtT better" in comparisons_markdown(out)
    # from results.json records, as run_evaluation calls it: one run per system, read from its items dir
    results = []
    for system, table in (("ttt", runs["TtT"]), ("ar_baseline", runs["AR baseline"])):
        items = tmp_path / system / "items"
        items.mkdir(parents=True)
        pq.write_table(table, items / "part-0.parquet")
        results.append({"system": system, "run_id": system, "items_dir": str(items), "sampler": {},
                        "asr": {"test": {"rate": 0.1, "metric": "wer"}}})
    from_results = compare_runs(results, system_label, bootstrap=300)
    assert [c["winner"] for c in from_results] == ["TtT"]
    # a system evaluated under two sampler settings has no single row to compare
    assert compare_runs([*results, {**results[0], "run_id": "ttt2"}], system_label, bootstrap=300) == []
    table = build_table(results)
    table["comparisons"] = from_results
    assert "Paired comparisons" in table_markdown(table)
