"""Judges: the rule-based alias matcher, output parsers, and the LLM judge over real HTTP against a scripted
OpenAI-compatible server process (tests/pipelines/eval/fake_openai_server.py)."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from pipelines.eval.judges import (
    Judgment,
    LlmJudge,
    QaItem,
    RuleJudge,
    aggregate,
    build_judge,
    judgment_from_output,
    parse_json_judgment,
    parse_rating,
    parse_verdict,
)
from pipelines.eval.llm_client import ChatClient, ClientConfig, backoff_delay

ROOT = Path(__file__).resolve().parents[3]


def qa(answer: str, refs: list[str], subset: str = "trivia_qa", metric: str = "accuracy",
       language: str = "en") -> QaItem:
    return QaItem(subset, "What is it?", answer, tuple(refs), metric, language)


# ---------------------------------------------------------------------------------------------- rule judge

@pytest.mark.parametrize(("answer", "refs", "verdict"), [
    ("The answer is twenty-five.", ["25"], "correct"),  # spelled-out number vs digits
    ("It costs 25 dollars", ["twenty five"], "correct"),
    ("I think it was the Beatles.", ["The Beatles"], "correct"),  # articles and case
    ("Paris, of course!", ["London", "Paris, France", "paris"], "correct"),  # any alias
    ("I know it", ["no"], "incorrect"),  # whole words only
    ("The colour is red", ["color"], "correct"),  # British spelling
    ("It grows about 3.5 percent a year", ["3.5%"], "correct"),
    ("Nobody knows.", ["Mount Everest"], "incorrect"),
    ("", ["anything"], "incorrect"),
])
def test_rule_judge_alias_containment(answer: str, refs: list[str], verdict: str) -> None:
    j = RuleJudge().judge(qa(answer, refs))
    assert j.verdict == verdict
    assert j.score == (100.0 if verdict == "correct" else 0.0)


def test_rule_judge_chinese_and_open_ended() -> None:
    assert RuleJudge().judge(qa("答案是北京。", ["北京"], language="zh")).verdict == "correct"
    assert RuleJudge().judge(qa("答案是上海。", ["北京"], language="zh")).verdict == "incorrect"
    unsupported = RuleJudge().judge(qa("A long essay.", ["ref"], subset="alpaca_eval", metric="score"))
    assert unsupported.verdict == "unsupported" and unsupported.score is None


# ------------------------------------------------------------------------------------------------- parsers

def test_parsers() -> None:
    assert parse_verdict("Quoting 'the score is [Correct]' is wrong here, so the score is [Incorrect]") == "incorrect"
    assert parse_verdict("The Score Is [correct]") == "correct"
    assert parse_verdict("Correct!") is None
    assert parse_json_judgment('```json\n{"analysis": "uses {braces}", "judgment": "Correct"}\n```') == "correct"
    assert parse_json_judgment("{'analysis': 'single quotes', 'judgment': 'incorrect',}") == "incorrect"
    assert parse_json_judgment('{"judgment": "maybe"}') is None
    assert parse_rating("Rating: [[11]] then [[7]]") == 7.0
    assert parse_rating("Rating: 7") is None
    rated = judgment_from_output("Fine. Rating: [[8]]", "rating", "llm:x")
    assert (rated.verdict, rated.score) == ("rated", 80.0)
    assert judgment_from_output("no idea", "json", "llm:x").verdict == "invalid"


def test_aggregate_scores_valid_judgments_only() -> None:
    judgments = [Judgment("correct", 100.0, "j"), Judgment("incorrect", 0.0, "j"), Judgment("correct", 100.0, "j"),
                 Judgment("invalid", None, "j"), Judgment("error", None, "j")]
    summary = aggregate(judgments)
    assert summary["score"] == pytest.approx(200 / 3)
    assert (summary["n"], summary["n_valid"], summary["n_invalid"], summary["n_error"]) == (5, 3, 1, 1)
    assert aggregate([Judgment("invalid", None, "j")])["score"] is None


def test_backoff_delay_bounds() -> None:
    rng = random.Random(0)
    delays = [backoff_delay(a, 0.5, 4.0, rng) for a in range(8) for _ in range(50)]
    assert all(0.0 <= d <= 4.0 for d in delays)
    assert max(backoff_delay(0, 0.5, 4.0, rng) for _ in range(200)) <= 0.5  # first retry: within base
    assert backoff_delay(0, 0.5, 4.0, rng, retry_after_s=2.0) >= 2.0  # the server's Retry-After wins
    assert backoff_delay(0, 0.5, 4.0, rng, retry_after_s=3600.0) == 4.0  # but never beyond the cap


# ------------------------------------------------------------------------------------ LLM judge over HTTP

@pytest.fixture(scope="module")
def server_url():
    proc = subprocess.Popen([sys.executable, "-m", "tests.pipelines.eval.fake_openai_server", "--idle-timeout", "60"],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout=30)
    assert line and line[0].startswith("PORT "), f"fake server did not start: {line}"
    yield f"http://127.0.0.1:{int(line[0].split()[1])}"
    proc.terminate()
    proc.wait(timeout=10)


def make_judge(url: str, **client: object) -> LlmJudge:
    cfg = {"base_url": f"{url}/v1", "model": "judge-model", "timeout_s": 5.0, "max_retries": 3,
           "backoff_base_s": 0.05, "backoff_max_s": 1.0, **client}
    return LlmJudge(ChatClient(ClientConfig.from_mapping(cfg), rng=random.Random(0)), concurrency=4)


def script(case: str, **spec: object) -> str:
    """An answer carrying the server script; `case` keeps attempt counters apart between tests."""
    return f"<fake>{json.dumps({'case': case, **spec}, sort_keys=True)}</fake>"


def server_log(url: str, case: str) -> list[dict]:
    entries = requests.get(f"{url}/log", timeout=5).json()["requests"]
    return [r for r in entries if json.loads(r["script"])["case"] == case]


def test_llm_judge_success_per_subset_template(server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTT_JUDGE_API_KEY", "sk-test-secret")
    judge = make_judge(server_url)
    items = [
        qa(script("ok-llama", reply="Matches the standard answer, the score is [Correct]"), ["Paris"],
           subset="llama_questions"),
        qa(script("ok-trivia", reply='{"analysis": "different city", "judgment": "incorrect"}'), ["Paris"]),
        qa(script("ok-alpaca", reply="Helpful and clear. Rating: [[7]]"), ["ref"], subset="alpaca_eval",
           metric="score"),
    ]
    got = judge.judge_many(items)
    assert [(j.verdict, j.score) for j in got] == [("correct", 100.0), ("incorrect", 0.0), ("rated", 70.0)]
    assert all(j.judge == "llm:judge-model" for j in got)
    for case in ("ok-llama", "ok-trivia", "ok-alpaca"):
        (entry,) = server_log(server_url, case)
        assert entry["temperature"] == 0.0 and entry["model"] == "judge-model" and entry["authorized"]
    assert "sk-test-secret" not in repr(judge.client)


def test_llm_judge_prompts_carry_question_references_and_answer(server_url: str) -> None:
    judge = make_judge(server_url)
    text, parser = judge.prompt(QaItem("web_questions", "Who wrote Hamlet?", "Shakespeare {x}", ("a, b", "c")))
    assert parser == "json"
    assert "Who wrote Hamlet?" in text and "Shakespeare {x}" in text and "- a, b\n- c" in text
    assert judge.prompt(QaItem("my_open_set", "q", "a", ("r",), metric="score"))[1] == "rating"


def test_llm_judge_retries_server_errors(server_url: str) -> None:
    judge = make_judge(server_url)
    (j,) = judge.judge_many([qa(script("500-once", fail=[500], reply="the score is [Correct]"), ["x"],
                                subset="llama_questions")])
    assert j.verdict == "correct"
    assert [e["attempt"] for e in server_log(server_url, "500-once")] == [0, 1]


def test_llm_judge_backs_off_on_429(server_url: str) -> None:
    judge = make_judge(server_url)
    (j,) = judge.judge_many([qa(script("429-twice", fail=[429, 429], retry_after=0.3,
                                       reply='{"judgment": "correct"}'), ["x"])])
    assert j.verdict == "correct"
    times = [e["time"] for e in server_log(server_url, "429-twice")]
    assert len(times) == 3
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.29  # Retry-After honoured


def test_llm_judge_unparsable_output_is_invalid(server_url: str) -> None:
    judge = make_judge(server_url)
    (j,) = judge.judge_many([qa(script("garbage", reply="I would rather not say."), ["x"])])
    assert j.verdict == "invalid" and j.score is None and j.raw == "I would rather not say."


def test_llm_judge_retries_timeouts_then_gives_up(server_url: str) -> None:
    judge = make_judge(server_url, timeout_s=0.4, max_retries=1)
    ok, lost = judge.judge_many([
        qa(script("slow-once", sleep=[1.5], reply="the score is [Correct]"), ["x"], subset="llama_questions"),
        qa(script("slow-always", sleep=[1.5, 1.5], reply="the score is [Correct]"), ["x"], subset="llama_questions"),
    ])
    assert ok.verdict == "correct"
    assert lost.verdict == "error" and "gave up after 2 attempts" in lost.error and "Timeout" in lost.error


def test_llm_judge_does_not_retry_client_errors(server_url: str) -> None:
    judge = make_judge(server_url)
    (j,) = judge.judge_many([qa(script("400", fail=[400], reply="unused"), ["x"])])
    assert j.verdict == "error" and "HTTP 400" in j.error
    assert len(server_log(server_url, "400")) == 1


def test_llm_judge_many_keeps_order_under_concurrency(server_url: str) -> None:
    judge = make_judge(server_url)
    items = [qa(script(f"order-{i}", sleep=[0.05 * (8 - i)], reply=f"Rating: [[{i + 1}]]"), ["r"],
                subset="alpaca_eval", metric="score") for i in range(8)]
    start = time.monotonic()
    scores = [j.score for j in judge.judge_many(items)]
    assert scores == [10.0 * (i + 1) for i in range(8)]
    assert time.monotonic() - start < 0.05 * sum(range(1, 9))  # calls overlapped


def test_build_judge_from_config(server_url: str) -> None:
    assert isinstance(build_judge({"kind": "rule"}), RuleJudge)
    judge = build_judge({"kind": "llm", "concurrency": 2, "client": {"base_url": server_url, "model": "m"},
                         "templates": {"llama_questions": {"template": "Q {question} A {prediction}",
                                                           "parser": "rating"}}})
    assert judge.prompt(qa("ans", ["r"], subset="llama_questions")) == ("Q What is it? A ans", "rating")
    with pytest.raises(ValueError, match="base_url"):
        build_judge({"kind": "llm", "client": {"model": "m"}})
    with pytest.raises(ValueError, match="unknown kind"):
        build_judge({"kind": "oracle"})
