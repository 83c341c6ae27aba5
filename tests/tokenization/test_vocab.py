from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenization.codecs.base import CodecIdentity
from tokenization.text import load_text_tokenizer
from tokenization.vocab import (
    EOA,
    EOA_FINAL,
    MASK,
    SOA,
    UnifiedVocab,
    VocabMismatchError,
    check_compatible,
)


def codec_id(codebook: int = 1024, params_hash: str = "abc") -> CodecIdentity:
    return CodecIdentity("test", "1", 25.0, codebook, 16000, 16000, params_hash)


@pytest.fixture(scope="module")
def vocab() -> UnifiedVocab:
    return UnifiedVocab(load_text_tokenizer(), codec_id())


def test_bundled_tokenizer_is_qwen_bpe() -> None:
    tok = load_text_tokenizer()
    assert tok.token_to_id("<|im_start|>") == 151644
    assert tok.token_to_id("<|endoftext|>") == 151643
    assert tok.vocab_size >= 151665
    assert tok.decode(tok.encode("Hello, world!")) == "Hello, world!"


def test_plain_text_cannot_inject_specials() -> None:
    tok = load_text_tokenizer()
    assert 151645 not in tok.encode("look: <|im_end|>")


def test_compact_layout_ids_do_not_collide(vocab: UnifiedVocab) -> None:
    ids = list(vocab.specials.values())
    assert len(set(ids)) == len(ids)
    assert all(i < vocab.audio_offset for i in ids)
    assert vocab.audio_offset >= vocab.text_vocab_size
    assert vocab.size == vocab.audio_offset + 1024
    assert not vocab.is_audio(np.asarray(ids)).any()
    assert vocab.padded_size() % 64 == 0 and vocab.padded_size() >= vocab.size


def test_reference_layout_reproduces_reference_ids() -> None:
    v = UnifiedVocab(load_text_tokenizer(), codec_id(16384), layout="reference")
    assert v.id("<|audio|>") == 151684
    assert v.audio_offset == 151685
    assert v.audio_ids([16383])[0] == 168068
    assert v.id(MASK) == 168069
    assert (v.id(EOA), v.id(EOA_FINAL)) == (168070, 168071)
    with pytest.raises(VocabMismatchError):
        UnifiedVocab(load_text_tokenizer(), codec_id(4096), layout="reference")


def test_audio_codes_out_of_range(vocab: UnifiedVocab) -> None:
    with pytest.raises(ValueError):
        vocab.audio_ids([1024])
    with pytest.raises(ValueError):
        vocab.encode_mixed("hi <|audio_5000|>")
    with pytest.raises(ValueError):
        vocab.encode_mixed("<|begin_of_sound|>")


@settings(max_examples=60, deadline=None)
@given(
    pieces=st.lists(
        st.one_of(
            st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20).filter(
                lambda t: "<|" not in t
            ).map(
                lambda t: ("text", t)
            ),
            st.lists(st.integers(0, 1023), min_size=1, max_size=30).map(lambda c: ("audio", c)),
        ),
        max_size=8,
    )
)
def test_mixed_string_round_trip(vocab: UnifiedVocab, pieces: list) -> None:
    s = ""
    for kind, val in pieces:
        if kind == "text":
            s += val
        else:
            s += SOA + "".join(f"<|audio_{c}|>" for c in val) + EOA
    ids = vocab.encode_mixed(s)
    assert vocab.to_mixed_string(ids) == s
    codes = [c for seg in vocab.segments(ids) if seg.kind == "audio" for c in seg.codes.tolist()]
    assert codes == [c for kind, val in pieces if kind == "audio" for c in val]


def test_manifest_mismatch_names_fields(vocab: UnifiedVocab) -> None:
    other = UnifiedVocab(load_text_tokenizer(), codec_id(params_hash="zzz"))
    check_compatible(vocab.manifest(), vocab.manifest())
    with pytest.raises(VocabMismatchError, match=r"codec\.params_hash"):
        check_compatible(vocab.manifest(), other.manifest(), "checkpoint")
    bigger = UnifiedVocab(load_text_tokenizer(), codec_id(2048))
    with pytest.raises(VocabMismatchError, match="vocab_size"):
        check_compatible(vocab.manifest(), bigger.manifest())


def test_reference_layout_takes_marker_ids_from_a_tokenizer_that_defines_them(tmp_path) -> None:
    from tokenizers import AddedToken, Tokenizer

    from tokenization.text import bundled_tokenizer_dir

    tok = Tokenizer.from_file(str(bundled_tokenizer_dir() / "tokenizer.json"))
    markers = ["<|begin_of_quad|>", "<|end_of_audio|>", "<|begin_of_audio|>"]
    tok.add_special_tokens([AddedToken(m, special=True) for m in markers])
    tok.save(str(tmp_path / "tokenizer.json"))
    text = load_text_tokenizer(str(tmp_path))
    v = UnifiedVocab(text, codec_id(16384), layout="reference")
    assert [v.id(m) for m in markers] == [151669, 151670, 151671]  # the tokenizer's order, not our default
    assert v.id(SOA) == 151671 and v.id(MASK) == 168069
    assert len(set(v.specials.values())) == len(v.specials)
