"""The corpus-sized text vocabulary: lossless on any text, identical tokens on corpus text, its id mapping in
the manifest, and a mismatch refused."""

from __future__ import annotations

import functools
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenization.codecs.base import CodecIdentity
from tokenization.text import TextTokenizer, load_text_tokenizer
from tokenization.text_subset import closure_ids, corpus_subset, subset_tokenizer
from tokenization.vocab import IM_END, IM_START, UnifiedVocab, VocabMismatchError, check_compatible
from tokenization.vocab_factory import make_vocab, manifest_subset

CORPUS = ["THE LITTLE DOG WALKED TO THE MARKET THIS MORNING", "A green frog sees the old cat.",
          "Transcribe this audio.", "user\n", "assistant\n", "\n", "请转写这段音频。", "What is seven plus five?"]
IDENTITY = CodecIdentity("test", "1", 25.0, 512, 16000, 16000, "h")


@functools.cache
def _corpus_subset() -> TextTokenizer:
    return corpus_subset(load_text_tokenizer(), CORPUS)


@pytest.fixture(scope="module")
def sub() -> TextTokenizer:
    return _corpus_subset()


def test_subset_is_small_and_keeps_bytes_and_specials(sub: TextTokenizer) -> None:
    base = load_text_tokenizer()
    assert 256 + 26 < sub.vocab_size < 1000 < base.vocab_size
    for tok in (IM_START, IM_END, "<|endoftext|>"):
        assert sub.token_to_id(tok) is not None
        assert sub.base_ids[sub.token_to_id(tok)] == base.token_to_id(tok)
    assert sub.base_sha256 == base.sha256 and sub.sha256 != base.sha256


def test_corpus_text_gets_exactly_the_base_tokens(sub: TextTokenizer) -> None:
    base = load_text_tokenizer()
    for text in CORPUS:
        ids = sub.encode(text)
        assert [sub.base_ids[i] for i in ids] == base.encode(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_any_unicode_text_round_trips(text: str) -> None:
    """Up to Qwen's own NFC normaliser, which the subset keeps: the full tokenizer gives the same text back."""
    sub = _corpus_subset()
    assert sub.decode(sub.encode(text)) == unicodedata.normalize("NFC", text) == _base_round_trip(text)


@functools.cache
def _base() -> TextTokenizer:
    return load_text_tokenizer()


def _base_round_trip(text: str) -> str:
    return _base().decode(_base().encode(text))


def test_round_trip_keeps_the_normalisers_choices() -> None:
    """Examples hypothesis found: compatibility ideographs come back NFC-normalised, by both tokenizers."""
    sub = _corpus_subset()
    for text in ("\uf9e9", "\uf900", "\u212b", "e\u0301", "plain ascii"):
        assert sub.decode(sub.encode(text)) == unicodedata.normalize("NFC", text) == _base_round_trip(text)


def test_specials_in_plain_text_stay_text(sub: TextTokenizer) -> None:
    assert sub.token_to_id(IM_END) not in sub.encode("look: <|im_end|>")


def test_closure_is_closed_and_rebuilds_the_same_tokenizer(sub: TextTokenizer) -> None:
    base = load_text_tokenizer()
    assert closure_ids(base, sub.base_ids) == list(sub.base_ids)
    again = subset_tokenizer(base, sub.base_ids)
    assert again.sha256 == sub.sha256


def test_manifest_records_the_mapping_and_rebuilds_the_vocab(sub: TextTokenizer) -> None:
    vocab = UnifiedVocab(sub, IDENTITY)
    manifest = vocab.manifest()
    assert manifest["text_tokenizer"]["base_ids"] == list(sub.base_ids)
    assert manifest["text_tokenizer"]["vocab_size"] == sub.vocab_size
    assert vocab.audio_offset < 1000
    rebuilt = make_vocab("bundled:qwen", IDENTITY, "compact", manifest_subset(manifest))
    check_compatible(rebuilt.manifest(), manifest)
    assert rebuilt.encode_text("the old cat") == vocab.encode_text("the old cat")


def test_full_and_other_subsets_are_refused(sub: TextTokenizer) -> None:
    manifest = UnifiedVocab(sub, IDENTITY).manifest()
    full = make_vocab("bundled:qwen", IDENTITY, "compact")
    assert "base_ids" not in full.manifest()["text_tokenizer"]
    with pytest.raises(VocabMismatchError, match=r"text_tokenizer\.sha256"):
        check_compatible(full.manifest(), manifest)
    other = corpus_subset(load_text_tokenizer(), [*CORPUS, "zebra"])
    with pytest.raises(VocabMismatchError):
        check_compatible(UnifiedVocab(other, IDENTITY).manifest(), manifest)
