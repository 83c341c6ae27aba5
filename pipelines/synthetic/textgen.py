"""Deterministic text for the synthetic corpora: spoken QA pairs, ASR sentences, chats, documents, Mandarin.

Everything derives from the tables in `facts.py` and a seed; the same (config, seed) gives the same text in
any process (`random.Random` seeded with a string is stable across runs and PYTHONHASHSEED).

Held-out evaluation. Every QA item belongs to a `group` (one fact, or one template instance such as the sum
5+7, which also covers 7+5). A group is held out when a seeded hash of its name falls below
`heldout_fraction`, so the split does not depend on table order or on how many items a run asks for.
Held-out groups never appear in training QA or chat data, nor in ASR sentences. Knowledge facts (capitals,
colors, ...) of held-out groups may still be *stated* in the text-only documents when
`documents_state_heldout_facts` is true, which mirrors the benchmark setting the paper evaluates: the
knowledge comes from pre-training text, the evaluation asks a question the model never saw answered.
Skill items (arithmetic, spelling, calendar, counting) are never stated in documents: held-out instances
test generalisation.

English ASR sentences come from a small-vocabulary grammar (`grammar_sentence`, ~70 words), drawn without
repetition across every corpus and split. Held-out splits (test/dev) hold grammar sentences only, so every
held-out sentence is a word sequence no training source contains, made of words the training sentences
use: what a small model must learn to generalise, rather than to memorise utterances. Training splits
also mix in some fact statements and quotations (open vocabulary; they tie speech to the QA facts and keep
the quoting paths of the readers exercised).

Answer aliases are normalised with `normalize_answer`: the TriviaQA normalisation minus its article removal
(which would delete the letter "a" from spelled answers); article-free variants are listed as extra aliases.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from pipelines.synthetic import facts
from ttt_common.config_tools import reject_unknown_keys

TOPIC_TITLES = {
    "capital": "Capital cities", "color": "The colors of things", "sound": "Animal sounds",
    "legs": "How many legs animals have", "young": "Baby animals", "opposite": "Opposites",
    "science": "Simple science facts",
}


@dataclass(frozen=True)
class TextGenConfig:
    """Knobs of the generator (sizes of what to generate are asked for per call by the orchestrator)."""

    heldout_fraction: float = 0.2
    max_operand: int = 12  # addition/subtraction operands 0..max_operand
    max_factor: int = 10  # multiplication factors 1..max_factor
    max_count: int = 100  # "what number comes after N" for N < max_count
    documents_state_heldout_facts: bool = True
    statement_fraction: float = 0.15  # share of ASR sentences that state a (training) fact
    quote_fraction: float = 0.15  # share of Common Voice sentences holding a quotation with '"'
    system_prompt_fraction: float = 0.3
    multi_turn_fraction: float = 0.3
    explain_fraction: float = 0.15
    paragraphs: tuple[int, int] = (2, 3)
    sentences_per_paragraph: tuple[int, int] = (3, 5)

    @staticmethod
    def from_mapping(m: Mapping[str, Any]) -> TextGenConfig:
        known = {f.name for f in fields(TextGenConfig)}
        reject_unknown_keys(m, known, "textgen config")
        values = {k: tuple(v) if k in ("paragraphs", "sentences_per_paragraph") else v for k, v in m.items()}
        return TextGenConfig(**values)


@dataclass(frozen=True)
class QAItem:
    group: str  # held-out unit
    category: str
    question: str
    answer: str  # canonical short answer, as a person would say it
    aliases: tuple[str, ...]  # normalised acceptable answers, the canonical one first
    response: str  # a full-sentence assistant reply


@dataclass(frozen=True)
class Statement:
    group: str
    category: str
    text: str


@dataclass(frozen=True)
class Conversation:
    kind: str  # qa | multi_qa | explain
    system: str | None
    turns: tuple[tuple[str, str], ...]  # (user, assistant)
    groups: tuple[str, ...]  # QA/fact groups it uses (for held-out checks)


@dataclass(frozen=True)
class Document:
    doc_id: str
    topic: str
    title: str
    paragraphs: tuple[tuple[str, ...], ...]
    groups: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n\n".join(" ".join(p) for p in self.paragraphs)


def rng_for(seed: int, purpose: str) -> random.Random:
    """An independent, reproducible stream per purpose, so adding one corpus does not shift another's text."""
    return random.Random(f"{seed}:{purpose}")


# ---------------------------------------------------------------- words and normalisation

_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_words(n: int) -> str:
    """0..999 in US English words ("twenty-four", "one hundred five").

    Hand-written (a dozen lines) rather than a dependency: answers must match their aliases exactly, and
    the range needed is small.
    """
    if not 0 <= n <= 999:
        raise ValueError(f"number_words covers 0..999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    hundreds, rest = divmod(n, 100)
    return f"{_ONES[hundreds]} hundred" + (f" {number_words(rest)}" if rest else "")


_ZH_DIGITS = "零一二三四五六七八九"


def chinese_number(n: int) -> str:
    """0..99 in Chinese numerals as read aloud in arithmetic (十二, 二十, 二十一)."""
    if not 0 <= n <= 99:
        raise ValueError(f"chinese_number covers 0..99, got {n}")
    if n < 10:
        return _ZH_DIGITS[n]
    tens, ones = divmod(n, 10)
    return ("" if tens == 1 else _ZH_DIGITS[tens]) + "十" + (_ZH_DIGITS[ones] if ones else "")


_PUNCT = re.compile(r"[^\w\s']|_")


def normalize_answer(text: str) -> str:
    """Lower-case, punctuation (hyphens too) to spaces, apostrophes dropped, whitespace collapsed."""
    return " ".join(_PUNCT.sub(" ", text.lower()).replace("'", "").split())


def _aliases(answer: str, *extra: str) -> tuple[str, ...]:
    out: list[str] = []
    for a in (answer, *extra):
        norm = normalize_answer(a)
        if norm and norm not in out:
            out.append(norm)
    return tuple(out)


def _number_aliases(n: int) -> tuple[str, ...]:
    return _aliases(number_words(n), str(n))


def article(noun: str) -> str:
    return f"an {noun}" if noun[0].lower() in "aeiou" else f"a {noun}"


def capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


# ---------------------------------------------------------------- QA items


def _pick(rng: random.Random, templates: Sequence[str], **kw: str) -> str:
    return rng.choice(templates).format(**kw)


def _knowledge_items(rng: random.Random) -> list[QAItem]:
    items: list[QAItem] = []
    for country, capital, extra in facts.CAPITALS:
        q = _pick(rng, ("What is the capital of {c}?", "Which city is the capital of {c}?",
                        "Can you tell me the capital of {c}?"), c=country)
        items.append(QAItem(f"capital/{country}", "capital", q, capital, _aliases(capital, *extra),
                            capitalize(f"the capital of {country} is {capital}.")))
    for thing, color in facts.COLORS:
        q = _pick(rng, ("What color is {t}?", "What is the color of {t}?"), t=thing)
        items.append(QAItem(f"color/{thing}", "color", q, color, _aliases(color), capitalize(f"{thing} is {color}.")))
    for animal, sound, _verb, extra in facts.ANIMAL_SOUNDS:
        q = _pick(rng, ("What sound does {a} make?", "What does {a} say?"), a=article(animal))
        items.append(QAItem(f"sound/{animal}", "sound", q, sound, _aliases(sound, *extra),
                            capitalize(f"{article(animal)} says {sound}.")))
    for animal, legs in facts.ANIMAL_LEGS:
        q = f"How many legs does {article(animal)} have?"
        if legs == 0:
            answer, aliases, response = "none", _aliases("none", "zero", "0", "no legs"), "no legs"
        else:
            answer, aliases, response = number_words(legs), _number_aliases(legs), f"{number_words(legs)} legs"
        items.append(QAItem(f"legs/{animal}", "legs", q, answer, aliases,
                            capitalize(f"{article(animal)} has {response}.")))
    for animal, young, extra in facts.ANIMAL_YOUNG:
        q = _pick(rng, ("What is a baby {a} called?", "What do you call a young {a}?"), a=animal)
        items.append(QAItem(f"young/{animal}", "young", q, young, _aliases(young, *extra),
                            f"A baby {animal} is called {article(young)}."))
    for a, b in facts.OPPOSITES:
        for word, other in ((a, b), (b, a)):
            items.append(QAItem(f"opposite/{a}-{b}", "opposite", f"What is the opposite of {word}?", other,
                                _aliases(other), f"The opposite of {word} is {other}."))
    for i, (question, answer, extra, statement) in enumerate(facts.SCIENCE):
        items.append(QAItem(f"science/{i:02d}", "science", question, answer, _aliases(answer, *extra), statement))
    return items


def _arithmetic_items(rng: random.Random, cfg: TextGenConfig) -> list[QAItem]:
    items: list[QAItem] = []
    w = number_words
    top = cfg.max_operand
    for a in range(top + 1):
        for b in range(top + 1):
            q = _pick(rng, ("What is {a} plus {b}?", "How much is {a} plus {b}?",
                            "What do you get when you add {a} and {b}?"), a=w(a), b=w(b))
            items.append(QAItem(f"add/{min(a, b)}+{max(a, b)}", "add", q, w(a + b), _number_aliases(a + b),
                                capitalize(f"{w(a)} plus {w(b)} is {w(a + b)}.")))
    for a in range(top + 1):
        for b in range(a + 1):
            q = _pick(rng, ("What is {a} minus {b}?", "What do you get when you take {b} away from {a}?"),
                      a=w(a), b=w(b))
            items.append(QAItem(f"subtract/{a}-{b}", "subtract", q, w(a - b), _number_aliases(a - b),
                                capitalize(f"{w(a)} minus {w(b)} is {w(a - b)}.")))
    for a in range(1, cfg.max_factor + 1):
        for b in range(1, cfg.max_factor + 1):
            q = _pick(rng, ("What is {a} times {b}?", "What is {a} multiplied by {b}?"), a=w(a), b=w(b))
            items.append(QAItem(f"multiply/{min(a, b)}x{max(a, b)}", "multiply", q, w(a * b),
                                _number_aliases(a * b), capitalize(f"{w(a)} times {w(b)} is {w(a * b)}.")))
    return items


def _skill_items(rng: random.Random, cfg: TextGenConfig) -> list[QAItem]:
    items: list[QAItem] = []
    for word in facts.SPELLING_WORDS:
        q = _pick(rng, ("How do you spell {w}?", "Can you spell the word {w}?"), w=word)
        letters = " ".join(word)
        items.append(QAItem(f"spell/{word}", "spell", q, letters, _aliases(letters, "-".join(word)),
                            f"The word {word} is spelled {', '.join(word)}."))
    for kind, names in (("day", facts.DAYS), ("month", facts.MONTHS)):
        cyclic = kind == "day"
        last = len(names) if cyclic else len(names) - 1
        for i in range(last):
            first, second = names[i], names[(i + 1) % len(names)]
            group = f"calendar/{first}-{second}"
            items.append(QAItem(group, "calendar", f"What {kind} comes after {first}?", second, _aliases(second),
                                f"The {kind} after {first} is {second}."))
            items.append(QAItem(group, "calendar", f"Which {kind} comes before {second}?", first, _aliases(first),
                                f"The {kind} before {second} is {first}."))
    w = number_words
    for n in range(cfg.max_count):
        group = f"count/{n}-{n + 1}"
        items.append(QAItem(group, "count", f"What number comes after {w(n)}?", w(n + 1), _number_aliases(n + 1),
                            capitalize(f"{w(n + 1)} comes after {w(n)}.")))
        items.append(QAItem(group, "count", f"What number comes before {w(n + 1)}?", w(n), _number_aliases(n),
                            capitalize(f"{w(n)} comes before {w(n + 1)}.")))
    for start in range(1, 16):
        stop = start + 3 + start % 3
        seq = [w(k) for k in range(start, stop + 1)]
        items.append(QAItem(f"count-seq/{start}-{stop}", "count", f"Count from {w(start)} to {w(stop)}.",
                            ", ".join(seq), _aliases(" ".join(seq), " ".join(str(k) for k in range(start, stop + 1))),
                            capitalize(", ".join(seq)) + "."))
    return items


def qa_items(cfg: TextGenConfig, seed: int) -> list[QAItem]:
    """Every QA item the tables and config define, in a fixed order (question phrasing drawn by seed)."""
    rng = rng_for(seed, "qa-phrasing")
    return _knowledge_items(rng) + _arithmetic_items(rng, cfg) + _skill_items(rng, cfg)


def is_heldout(group: str, seed: int, fraction: float) -> bool:
    """Seeded hash of the group name -> uniform [0, 1); held out when below `fraction`."""
    digest = hashlib.sha256(f"{seed}:heldout:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_items(items: Iterable[QAItem], seed: int, fraction: float) -> tuple[list[QAItem], list[QAItem]]:
    """(training items, held-out items), split by group."""
    train: list[QAItem] = []
    heldout: list[QAItem] = []
    for item in items:
        (heldout if is_heldout(item.group, seed, fraction) else train).append(item)
    return train, heldout


def round_robin(groups: Iterable[Sequence[Any]]) -> list[Any]:
    """First of every group, then second of every group, ...: any prefix mixes all groups evenly."""
    queues = [list(reversed(g)) for g in groups]
    out: list[Any] = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop())
    return out


def interleave_categories(items: Sequence[QAItem], rng: random.Random) -> list[QAItem]:
    """Shuffle within each category, then round-robin across categories: any prefix is category-balanced
    (arithmetic alone has hundreds of items and would otherwise crowd out knowledge questions)."""
    by_cat: dict[str, list[QAItem]] = {}
    for item in items:
        by_cat.setdefault(item.category, []).append(item)
    return round_robin(rng.sample(v, len(v)) for _, v in sorted(by_cat.items()))


def take(items: Sequence[Any], n: int, what: str) -> list[Any]:
    """The first n items, or a clear error naming the knob to turn when the pool is too small."""
    if n > len(items):
        raise ValueError(f"{what}: asked for {n} but only {len(items)} are available (lower the count, or widen "
                         f"the generator: max_operand/max_factor/max_count or heldout_fraction)")
    return list(items[:n])


# ---------------------------------------------------------------- statements, sentences


def statements(seed: int) -> list[Statement]:
    """Declarative sentences of every knowledge fact, one per group (phrasing drawn by seed)."""
    rng = rng_for(seed, "statements")
    out: list[Statement] = []
    for country, capital, _ in facts.CAPITALS:
        text = rng.choice((f"The capital of {country} is {capital}.", f"{capital} is the capital of {country}."))
        out.append(Statement(f"capital/{country}", "capital", capitalize(text)))
    for thing, color in facts.COLORS:
        out.append(Statement(f"color/{thing}", "color", capitalize(f"{thing} is {color}.")))
    for animal, sound, verb, _ in facts.ANIMAL_SOUNDS:
        text = rng.choice((f"{article(animal)} {verb}.", f"{article(animal)} says {sound}."))
        out.append(Statement(f"sound/{animal}", "sound", capitalize(text)))
    for animal, legs in facts.ANIMAL_LEGS:
        text = f"{article(animal)} has {number_words(legs) if legs else 'no'} legs."
        out.append(Statement(f"legs/{animal}", "legs", capitalize(text)))
    for animal, young, _ in facts.ANIMAL_YOUNG:
        out.append(Statement(f"young/{animal}", "young", f"A baby {animal} is called {article(young)}."))
    for a, b in facts.OPPOSITES:
        out.append(Statement(f"opposite/{a}-{b}", "opposite", f"The opposite of {a} is {b}."))
    for i, (*_, statement) in enumerate(facts.SCIENCE):
        out.append(Statement(f"science/{i:02d}", "science", statement))
    return out


def _noun_phrase(rng: random.Random, nouns: Sequence[str], adjective: bool = True) -> str:
    words = [rng.choice(facts.GRAMMAR_DETERMINERS)]
    if adjective:
        words.append(rng.choice(facts.GRAMMAR_ADJECTIVES))
    return " ".join([*words, rng.choice(nouns)])


def grammar_sentence(rng: random.Random) -> str:
    """One sentence of the small-vocabulary grammar (word tables and why: `facts.GRAMMAR_*`), from three
    templates, parts in brackets optional:

        det adj agent  verb  det adj thing  [prep the place]  [time].
        Time, det adj agent  verb  det thing  [prep the place].
        det agent and det agent  verb  det adj thing  [prep the place].

    Every slot is drawn independently, so a few thousand training sentences use every word many times in
    many contexts while held-out sentences are still new combinations.
    """
    agents, things = facts.GRAMMAR_AGENTS, facts.GRAMMAR_THINGS
    verb = rng.choice(facts.GRAMMAR_VERBS)
    place = ""
    if rng.random() < 0.5:
        place = f" {rng.choice(facts.GRAMMAR_PREPOSITIONS)} the {rng.choice(facts.GRAMMAR_PLACES)}"
    r = rng.random()
    if r < 0.6:
        time = f" {rng.choice(facts.GRAMMAR_TIMES)}" if rng.random() < 0.4 else ""
        text = f"{_noun_phrase(rng, agents)} {verb} {_noun_phrase(rng, things)}{place}{time}"
    elif r < 0.85:
        text = (f"{rng.choice(facts.GRAMMAR_TIMES)}, {_noun_phrase(rng, agents)} {verb} "
                f"{_noun_phrase(rng, things, adjective=False)}{place}")
    else:
        text = (f"{_noun_phrase(rng, agents, adjective=False)} and {_noun_phrase(rng, agents, adjective=False)} "
                f"{verb} {_noun_phrase(rng, things)}{place}")
    return capitalize(text) + "."


def _quotation(rng: random.Random) -> str:
    return capitalize(f'{_noun_phrase(rng, facts.GRAMMAR_AGENTS)} said, "{rng.choice(facts.QUOTES)}"')


def _unique(draw: Callable[[], str], n: int, exclude: set[str], what: str) -> list[str]:
    """Draw until n new distinct strings; a bounded number of tries so an over-asked pool fails loudly."""
    out: list[str] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise ValueError(f"{what}: could not draw {n} distinct sentences (got {len(out)})")
        text = draw()
        if text not in exclude:
            exclude.add(text)
            out.append(text)
    return out


def english_sentences(n: int, rng: random.Random, facts_pool: Sequence[Statement], statement_fraction: float,
                      quote_fraction: float = 0.0, exclude: set[str] | None = None) -> list[str]:
    """n distinct English sentences: small-vocabulary grammar sentences (`grammar_sentence`), some fact
    statements, some quotations (with '"').

    `exclude` (updated in place) keeps sentences distinct across corpora and splits, so no test utterance
    text appears in any training corpus. Statements and quotations are open-vocabulary: the orchestrator
    asks for them in training splits only, so held-out sentences use the grammar's words alone.
    """
    seen = exclude if exclude is not None else set()

    def draw() -> str:
        r = rng.random()
        if r < quote_fraction:
            return _quotation(rng)
        if r < quote_fraction + statement_fraction and facts_pool:
            return rng.choice(facts_pool).text
        return grammar_sentence(rng)

    return _unique(draw, n, seen, "english_sentences")


def mandarin_sentences(n: int, rng: random.Random, exclude: set[str] | None = None) -> list[str]:
    """n distinct Mandarin sentences (simplified characters, full-width punctuation) from several templates."""
    seen = exclude if exclude is not None else set()

    def draw() -> str:
        r = rng.random()
        if r < 0.45:
            return f"{rng.choice(facts.ZH_TIMES)}{rng.choice(facts.ZH_SUBJECTS)}{rng.choice(facts.ZH_ACTIVITIES)}。"
        if r < 0.6:
            return f"{rng.choice(facts.ZH_SUBJECTS)}喜欢吃{rng.choice(facts.ZH_FOODS)}。"
        if r < 0.75:
            return f"{rng.choice(facts.ZH_TIMES)}{rng.choice(facts.ZH_CITIES)}的天气{rng.choice(facts.ZH_WEATHER)}。"
        if r < 0.85:
            a, b = rng.randint(0, 10), rng.randint(0, 10)
            return f"{chinese_number(a)}加{chinese_number(b)}等于{chinese_number(a + b)}。"
        if r < 0.93:
            country, capital = rng.choice(facts.ZH_CAPITALS)
            return f"{capital}是{country}的首都。"
        thing, color = rng.choice(facts.ZH_COLORS)
        return f"{thing}是{color}的。"

    return _unique(draw, n, seen, "mandarin_sentences")


_ZH_PUNCT = re.compile(r"[，。！？、；：“”‘’（）《》,.!?;:\"'()\s]")


def mandarin_transcript(text: str) -> str:
    """AISHELL-style transcript: the characters without punctuation or spaces."""
    return _ZH_PUNCT.sub("", text)


_LS_DROP = re.compile(r"[^A-Z' ]")


def librispeech_transcript(text: str) -> str:
    """LibriSpeech-style transcript: upper case, letters and apostrophes only (hyphens split words)."""
    return " ".join(_LS_DROP.sub(" ", text.upper()).split())


# ---------------------------------------------------------------- chats and documents


def conversations(n: int, rng: random.Random, items: Sequence[QAItem], facts_pool: Sequence[Statement],
                  cfg: TextGenConfig) -> list[Conversation]:
    """Chat data from training items only: single QA, multi-turn QA, and "tell me about" explanations;
    some with a system prompt, some opened by a greeting or closed by thanks."""
    by_topic: dict[str, list[Statement]] = {}
    for s in facts_pool:
        by_topic.setdefault(s.category, []).append(s)
    topics = sorted(by_topic)
    out: list[Conversation] = []
    for _ in range(n):
        system = rng.choice(facts.SYSTEM_PROMPTS) if rng.random() < cfg.system_prompt_fraction else None
        r = rng.random()
        turns: list[tuple[str, str]] = []
        groups: list[str] = []
        if r < cfg.explain_fraction and topics:
            kind = "explain"
            topic = rng.choice(topics)
            chosen = rng.sample(by_topic[topic], min(len(by_topic[topic]), rng.randint(2, 3)))
            turns.append((f"Tell me something about {TOPIC_TITLES[topic].lower()}.", " ".join(s.text for s in chosen)))
            groups += [s.group for s in chosen]
        else:
            kind = "multi_qa" if r < cfg.explain_fraction + cfg.multi_turn_fraction else "qa"
            for item in rng.sample(list(items), rng.randint(2, 3) if kind == "multi_qa" else 1):
                reply = item.response if rng.random() < 0.7 else capitalize(item.answer) + "."
                turns.append((item.question, reply))
                groups.append(item.group)
        if rng.random() < 0.1:
            turns.insert(0, rng.choice(facts.GREETINGS))
        if rng.random() < 0.1:
            turns.append(rng.choice(facts.THANKS))
        out.append(Conversation(kind, system, tuple(turns), tuple(groups)))
    return out


def documents(n: int, rng: random.Random, facts_pool: Sequence[Statement], cfg: TextGenConfig) -> list[Document]:
    """Short topical documents: 2-3 paragraphs of 3-5 fact statements, the topic named in the first one."""
    by_topic: dict[str, list[Statement]] = {}
    for s in facts_pool:
        by_topic.setdefault(s.category, []).append(s)
    topics = sorted(by_topic)
    if n and not topics:
        raise ValueError("documents: no statements to build documents from")
    out: list[Document] = []
    for i in range(n):
        topic = topics[i % len(topics)]
        pool = rng.sample(by_topic[topic], len(by_topic[topic]))
        paragraphs: list[tuple[str, ...]] = []
        used: list[str] = []
        for p in range(rng.randint(*cfg.paragraphs)):
            k = rng.randint(*cfg.sentences_per_paragraph)
            if not pool:
                break
            chosen, pool = pool[:k], pool[k:]
            lead = (f"This is a short text about {TOPIC_TITLES[topic].lower()}.",) if p == 0 else ()
            paragraphs.append(lead + tuple(s.text for s in chosen))
            used += [s.group for s in chosen]
        out.append(Document(f"doc-{i:05d}", topic, TOPIC_TITLES[topic], tuple(paragraphs), tuple(used)))
    return out
