"""The synthetic text generator: deterministic by seed, held-out QA disjoint from training text, answers
with usable aliases, transcripts in each corpus's convention."""

from __future__ import annotations

import re

import pytest

from pipelines.synthetic import facts
from pipelines.synthetic.textgen import (
    TextGenConfig,
    chinese_number,
    conversations,
    documents,
    english_sentences,
    grammar_sentence,
    interleave_categories,
    is_heldout,
    librispeech_transcript,
    mandarin_sentences,
    mandarin_transcript,
    normalize_answer,
    number_words,
    qa_items,
    rng_for,
    split_items,
    statements,
    take,
)

CFG = TextGenConfig()


def _everything(seed: int) -> tuple:
    items = qa_items(CFG, seed)
    train, _ = split_items(items, seed, CFG.heldout_fraction)
    st = statements(seed)
    return (
        items,
        english_sentences(50, rng_for(seed, "en"), st, 0.2, 0.2),
        mandarin_sentences(50, rng_for(seed, "zh")),
        conversations(30, rng_for(seed, "chat"), train, st, CFG),
        documents(8, rng_for(seed, "doc"), st, CFG),
    )


def test_same_seed_same_text_and_other_seed_differs() -> None:
    assert _everything(3) == _everything(3)
    assert _everything(3) != _everything(4)


def test_heldout_split_is_by_group_and_independent_of_order() -> None:
    items = qa_items(CFG, 0)
    train, heldout = split_items(items, 0, 0.2)
    train_groups, heldout_groups = {i.group for i in train}, {i.group for i in heldout}
    assert train_groups.isdisjoint(heldout_groups)
    assert len(train) + len(heldout) == len(items)
    all_groups = train_groups | heldout_groups
    assert 0.1 < len(heldout_groups) / len(all_groups) < 0.3
    # the decision depends on the group name only, not on position or on the other items
    _, heldout_rev = split_items(list(reversed(items)), 0, 0.2)
    assert {i.group for i in heldout_rev} == heldout_groups
    assert all(is_heldout(g, 0, 0.2) for g in heldout_groups)
    # both directions of one fact (hot->cold, cold->hot) land on the same side
    hot = [i for i in items if i.group == "opposite/hot-cold"]
    assert len(hot) == 2 and len({is_heldout(i.group, 0, 0.2) for i in hot}) == 1


def test_heldout_questions_never_appear_in_training_chats() -> None:
    items = qa_items(CFG, 0)
    train, heldout = split_items(items, 0, CFG.heldout_fraction)
    heldout_groups = {i.group for i in heldout}
    train_statements = [s for s in statements(0) if s.group not in heldout_groups]
    convs = conversations(400, rng_for(0, "chat"), train, train_statements, CFG)
    assert {c.kind for c in convs} == {"qa", "multi_qa", "explain"}
    used = {g for c in convs for g in c.groups}
    assert used and used.isdisjoint(heldout_groups)
    user_turns = {u for c in convs for u, _ in c.turns}
    assert not user_turns & {i.question for i in heldout}
    assert any(c.system for c in convs) and any(c.system is None for c in convs)
    assert any(len(c.turns) > 1 for c in convs)


def test_items_have_answers_aliases_and_responses() -> None:
    items = qa_items(CFG, 0)
    categories = {i.category for i in items}
    skills = {"add", "subtract", "multiply", "spell", "calendar", "count"}
    assert skills <= categories and {"capital", "science", "color"} <= categories
    for item in items:
        assert item.question.endswith(("?", "."))
        assert item.aliases and item.aliases[0] == normalize_answer(item.answer)
        assert all(a == normalize_answer(a) for a in item.aliases)
    by_question = {i.question: i for i in items}
    seven_plus_five = next(i for q, i in by_question.items() if "seven" in q and "plus five" in q)
    assert seven_plus_five.answer == "twelve" and set(seven_plus_five.aliases) == {"twelve", "12"}
    spell_cat = next(i for i in items if i.group == "spell/cat")
    assert spell_cat.answer == "c a t" and spell_cat.aliases == ("c a t",)
    monday = next(i for i in items if i.question == "What day comes after Monday?")
    assert monday.answer == "Tuesday"
    sunday = next(i for i in items if i.question == "What day comes after Sunday?")  # the week wraps
    assert sunday.answer == "Monday"
    assert not any(i.question == "What month comes after December?" for i in items)  # the year does not
    dc = next(i for i in items if i.group == "capital/the United States")
    assert {"washington d c", "washington"} <= set(dc.aliases)


def test_questions_are_unambiguous_within_the_tables() -> None:
    items = qa_items(CFG, 0)
    answers_per_question: dict[str, set[str]] = {}
    for item in items:
        answers_per_question.setdefault(item.question, set()).add(item.answer)
    assert all(len(a) == 1 for a in answers_per_question.values())
    words = [w for pair in facts.OPPOSITES for w in pair]
    assert len(words) == len(set(words))


@pytest.mark.parametrize(("n", "words"), [(0, "zero"), (13, "thirteen"), (24, "twenty-four"), (40, "forty"),
                                          (100, "one hundred"), (105, "one hundred five"),
                                          (999, "nine hundred ninety-nine")])
def test_number_words(n: int, words: str) -> None:
    assert number_words(n) == words


@pytest.mark.parametrize(("n", "zh"), [(0, "零"), (7, "七"), (10, "十"), (12, "十二"), (20, "二十"), (21, "二十一")])
def test_chinese_number(n: int, zh: str) -> None:
    assert chinese_number(n) == zh


def test_normalisation_and_transcripts() -> None:
    assert normalize_answer("  Twenty-Four! ") == "twenty four"
    assert normalize_answer("Washington, D.C.") == "washington d c"
    assert librispeech_transcript('She said, "Let us go home." It\'s twenty-four.') == (
        "SHE SAID LET US GO HOME IT'S TWENTY FOUR")
    assert mandarin_transcript("今天，我们去公园散步。") == "今天我们去公园散步"


def test_sentences_are_distinct_across_calls_sharing_an_exclude_set() -> None:
    seen: set[str] = set()
    rng = rng_for(0, "en")
    first = english_sentences(200, rng, statements(0), 0.15, 0.1, seen)
    second = english_sentences(200, rng, statements(0), 0.15, 0.1, seen)
    assert len(set(first) | set(second)) == 400
    assert all(s[0].isupper() and s[-1] in '."' for s in first)
    assert not any(re.search(r"\d", s) for s in first + second)  # numbers are spoken words
    quoted = english_sentences(20, rng_for(0, "q"), [], 0.0, 1.0)
    assert all('"' in s for s in quoted)
    zh = mandarin_sentences(300, rng_for(0, "zh"))
    assert len(set(zh)) == 300 and all(s.endswith("。") for s in zh)
    assert all(re.fullmatch(r"[\u4e00-\u9fff。]+", s) for s in zh)


def test_grammar_is_a_small_vocabulary_with_many_combinations() -> None:
    """~70 words, every one used by a few thousand sentences, and far more sentences than any corpus asks
    for: held-out sentences can be new combinations made only of training words."""
    rng = rng_for(0, "grammar")
    sentences = [grammar_sentence(rng) for _ in range(3000)]
    assert len(set(sentences)) > 2990  # repeats are rare, so drawing distinct sentences stays cheap
    counts: dict[str, int] = {}
    for s in sentences:
        assert s[0].isupper() and s.endswith(".") and '"' not in s
        for word in librispeech_transcript(s).split():
            counts[word] = counts.get(word, 0) + 1
    assert 60 <= len(counts) <= 80
    assert min(counts.values()) >= 20  # every word heard in many contexts
    # no "a" before a vowel: the article never needs to change
    assert not re.search(r"\ba [aeiou]", " ".join(sentences).lower())
    # more distinct sentences than any shipped corpus asks for, spread over the three templates
    many = english_sentences(20_000, rng_for(1, "grammar"), [], 0.0)
    assert len(set(many)) == 20_000
    assert any(" and " in s for s in many) and any(", " in s for s in many)


def test_documents_are_topical_paragraphs() -> None:
    docs = documents(14, rng_for(0, "doc"), statements(0), CFG)
    assert len({d.topic for d in docs}) == 7
    for d in docs:
        paragraphs = d.text.split("\n\n")
        assert CFG.paragraphs[0] <= len(paragraphs) <= CFG.paragraphs[1]
        assert all(p.endswith((".", "!", "?")) for p in paragraphs)
        assert len(set(d.groups)) == len(d.groups)


def test_interleave_balances_categories_and_take_fails_loudly() -> None:
    items = qa_items(CFG, 0)
    ordered = interleave_categories(items, rng_for(0, "x"))
    assert sorted(ordered, key=lambda i: (i.group, i.question)) == sorted(items, key=lambda i: (i.group, i.question))
    n_categories = len({i.category for i in items})
    assert len({i.category for i in ordered[:n_categories]}) == n_categories
    with pytest.raises(ValueError, match="only"):
        take(ordered, len(ordered) + 1, "eval items")


def test_config_rejects_unknown_keys() -> None:
    assert TextGenConfig.from_mapping({"max_operand": 5, "paragraphs": [1, 2]}).paragraphs == (1, 2)
    with pytest.raises(ValueError, match="unknown keys"):
        TextGenConfig.from_mapping({"max_operands": 5})
