"""Judges of Audio-QA answers: a rule-based alias matcher and an LLM judge: docs/corpora.md (Audio-QA eval sets).

Both turn (subset, question, answer text, reference answers) into a `Judgment`. Verdicts:
    correct / incorrect  accuracy subsets (llama_questions, web_questions, trivia_qa): score 100 / 0
    rated                open-ended subsets (alpaca_eval): the judge's 1-10 rating x 10
    invalid              the judge answered, but not in the required format (kept apart, as in the
                         OpenAudioBench protocol, never silently counted as wrong)
    unsupported          the rule judge cannot rate open-ended answers
    error                the judge could not be reached (retries exhausted)
A subset's score is the mean over valid (correct/incorrect/rated) judgments; `aggregate` reports the
invalid/unsupported/error counts next to it.

LLM judge prompts follow the output contracts of the Kimi-Audio-Evalkit / Baichuan templates per subset
("the score is [Correct]/[Incorrect]", a JSON `judgment`, "[[rating]]"), in our own wording; any subset's
template can be replaced from config (`templates: {subset: {template, parser}}`) to reproduce another
protocol exactly. Calls use temperature 0.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from pipelines.eval.llm_client import ChatClient, ClientConfig, LlmRequestError
from pipelines.eval.scoring import CHAR_LANGUAGES, normalize_chars, normalize_english

VALID = frozenset({"correct", "incorrect", "rated"})
VERDICTS = ("correct", "incorrect", "rated", "invalid", "unsupported", "error")


@dataclass(frozen=True)
class Judgment:
    """One judged answer; `raw` is the judge's own output (LLM text, or the alias the rule judge matched)."""

    verdict: str
    score: float | None
    judge: str
    raw: str = ""
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QaItem:
    """What a judge needs about one answered question."""

    subset: str
    question: str
    answer: str
    references: tuple[str, ...]
    metric: str = "accuracy"  # accuracy | score
    language: str = "en"


class Judge(Protocol):
    name: str

    def judge_many(self, items: Sequence[QaItem]) -> list[Judgment]:
        ...


# ---------------------------------------------------------------------------------------------- rule judge

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NON_WORD = re.compile(r"[^0-9a-z.\s]|(?<![0-9])\.|\.(?![0-9])")  # keep decimal points only


def normalize_for_matching(text: str, language: str = "en") -> str:
    """English: Whisper's normaliser (numbers spelled out become digits, contractions expanded, British
    spellings unified), then articles and every symbol but decimal points dropped (so "$25" matches "25").
    Scripts without word delimiters: CER-style characters (NFKC, no punctuation, no spaces)."""
    if language.lower().split("-")[0] in CHAR_LANGUAGES:
        return normalize_chars(text)
    s = normalize_english(unicodedata.normalize("NFKC", text))
    s = _NON_WORD.sub(" ", s)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _contains(answer: str, alias: str, by_char: bool) -> bool:
    """Whole-word containment (spaces around both), so "no" does not match inside "know"; characters for
    undelimited scripts."""
    return alias in answer if by_char else f" {alias} " in f" {answer} "


class RuleJudge:
    """The cheap non-LLM fallback (after VITA-Audio): an answer is correct when it contains any reference alias
    after normalisation. Deterministic, offline; cannot rate open-ended answers."""

    name = "rule"

    def judge(self, item: QaItem) -> Judgment:
        if item.metric != "accuracy":
            return Judgment("unsupported", None, self.name, error="the rule judge cannot rate open-ended answers")
        by_char = item.language.lower().split("-")[0] in CHAR_LANGUAGES
        answer = normalize_for_matching(item.answer, item.language)
        for alias in item.references:
            norm = normalize_for_matching(alias, item.language)
            if norm and _contains(answer, norm, by_char):
                return Judgment("correct", 100.0, self.name, raw=alias)
        return Judgment("incorrect", 0.0, self.name)

    def judge_many(self, items: Sequence[QaItem]) -> list[Judgment]:
        return [self.judge(i) for i in items]


# ----------------------------------------------------------------------------------------------- LLM judge

VERDICT_TEMPLATE = """You grade answers to factual questions against a standard answer.
Decide whether the model's answer is correct: it is correct when it states the standard answer or something
equivalent to it; it is incorrect when it is wrong, missing or irrelevant. Do not require an exact wording:
numbers may be written in digits or words, names may be in any language, punctuation does not matter. Judge
the core meaning only.

First give your reasoning in one or two sentences, then end with exactly one of these phrases:
"the score is [Correct]" or "the score is [Incorrect]".

## Question
{question}
## Standard answer
{references}
## Model's answer
{prediction}
"""

JSON_TEMPLATE = """You will see a question, its reference answers, and an answer to be judged. Decide whether the
answer to be judged is correct. It is correct when it expresses or contains the meaning of at least one of the
reference answers; its format and tone do not matter.

Reply with a JSON object only, with a one-sentence analysis first and then your judgment:
{{"analysis": "<one sentence>", "judgment": "correct" or "incorrect"}}

# Question
{question}
# Reference answers
{references}
# Answer to be judged
{prediction}
"""

RATING_TEMPLATE = """Act as an impartial judge of the response an AI assistant gave to the user's request below.
Consider helpfulness, relevance, accuracy, depth, creativity and level of detail. Start with a short
explanation, as objective as possible. Then rate the response from 1 to 10, written strictly in this format:
"[[rating]]", for example "Rating: [[6]]".

[Question]
{question}

[The Start of Assistant's Answer]
{prediction}
[The End of Assistant's Answer]
"""

PARSERS = ("verdict", "json", "rating")
DEFAULT_TEMPLATES: dict[str, tuple[str, str]] = {
    "llama_questions": (VERDICT_TEMPLATE, "verdict"),
    "web_questions": (JSON_TEMPLATE, "json"),
    "trivia_qa": (JSON_TEMPLATE, "json"),
    "alpaca_eval": (RATING_TEMPLATE, "rating"),
}

_VERDICT = re.compile(r"the score is \[(correct|incorrect)\]", re.IGNORECASE)
_JUDGMENT_FIELD = re.compile(r"[\"']judgment[\"']\s*:\s*[\"'](correct|incorrect)[\"']", re.IGNORECASE)
_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")


def parse_verdict(text: str) -> str | None:
    """The last "the score is [Correct|Incorrect]" in the text (reasoning may quote the phrase first)."""
    found = _VERDICT.findall(text)
    return found[-1].lower() if found else None


def parse_json_judgment(text: str) -> str | None:
    """`judgment` of the first JSON object that has one (code fences and prose around it tolerated); a
    regex over the field when the object is not strict JSON (single quotes, trailing commas)."""
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            obj, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        value = obj.get("judgment") if isinstance(obj, dict) else None
        if isinstance(value, str) and value.strip().lower() in ("correct", "incorrect"):
            return value.strip().lower()
    m = _JUDGMENT_FIELD.search(text)
    return m.group(1).lower() if m else None


def parse_rating(text: str) -> float | None:
    """The first [[r]] with 1 <= r <= 10."""
    for value in (float(v) for v in _RATING.findall(text)):
        if 1.0 <= value <= 10.0:
            return value
    return None


def judgment_from_output(text: str, parser: str, judge: str) -> Judgment:
    """Map a judge's raw output to a Judgment; anything unparsable is `invalid`."""
    if parser == "rating":
        rating = parse_rating(text)
        return Judgment("rated", rating * 10.0, judge, raw=text) if rating is not None else \
            Judgment("invalid", None, judge, raw=text, error="no [[rating]] in 1..10")
    verdict = parse_verdict(text) if parser == "verdict" else parse_json_judgment(text)
    if verdict is None:
        return Judgment("invalid", None, judge, raw=text, error=f"no {parser} verdict found")
    return Judgment(verdict, 100.0 if verdict == "correct" else 0.0, judge, raw=text)


def format_references(references: Sequence[str]) -> str:
    """One reference as is; several as a bullet list (aliases may contain commas)."""
    return references[0] if len(references) == 1 else "\n".join(f"- {r}" for r in references)


class LlmJudge:
    """Judges through an OpenAI-compatible endpoint, `concurrency` calls in flight per process."""

    def __init__(self, client: ChatClient, templates: Mapping[str, tuple[str, str]] | None = None,
                 concurrency: int = 4) -> None:
        self.client = client
        self.name = f"llm:{client.cfg.model}"
        self.templates = {**DEFAULT_TEMPLATES, **(templates or {})}
        bad = {s: p for s, (_, p) in self.templates.items() if p not in PARSERS}
        if bad:
            raise ValueError(f"judge templates: unknown parsers {bad}; known: {', '.join(PARSERS)}")
        self.concurrency = max(1, concurrency)

    def _template(self, item: QaItem) -> tuple[str, str]:
        """The subset's template; subsets without one fall back by metric (open-ended -> rating, else JSON)."""
        if item.subset in self.templates:
            return self.templates[item.subset]
        return DEFAULT_TEMPLATES["alpaca_eval"] if item.metric == "score" else DEFAULT_TEMPLATES["trivia_qa"]

    def prompt(self, item: QaItem) -> tuple[str, str]:
        """(prompt text, parser) for one item."""
        template, parser = self._template(item)
        text = template.format(question=item.question, references=format_references(item.references),
                               prediction=item.answer)
        return text, parser

    def judge(self, item: QaItem) -> Judgment:
        text, parser = self.prompt(item)
        try:
            output = self.client.complete([{"role": "user", "content": text}], temperature=0.0)
        except LlmRequestError as e:
            return Judgment("error", None, self.name, error=str(e))
        return judgment_from_output(output, parser, self.name)

    def judge_many(self, items: Sequence[QaItem]) -> list[Judgment]:
        if self.concurrency == 1 or len(items) <= 1:
            return [self.judge(i) for i in items]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            return list(pool.map(self.judge, items))


def build_judge(cfg: Mapping[str, Any]) -> Judge:
    """`{kind: rule}` or `{kind: llm, client: {base_url, model, ...}, concurrency, templates}`."""
    kind = cfg.get("kind", "rule")
    if kind == "rule":
        return RuleJudge()
    if kind != "llm":
        raise ValueError(f"judge config: unknown kind {kind!r}; known: rule, llm")
    templates = {subset: (str(t["template"]), str(t.get("parser", "json")))
                 for subset, t in (cfg.get("templates") or {}).items()}
    client = ChatClient(ClientConfig.from_mapping(cfg.get("client") or {}))
    return LlmJudge(client, templates, concurrency=int(cfg.get("concurrency", 4)))


def aggregate(judgments: Sequence[Judgment]) -> dict[str, Any]:
    """Subset summary: mean score over valid judgments (None when there is none) and every verdict's count."""
    counts = {v: 0 for v in VERDICTS}
    for j in judgments:
        counts[j.verdict] = counts.get(j.verdict, 0) + 1
    scores = [j.score for j in judgments if j.verdict in VALID and j.score is not None]
    return {"score": sum(scores) / len(scores) if scores else None, "n": len(judgments), "n_valid": len(scores),
            **{f"n_{v}": c for v, c in counts.items()}}
