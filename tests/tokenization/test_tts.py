"""Offline voices: every listed voice speaks, deterministically, at its declared rate."""

from __future__ import annotations

import numpy as np
import pytest

from tokenization.tts import Voice, get_voice, list_voices

TEXTS = {"en": "On Monday, Alice bought 42 apples. Why?", "zh": "今天天气很好，我们去公园散步吧。"}


def test_list_voices_names_the_shipped_voices() -> None:
    assert list_voices() == ["espeak:cmn", "espeak:en", "piper:joe"]


@pytest.mark.parametrize("name", ["piper:joe", "espeak:en", "espeak:cmn"])
def test_voice_speaks_deterministically(name: str) -> None:
    voice = get_voice(name)
    assert isinstance(voice, Voice)
    assert voice.name == name
    text = TEXTS[voice.language]
    first = voice.synthesize(text)
    voice.synthesize(text[::-1])  # synthesis state left behind by other text must not leak into the next
    second = voice.synthesize(text)
    assert first.dtype == np.float32 and first.ndim == 1
    seconds = len(first) / voice.sample_rate
    assert 1.0 < seconds < 10.0
    assert np.all(np.isfinite(first)) and 0.05 < np.abs(first).max() <= 1.0
    np.testing.assert_array_equal(first, second)


def test_voices_are_cached_per_process() -> None:
    assert get_voice("espeak:en") is get_voice("espeak:en")


def test_mandarin_voice_reads_characters_not_spelling() -> None:
    """espeak without the cmn dictionary spells unknown characters out, which takes far longer."""
    voice = get_voice("espeak:cmn")
    seconds = len(voice.synthesize("你好")) / voice.sample_rate
    assert seconds < 1.5


def test_longer_text_gives_longer_audio() -> None:
    voice = get_voice("espeak:en")
    short = voice.synthesize("Hello.")
    long = voice.synthesize("Hello. This sentence is considerably longer than the first one.")
    assert len(long) > 2 * len(short)


def test_unknown_voice_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"unknown voice 'piper:nobody'.*espeak:en"):
        get_voice("piper:nobody")


@pytest.mark.parametrize("name", ["piper:joe", "espeak:en"])
def test_blank_text_is_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="blank text"):
        get_voice(name).synthesize("  ")
