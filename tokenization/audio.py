"""Audio I/O shared by codecs, readers and evaluation: load with soundfile, downmix, resample.

soundfile (libsndfile) reads wav, flac, mp3 and ogg/opus without torchaudio or ffmpeg; resampling uses
scipy's polyphase filter, which is exact for the integer ratios between common rates (16k/22.05k/24k/48k).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly


@dataclass(frozen=True)
class AudioInfo:
    """What was done to make a waveform canonical; readers record it instead of failing."""

    orig_sample_rate: int
    orig_channels: int
    resampled: bool
    downmixed: bool


def to_mono(wav: np.ndarray) -> np.ndarray:
    """(samples,) or (samples, channels) -> (samples,) float32, averaging channels."""
    wav = np.asarray(wav, dtype=np.float32)
    return wav if wav.ndim == 1 else wav.mean(axis=1)


def resample(wav: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited polyphase resampling; identity when the rates match."""
    if sr_in == sr_out:
        return np.asarray(wav, dtype=np.float32)
    ratio = Fraction(sr_out, sr_in).limit_denominator(1000)
    return resample_poly(wav, ratio.numerator, ratio.denominator).astype(np.float32)


def load_audio(
    source: str | Path | bytes,
    target_sr: int | None = None,
    start_s: float = 0.0,
    end_s: float | None = None,
) -> tuple[np.ndarray, int, AudioInfo]:
    """Read a file (or encoded bytes), optionally a time window of it, as mono float32 at `target_sr`.

    Raises soundfile/ValueError errors unchanged: callers (the tokenize job) turn them into quarantine rows.
    """
    handle = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    with sf.SoundFile(handle) as f:
        sr, channels = f.samplerate, f.channels
        if start_s:
            f.seek(round(start_s * sr))
        frames = -1 if end_s is None else max(0, round((end_s - start_s) * sr))
        wav = f.read(frames=frames, dtype="float32", always_2d=True)
    mono = to_mono(wav)
    out_sr = target_sr or sr
    out = resample(mono, sr, out_sr)
    return out, out_sr, AudioInfo(sr, channels, out_sr != sr, channels > 1)


def write_audio(path: str | Path, wav: np.ndarray, sample_rate: int) -> None:
    """Write mono float audio; the format follows the suffix (.wav, .flac, .ogg, .mp3)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(wav, dtype=np.float32), sample_rate)
