"""Task builders: one corpus record (+ its audio codes) -> one training sequence and its span table.

Pure functions over the unified vocabulary; the tokenize job calls them per row after decoding, TTS and
codec encoding. Tasks (docs/architecture.md): asr, tts, audio_chat, text_chat, interleaved, aac/sec/asc; spoken QA
rows train as audio_chat; `ttt_json` rows (the reference's already-tokenized format) are imported as is.

Speech that a record lacks (chat answers, document sentences, TTS targets of text-only sources) is
synthesised by the job before building: `speech_plan(record)` lists the texts to speak, in the order the
builders consume `record.speech`. Keeping plan and builder in one module is what makes that order a
contract rather than a coincidence.

Every sequence comes from `tokenization.sequence.build_chat` / `build_document`, so there is one chat
template. Content that is already token ids (the 13:26 interleave chunks text by tokens; imports are ids)
goes in as `Part.tokens`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tokenization.sequence import BuiltSequence, Part, Turn, build_chat, build_document, validate_spans
from tokenization.vocab import UnifiedVocab

# GLM-4-Voice "streaming thoughts": 13 text tokens, then 26 audio tokens, repeated.
INTERLEAVE_TEXT_TOKENS = 13
INTERLEAVE_AUDIO_TOKENS = 26

BUILT_TASKS = ("asr", "tts", "audio_chat", "text_chat", "interleaved", "aac", "sec", "asc")
SPEECH_TASKS = ("tts", "audio_chat", "interleaved", "spoken_qa")  # tasks whose records may need synthesised speech
IMPORT_KINDS = ("ttt_json",)  # reader kinds whose rows may be already tokenized (reference inline format)
# an inline token of the reference format: <|audio_N|> or a named special such as <|begin_of_audio|>
INLINE_TOKEN_RE = re.compile(r"<\|(?:audio_\d+|[a-z_]+)\|>")

# Instruction prompts, chosen per record by a hash of its id (stable across runs and processes).
PROMPTS: dict[str, dict[str, tuple[str, ...]]] = {
    "asr": {
        "en": ("Transcribe this audio.", "Please write down what is said in the recording.",
               "What does the speaker say?", "Convert the speech to text.", "Listen and transcribe."),
        "zh": ("请转写这段音频。", "请把这段语音转成文字。", "说话人说了什么？", "识别这段语音的内容。"),
    },
    "tts": {
        "en": ("Read this aloud: {text}", "Say the following sentence: {text}", "Please speak this text: {text}",
               "Convert this text to speech: {text}"),
        "zh": ("请朗读：{text}", "请把这句话读出来：{text}", "把下面的文字转成语音：{text}"),
    },
    "aac": {"en": ("Describe the sounds in this audio.", "Write a caption for this recording.",
                   "What can you hear in this clip?")},
    "sec": {"en": ("What emotion does the speaker express?", "Identify the speaker's emotion.",
                   "How does the speaker feel?")},
    "asc": {"en": ("What acoustic scene is this?", "Where was this recording made?",
                   "Classify the acoustic environment.")},
}
# meta keys that hold the assistant answer of AAC/SEC/ASC records, in order of preference
LABEL_KEYS: dict[str, tuple[str, ...]] = {
    "aac": ("caption", "captions", "label"),
    "sec": ("emotion", "label", "labels"),
    "asc": ("scene", "label", "labels"),
}
# a sentence: optional leading whitespace, then text up to end punctuation (ASCII followed by space or the
# end; CJK anywhere) or the end of the document
_SENTENCE = re.compile(r"\s*\S.*?(?:[.!?]+(?=\s|$)|[。！？]+|$)", re.S)


@dataclass(frozen=True)
class Record:
    """What a builder needs from one corpus row. `audio` holds the codes of the row's own audio (one
    array per window when over-long audio was split); `speech` the codes of each `speech_plan` text."""

    record_id: str
    kind: str
    task: str
    language: str = ""
    text: str = ""
    messages: tuple[Mapping[str, Any], ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)
    has_audio: bool = False
    audio: tuple[np.ndarray, ...] = ()
    speech: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True)
class Sample:
    """A built training sequence plus the task it was built as and its reference text (for evaluation)."""

    task: str
    sequence: BuiltSequence
    text: str


# ---- choices that must be stable per record ------------------------------------------------------------

def stable_fraction(key: str, salt: str = "") -> float:
    """A uniform number in [0, 1) from a string: same value in every process and run (unlike hash())."""
    digest = hashlib.blake2b(f"{salt}\x1f{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def pick(options: Sequence[str], key: str, salt: str) -> str:
    return options[int(stable_fraction(key, salt) * len(options))]


def prompt_for(task: str, language: str, record_id: str) -> str:
    by_language = PROMPTS[task]
    return pick(by_language.get(language) or by_language["en"], record_id, f"prompt:{task}")


def is_pretokenized(rec: Record) -> bool:
    """A reference-format row (ttt_json) with inline tokens is imported as ids; one with plain text only
    (e.g. documents to be spoken) is built like any other row of its task."""
    return rec.kind in IMPORT_KINDS and any(
        INLINE_TOKEN_RE.search(t) for t in (rec.text, *(str(m.get("content", "")) for m in rec.messages)))


def may_need_speech(kind: str, task: str) -> bool:
    """Whether a source's rows can need TTS: its task speaks text, or its reader (ttt_json) decides the
    task per row."""
    return kind in IMPORT_KINDS or task in SPEECH_TASKS


def output_task(task: str) -> str:
    """The task a record is built as: spoken QA trains as audio chat; anything else as configured."""
    return "audio_chat" if task == "spoken_qa" else task


# ---- the 13:26 interleave ------------------------------------------------------------------------------

def interleave(text_ids: Sequence[int], codes: np.ndarray, n_text: int = INTERLEAVE_TEXT_TOKENS,
               n_audio: int = INTERLEAVE_AUDIO_TOKENS) -> list[tuple[str, np.ndarray, bool]]:
    """Chunk an answer's text ids and speech codes as GLM-4-Voice does: `n_text` text tokens, then
    `n_audio` codes, repeated. The last audio span is final and variable-length: when the text runs out,
    it takes all remaining codes; when the codes run out first, it takes what is left (<= n_audio) and the
    remaining text follows it. Returns ("text"|"audio", ids-or-codes, final) chunks in order."""
    text = np.asarray(text_ids, dtype=np.int64)
    codes = np.asarray(codes, dtype=np.int64)
    if codes.size == 0:
        raise ValueError("interleave needs speech codes for the answer (got none)")
    out: list[tuple[str, np.ndarray, bool]] = []
    t = a = 0
    while True:
        if t < len(text):
            out.append(("text", text[t:t + n_text], False))
            t += n_text
        if t >= len(text) or len(codes) - a <= n_audio:
            out.append(("audio", codes[a:], True))
            break
        out.append(("audio", codes[a:a + n_audio], False))
        a += n_audio
    if t < len(text):
        out.append(("text", text[t:], False))
    return out


# ---- what to synthesise --------------------------------------------------------------------------------

def sentences(document: str) -> list[str]:
    """Split a document into sentences at ASCII and CJK end punctuation. Each piece keeps the whitespace
    before it, so `"".join(sentences(d)) == d.strip()` and the text tokens stay those of the document."""
    return _SENTENCE.findall(document.strip())


def _document(rec: Record) -> str:
    return rec.text or "\n".join(str(m.get("content", "")) for m in rec.messages)


def _answer(rec: Record) -> str:
    """The answer of a single-turn spoken question: meta.answer, else the first of meta.answers."""
    answer = rec.meta.get("answer")
    if not answer:
        answers = rec.meta.get("answers") or []
        answer = answers[0] if isinstance(answers, list) and answers else ""
    return str(answer or "").strip()


def speech_plan(rec: Record) -> list[str]:
    """Texts the job must synthesise for this record, in the order its builder consumes them."""
    if is_pretokenized(rec):
        return []
    task = output_task(rec.task)
    if task == "tts" and not rec.has_audio:
        return [rec.text]
    if task == "interleaved":
        return [s.strip() for s in sentences(_document(rec))]
    if task == "audio_chat":
        if rec.messages:
            return [str(m["content"]) for m in rec.messages if m.get("role") in ("user", "assistant")]
        return ([] if rec.has_audio else [rec.text]) + [_answer(rec)]
    return []


# ---- builders ------------------------------------------------------------------------------------------

def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def _input_audio(rec: Record, task: str) -> list[Part]:
    _require(bool(rec.audio) and all(len(c) for c in rec.audio), f"{task} needs the record's audio (none decoded)")
    return [Part.audio(c) for c in rec.audio]


def _target_audio(chunks: Sequence[np.ndarray]) -> list[Part]:
    """Generated audio split into several spans (over-long audio): all but the last are non-final."""
    return [Part.audio(c, final=i == len(chunks) - 1) for i, c in enumerate(chunks)]


def build_asr(vocab: UnifiedVocab, rec: Record) -> Sample:
    transcript = rec.text.strip()
    _require(bool(transcript), "asr record has an empty transcript")
    prompt = Part(text=prompt_for("asr", rec.language, rec.record_id))
    audio = _input_audio(rec, "asr")
    user = [prompt, *audio] if stable_fraction(rec.record_id, "asr:order") < 0.5 else [*audio, prompt]
    seq = build_chat(vocab, [Turn("user", user), Turn("assistant", [Part(text=transcript)])])
    return Sample("asr", seq, transcript)


def build_tts(vocab: UnifiedVocab, rec: Record) -> Sample:
    text = rec.text.strip()
    _require(bool(text), "tts record has no text to speak")
    chunks = rec.audio if rec.has_audio else rec.speech[:1]
    _require(bool(chunks) and all(len(c) for c in chunks), "tts record has no target audio")
    prompt = prompt_for("tts", rec.language, rec.record_id).format(text=text)
    seq = build_chat(vocab, [Turn("user", [Part(text=prompt)]), Turn("assistant", _target_audio(chunks))])
    return Sample("tts", seq, text)


def build_audio_label(vocab: UnifiedVocab, rec: Record) -> Sample:
    """AAC/SEC/ASC: audio + instruction -> caption or label as assistant text."""
    task = rec.task
    label = next((rec.meta[k] for k in LABEL_KEYS[task] if rec.meta.get(k)), None) or rec.text
    if isinstance(label, list):
        label = ", ".join(str(x) for x in label)
    label = str(label or "").strip()
    _require(bool(label), f"{task} record has no caption/label (meta keys {LABEL_KEYS[task]} or text)")
    user = [Part(text=prompt_for(task, rec.language, rec.record_id)), *_input_audio(rec, task)]
    seq = build_chat(vocab, [Turn("user", user), Turn("assistant", [Part(text=label)])])
    return Sample(task, seq, label)


def build_text_chat(vocab: UnifiedVocab, rec: Record) -> Sample:
    _require(bool(rec.messages), "text_chat record has no messages")
    turns = [Turn(str(m["role"]), [Part(text=str(m["content"]))]) for m in rec.messages]
    answer = next((str(m["content"]) for m in reversed(rec.messages) if m["role"] == "assistant"), "")
    return Sample("text_chat", build_chat(vocab, turns), answer)


def _interleaved_answer(vocab: UnifiedVocab, text: str, codes: np.ndarray) -> list[Part]:
    return [Part.tokens(x) if kind == "text" else Part.audio(x, final=final)
            for kind, x, final in interleave(vocab.encode_text(text), codes)]


def build_audio_chat(vocab: UnifiedVocab, rec: Record) -> Sample:
    """User speech -> assistant text interleaved 13:26 with its speech (multi-turn chats keep every turn:
    user turns become speech, assistant turns interleaved answers, system prompts stay text)."""
    speech = list(rec.speech)
    _require(len(speech) == len(speech_plan(rec)), f"audio_chat: {len(speech)} synthesised utterances, "
                                                   f"expected {len(speech_plan(rec))}")
    turns: list[Turn] = []
    if rec.messages:
        for m in rec.messages:
            role, content = str(m["role"]), str(m["content"])
            if role == "system":
                turns.append(Turn(role, [Part(text=content)]))
            elif role == "user":
                turns.append(Turn(role, [Part.audio(speech.pop(0))]))
            else:
                turns.append(Turn(role, _interleaved_answer(vocab, content, speech.pop(0))))
        answer = next(str(m["content"]) for m in reversed(rec.messages) if m["role"] == "assistant")
    else:
        answer = _answer(rec)
        _require(bool(answer), "audio_chat record has no answer (meta.answer / meta.answers)")
        question = list(rec.audio) if rec.has_audio else [speech.pop(0)]
        _require(bool(question) and all(len(c) for c in question), "audio_chat record has no question audio")
        turns.append(Turn("user", [Part.audio(c) for c in question]))
        turns.append(Turn("assistant", _interleaved_answer(vocab, answer, speech.pop(0))))
    return Sample("audio_chat", build_chat(vocab, turns), answer)


def build_interleaved(vocab: UnifiedVocab, rec: Record) -> Sample:
    """A document: each sentence followed by a span of its own speech; the last span is final."""
    doc_sentences = sentences(_document(rec))
    _require(bool(doc_sentences), "interleaved record has no text")
    _require(len(rec.speech) == len(doc_sentences), f"interleaved: {len(rec.speech)} synthesised sentences, "
                                                    f"expected {len(doc_sentences)}")
    parts: list[Part] = []
    for i, (sentence, codes) in enumerate(zip(doc_sentences, rec.speech, strict=True)):
        parts += [Part(text=sentence), Part.audio(codes, final=i == len(doc_sentences) - 1)]
    return Sample("interleaved", build_document(vocab, parts), "".join(doc_sentences))


def build_import(vocab: UnifiedVocab, rec: Record) -> Sample:
    """A reference-format sample (`<|audio_N|>` and span markers inline): ids via `encode_mixed` (unknown
    tokens and out-of-range codes raise), spans recovered from the ids, roles from the messages. The
    markers are kept as written, so a malformed span (wrong closer, cut mid-way) fails validation instead
    of being silently repaired."""
    if rec.messages:
        turns = [Turn(str(m["role"]), [Part.tokens(vocab.encode_mixed(str(m["content"])))]) for m in rec.messages]
        seq = build_chat(vocab, turns)
        answer_ids = next(vocab.encode_mixed(str(m["content"])) for m in reversed(rec.messages)
                          if m["role"] == "assistant")
        text = "".join(s.text for s in vocab.segments(answer_ids) if s.kind == "text")
        return Sample(rec.task, seq, text)
    _require(bool(rec.text.strip()), "imported document is empty")
    ids = vocab.encode_mixed(rec.text)
    text = "".join(s.text for s in vocab.segments(ids) if s.kind == "text")
    return Sample(rec.task, build_document(vocab, [Part.tokens(ids)]), text)


BUILDERS = {
    "asr": build_asr, "tts": build_tts, "audio_chat": build_audio_chat, "text_chat": build_text_chat,
    "interleaved": build_interleaved, "aac": build_audio_label, "sec": build_audio_label,
    "asc": build_audio_label,
}


def build_sample(vocab: UnifiedVocab, rec: Record) -> Sample:
    """Build and validate one record's sequence; ValueError (-> quarantine) when it cannot be built.

    With a declared codec (no weights: the data is already codes) every reference-format row is imported as
    written, as the reference trains it: a plain-text document stays text, since no speech can be made for it."""
    if is_pretokenized(rec) or (rec.kind in IMPORT_KINDS and vocab.codec.declared):
        sample = build_import(vocab, rec)
    else:
        task = output_task(rec.task)
        if task not in BUILDERS:
            raise ValueError(f"unknown task {rec.task!r} (known: {', '.join((*BUILT_TASKS, 'spoken_qa'))})")
        sample = BUILDERS[task](vocab, replace(rec, task=task))
    validate_spans(vocab, sample.sequence.input_ids, sample.sequence.spans)
    return sample


__all__ = [
    "BUILDERS", "BUILT_TASKS", "IMPORT_KINDS", "INLINE_TOKEN_RE", "INTERLEAVE_AUDIO_TOKENS", "INTERLEAVE_TEXT_TOKENS",
    "PROMPTS", "SPEECH_TASKS", "Record", "Sample", "build_sample",
    "interleave", "is_pretokenized", "may_need_speech", "output_task",
    "pick", "prompt_for", "sentences", "speech_plan", "stable_fraction",
]
