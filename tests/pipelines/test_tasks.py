from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.tasks import (
    INTERLEAVE_AUDIO_TOKENS,
    INTERLEAVE_TEXT_TOKENS,
    PROMPTS,
    Record,
    build_sample,
    interleave,
    is_pretokenized,
    prompt_for,
    sentences,
    speech_plan,
)
from tokenization.codecs.base import CodecIdentity
from tokenization.sequence import Part, Turn, build_chat, validate_spans
from tokenization.text import load_text_tokenizer
from tokenization.vocab import EOA, EOA_FINAL, EOA_USER, IM_END, SOA, SOA_FINAL, UnifiedVocab

VOCAB = UnifiedVocab(load_text_tokenizer(), CodecIdentity("test", "1", 25.0, 512, 16000, 16000, "h"))
LONG_ANSWER = ("The capital of France is Paris, a city on the Seine with about two million people, famous for "
               "its museums, its cafes and the tower built for the exhibition of eighteen eighty nine.")


def codes(n: int, start: int = 0) -> np.ndarray:
    return (np.arange(n) + start) % VOCAB.codebook_size


def audio_spans(seq, role: str | None = None):
    return [s for s in seq.spans if s.kind == "audio" and (role is None or s.role == role)]


# ---- the 13:26 interleave ------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.integers(0, 120), st.integers(1, 300))
def test_interleave_is_exact_13_26_with_one_final_variable_span(n_text: int, n_codes: int) -> None:
    text, audio = np.arange(n_text), codes(n_codes)
    chunks = interleave(text, audio)
    kinds = [k for k, _, _ in chunks]
    texts = [x for k, x, _ in chunks if k == "text"]
    audios = [(x, final) for k, x, final in chunks if k == "audio"]
    assert np.array_equal(np.concatenate([np.zeros(0, np.int64), *texts]), text)  # nothing lost or reordered
    assert np.array_equal(np.concatenate([a for a, _ in audios]), audio)
    assert [final for _, final in audios] == [False] * (len(audios) - 1) + [True]  # exactly the last is final
    assert all(len(a) == INTERLEAVE_AUDIO_TOKENS for a, _ in audios[:-1])
    final_at = max(i for i, k in enumerate(kinds) if k == "audio")
    before = [x for k, x, _ in chunks[:final_at] if k == "text"]
    assert all(len(x) == INTERLEAVE_TEXT_TOKENS for x in before[:-1])  # full 13-token chunks before the end
    assert all(a != b for a, b in itertools.pairwise(kinds[:final_at + 1]))  # alternating
    assert kinds[final_at + 1:] in ([], ["text"])  # text left after the codes ran out continues as one span


def test_interleave_text_runs_out_first_puts_remaining_audio_in_final_span() -> None:
    chunks = interleave(np.arange(30), codes(200))
    assert [(k, len(x), f) for k, x, f in chunks] == [
        ("text", 13, False), ("audio", 26, False), ("text", 13, False), ("audio", 26, False), ("text", 4, False),
        ("audio", 148, True)]


def test_interleave_audio_runs_out_first_then_text_continues() -> None:
    chunks = interleave(np.arange(100), codes(60))
    assert [(k, len(x), f) for k, x, f in chunks] == [
        ("text", 13, False), ("audio", 26, False), ("text", 13, False), ("audio", 26, False), ("text", 13, False),
        ("audio", 8, True), ("text", 61, False)]


def test_interleave_needs_codes() -> None:
    with pytest.raises(ValueError, match="speech codes"):
        interleave(np.arange(5), codes(0))


# ---- builders ------------------------------------------------------------------------------------------

def test_asr_user_audio_then_transcript_as_only_target() -> None:
    rec = Record("libri/1-2-3", "librispeech", "asr", "en", "HELLO WORLD", has_audio=True, audio=(codes(40),))
    sample = build_sample(VOCAB, rec)
    seq = sample.sequence
    assert sample.task == "asr" and sample.text == "HELLO WORLD"
    (user_audio,) = audio_spans(seq)
    assert user_audio.role == "user" and not user_audio.is_target and not user_audio.is_final_in_turn
    assert seq.input_ids[user_audio.start] == VOCAB.id(SOA) and seq.input_ids[user_audio.end - 1] == VOCAB.id(EOA_USER)
    targets = [s for s in seq.spans if s.is_target]
    assert [s.role for s in targets] == ["assistant"]
    assert VOCAB.text.decode(seq.input_ids[targets[0].start:targets[0].end].tolist()) == "HELLO WORLD<|im_end|>"
    assert any(p in VOCAB.text.decode(seq.input_ids.tolist()) for p in PROMPTS["asr"]["en"])


def test_prompts_are_stable_per_record_and_varied_across_records() -> None:
    assert prompt_for("asr", "en", "a/1") == prompt_for("asr", "en", "a/1")
    assert len({prompt_for("asr", "en", f"a/{i}") for i in range(60)}) == len(PROMPTS["asr"]["en"])
    assert prompt_for("asr", "zh", "a/1") in PROMPTS["asr"]["zh"]
    assert prompt_for("asr", "fr", "a/1") in PROMPTS["asr"]["en"]  # unknown language falls back to English


def test_asr_split_audio_gives_consecutive_user_spans() -> None:
    rec = Record("r/1", "lhotse", "asr", "en", "long one", has_audio=True, audio=(codes(30), codes(30, 5)))
    seq = build_sample(VOCAB, rec).sequence
    assert [len(s) for s in audio_spans(seq, "user")] == [32, 32]


def test_tts_target_is_one_final_span_and_synthesised_when_text_only() -> None:
    rec = Record("cv/9", "commonvoice", "tts", "en", "Good morning.")
    assert speech_plan(rec) == ["Good morning."]
    seq = build_sample(VOCAB, replace(rec, speech=(codes(50),))).sequence
    (span,) = audio_spans(seq)
    assert span.role == "assistant" and span.is_target and span.is_final_in_turn and len(span) == 52
    assert seq.input_ids[span.start] == VOCAB.id(SOA_FINAL) and seq.input_ids[span.end - 1] == VOCAB.id(EOA_FINAL)
    recorded = Record("ls/1", "librispeech", "tts", "en", "HI", has_audio=True, audio=(codes(10), codes(10)))
    assert speech_plan(recorded) == []  # a corpus with audio is its own target
    spans = audio_spans(build_sample(VOCAB, recorded).sequence)
    assert [s.is_final_in_turn for s in spans] == [False, True]


def test_audio_chat_from_spoken_qa_interleaves_answer_with_its_speech() -> None:
    rec = Record("qa/llama_questions/3", "spoken_qa", "spoken_qa", "en", "What is the capital of France?",
                 meta={"answers": [LONG_ANSWER, "Paris"]}, has_audio=True, audio=(codes(60),))
    assert speech_plan(rec) == [LONG_ANSWER]
    answer_codes = codes(170, 7)
    sample = build_sample(VOCAB, replace(rec, speech=(answer_codes,)))
    seq = sample.sequence
    assert sample.task == "audio_chat" and sample.text == LONG_ANSWER
    (question,) = audio_spans(seq, "user")
    assert not question.is_target
    answer = [s for s in seq.spans if s.role == "assistant" and s.is_target]
    audio = [s for s in answer if s.kind == "audio"]
    assert all(len(s) == INTERLEAVE_AUDIO_TOKENS + 2 for s in audio[:-1])
    assert all(seq.input_ids[s.end - 1] == VOCAB.id(EOA) for s in audio[:-1])
    assert audio[-1].is_final_in_turn and seq.input_ids[audio[-1].end - 1] == VOCAB.id(EOA_FINAL)
    assert [s.is_final_in_turn for s in audio] == [False] * (len(audio) - 1) + [True]
    text = [s for s in answer if s.kind == "text"]
    before_final = [s for s in text if s.end <= audio[-1].start]
    assert all(len(s) == INTERLEAVE_TEXT_TOKENS for s in before_final[:-1]) and len(before_final) == len(audio)
    assert seq.input_ids[text[-1].end - 1] == VOCAB.id(IM_END)  # <|im_end|> is a target after the answer
    got_codes = np.concatenate([seg.codes for seg in VOCAB.segments(seq.input_ids[answer[0].start:])
                                if seg.kind == "audio"])
    assert np.array_equal(got_codes, answer_codes)
    answer_text = np.concatenate([seq.input_ids[s.start:s.end] for s in text])[:-1]
    assert answer_text.tolist() == VOCAB.encode_text(LONG_ANSWER)


def test_audio_chat_from_text_chat_speaks_every_user_and_assistant_turn() -> None:
    messages = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Goodbye."})
    rec = Record("oh/1", "sharegpt", "audio_chat", "en", messages=messages)
    assert speech_plan(rec) == ["Hi there", "Hello!", "Bye", "Goodbye."]
    with pytest.raises(ValueError, match="synthesised"):
        build_sample(VOCAB, replace(rec, speech=(codes(5),)))
    speech = tuple(codes(n) for n in (20, 30, 10, 40))
    seq = build_sample(VOCAB, replace(rec, speech=speech)).sequence
    assert [s.turn for s in audio_spans(seq, "user")] == [1, 3]
    finals = [s for s in audio_spans(seq, "assistant") if s.is_final_in_turn]
    assert [s.turn for s in finals] == [2, 4]  # one final span per assistant turn
    assert {s.turn for s in seq.spans if s.is_target} == {2, 4}
    assert not any(s.kind == "audio" for s in seq.spans if s.role == "system")


def test_text_chat_keeps_turns_and_targets_each_assistant_turn() -> None:
    messages = ({"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"})
    sample = build_sample(VOCAB, Record("oh/2", "sharegpt", "text_chat", "en", messages=messages))
    assert sample.text == "d" and not audio_spans(sample.sequence)
    assert sorted({s.turn for s in sample.sequence.spans if s.is_target}) == [1, 3]
    assert speech_plan(Record("oh/2", "sharegpt", "text_chat", messages=messages)) == []


def test_interleaved_document_alternates_sentences_with_their_speech() -> None:
    doc = "Cats sleep a lot. They also purr!\n\nDogs bark? Yes."
    rec = Record("docs/1", "ttt_json", "interleaved", "en", doc)
    assert not is_pretokenized(rec)
    plan = speech_plan(rec)
    assert plan == ["Cats sleep a lot.", "They also purr!", "Dogs bark?", "Yes."]
    sample = build_sample(VOCAB, replace(rec, speech=tuple(codes(17 + i) for i in range(4))))
    seq = sample.sequence
    assert [s.kind for s in seq.spans] == ["text", "audio"] * 4 + ["text"]
    assert all(s.is_target and s.role == "document" for s in seq.spans)
    assert [len(s) - 2 for s in audio_spans(seq)] == [17, 18, 19, 20]
    assert [s.is_final_in_turn for s in audio_spans(seq)] == [False, False, False, True]
    assert seq.input_ids[-1] == VOCAB.pad_id
    assert "".join(seg.text for seg in VOCAB.segments(seq.input_ids[:-1]) if seg.kind == "text") == doc
    assert sample.text == doc


def test_sentences_keep_the_document_text() -> None:
    for doc in ("One. Two! Three?", "今天很好。我们走吧！好", "no end", "  padded.  "):
        assert "".join(sentences(doc)) == doc.strip()
    assert sentences("今天很好。我们走吧！") == ["今天很好。", "我们走吧！"]


@pytest.mark.parametrize(("task", "meta", "label"), [
    ("aac", {"caption": "A dog barks twice."}, "A dog barks twice."),
    ("sec", {"emotion": "happy"}, "happy"),
    ("asc", {"labels": ["park", "birds"]}, "park, birds"),
])
def test_audio_label_tasks_answer_with_caption_or_label(task: str, meta: dict, label: str) -> None:
    rec = Record("hf/1", "hf_parquet", task, "en", meta=meta, has_audio=True, audio=(codes(12),))
    sample = build_sample(VOCAB, rec)
    assert sample.task == task and sample.text == label
    (target,) = [s for s in sample.sequence.spans if s.is_target]
    assert VOCAB.text.decode(sample.sequence.input_ids[target.start:target.end].tolist()) == label + "<|im_end|>"


def test_import_reference_format_keeps_ids_and_roles() -> None:
    messages = ({"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "<|begin_of_audio|><|audio_1|><|audio_2|><|end_of_audio|>"},
                {"role": "assistant",
                 "content": "Hi.<|begin_of_quad|><|audio_3|><|audio_4|><|end_of_audio_span_last|>"})
    rec = Record("tj/0", "ttt_json", "audio_chat", messages=messages)
    assert is_pretokenized(rec) and speech_plan(rec) == []
    sample = build_sample(VOCAB, rec)
    seq = sample.sequence
    validate_spans(VOCAB, seq.input_ids, seq.spans)
    assert sample.text == "Hi."
    user, final = audio_spans(seq)
    assert user.role == "user" and not user.is_target
    assert final.role == "assistant" and final.is_target and final.is_final_in_turn
    expected = build_chat(VOCAB, [Turn("system", [Part(text="You are a helpful assistant.")]),
                                  Turn("user", [Part.audio([1, 2])]),
                                  Turn("assistant", [Part(text="Hi."), Part.audio([3, 4], final=True)])])
    assert np.array_equal(seq.input_ids, expected.input_ids) and seq.spans == expected.spans


def test_import_document_and_invalid_tokens() -> None:
    doc = Record("tj/2", "ttt_json", "interleaved",
                 text="Once<|begin_of_audio|><|audio_5|><|audio_6|><|end_of_audio_new|> upon.")
    seq = build_sample(VOCAB, doc).sequence
    assert seq.input_ids[-1] == VOCAB.pad_id and [s.kind for s in seq.spans] == ["text", "audio", "text"]
    with pytest.raises(ValueError, match="unknown special token"):
        build_sample(VOCAB, Record("tj/3", "ttt_json", "interleaved", text="bad <|not_a_token|> here"))
    with pytest.raises(ValueError, match="out of range"):
        build_sample(VOCAB, Record("tj/4", "ttt_json", "interleaved", text="<|begin_of_audio|><|audio_999999|>"))
    wrong_closer = ({"role": "user", "content": "<|begin_of_audio|><|audio_1|><|end_of_audio_new|>"},
                    {"role": "assistant", "content": "ok"})
    with pytest.raises(ValueError, match="closer"):
        build_sample(VOCAB, Record("tj/5", "ttt_json", "audio_chat", messages=wrong_closer))


@pytest.mark.parametrize(("rec", "match"), [
    (Record("a/1", "librispeech", "asr", "en", "TEXT"), "needs the record's audio"),
    (Record("a/2", "librispeech", "asr", "en", "  ", has_audio=True, audio=(codes(3),)), "empty transcript"),
    (Record("a/3", "hf_parquet", "sec", "en", has_audio=True, audio=(codes(3),)), "no caption/label"),
    (Record("a/4", "spoken_qa", "spoken_qa", "en", "Q?", has_audio=True, audio=(codes(3),), speech=(codes(3),)),
     "no answer"),
    (Record("a/5", "x", "translate", "en", "t"), "unknown task"),
])
def test_unbuildable_records_raise_value_error(rec: Record, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_sample(VOCAB, rec)
