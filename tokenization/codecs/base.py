"""One interface for every audio codec the system uses.

The rest of the system (tokenize job, sampler, evaluation, CLI) only sees `AudioCodec`: waveforms in,
1-D integer codes out at a declared token rate, and back. A codec's identity (name, version, token rate,
codebook size, hash of its fitted/loaded parameters) goes into the vocabulary manifest, so a model
never silently trains or decodes with codes from a different codec.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

# `params_hash` of an identity that is declared in config rather than measured from loaded weights: data that is
# already codes (the reference implementation's released JSON) needs the codec's identity, not its weights.
DECLARED = "declared"


@dataclass(frozen=True)
class CodecIdentity:
    """What the vocabulary manifest records about a codec; two codecs with equal identity give equal codes."""

    name: str
    version: str
    token_rate: float  # codes per second of audio (all codebooks of a frame counted)
    codebook_size: int  # number of distinct codes = number of audio tokens in the vocabulary
    sample_rate: int  # rate `encode` works at internally (inputs are resampled to it)
    output_sample_rate: int  # rate of `decode` output
    params_hash: str  # sha256 of the fitted/loaded parameters ("" for parameter-free codecs)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def declared(self) -> bool:
        """Stated in config, not hashed from weights: the manifest of pre-coded data says so (`params_hash`)."""
        return self.params_hash == DECLARED


class StreamingDecoder(ABC):
    """Turns code blocks into audio as they arrive, so playback can start before a turn is finished."""

    @abstractmethod
    def push(self, codes: np.ndarray) -> np.ndarray:
        """Feed the next block of codes; return the audio that is final so far (may be empty)."""

    @abstractmethod
    def flush(self) -> np.ndarray:
        """Return the remaining audio once no more codes will come."""


class AudioCodec(ABC):
    """Waveform <-> integer codes. Implementations: embedded (fitted here), GLM-4-Voice, CosyVoice S3."""

    @property
    @abstractmethod
    def identity(self) -> CodecIdentity:
        """Name, version, rates, codebook size and parameter hash (for the manifest)."""

    @abstractmethod
    def encode(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """Mono float waveform (any rate; resampled internally) -> int64 codes in [0, codebook_size)."""

    @abstractmethod
    def decode(self, codes: np.ndarray) -> tuple[np.ndarray, int]:
        """int codes -> (mono float32 waveform, sample rate)."""

    @property
    def can_decode(self) -> bool:
        """Whether `decode` works; False for an encode-only or declared codec, whose callers keep the codes
        instead of speech (inference then still answers, with codes and no waveform)."""
        return True

    def encode_batch(self, waveforms: Sequence[np.ndarray], sample_rates: Sequence[int]) -> list[np.ndarray]:
        """Encode many utterances; implementations on accelerators override this to batch."""
        return [self.encode(w, sr) for w, sr in zip(waveforms, sample_rates, strict=True)]

    def stream_decoder(self) -> StreamingDecoder:
        """A streaming decoder; the default re-decodes everything and emits the new tail."""
        return _RedecodeStreamingDecoder(self)

    def num_codes(self, num_samples: int, sample_rate: int) -> int:
        """How many codes `encode` returns for audio of this length (for batching by duration)."""
        return int(np.ceil(num_samples / sample_rate * self.identity.token_rate))


class _RedecodeStreamingDecoder(StreamingDecoder):
    """Fallback streaming: decode the whole prefix each time and return only the new samples.

    Exact for any codec whose decode of a prefix is a prefix of the decode of the whole (frame-local
    decoders); codecs with context-dependent decoders override `stream_decoder` with overlap-add.
    """

    def __init__(self, codec: AudioCodec) -> None:
        self._codec = codec
        self._codes: list[np.ndarray] = []
        self._emitted = 0

    def push(self, codes: np.ndarray) -> np.ndarray:
        self._codes.append(np.asarray(codes, dtype=np.int64))
        audio, _ = self._codec.decode(np.concatenate(self._codes))
        new = audio[self._emitted :]
        self._emitted = len(audio)
        return new

    def flush(self) -> np.ndarray:
        return np.zeros(0, dtype=np.float32)


def hash_arrays(arrays: Iterable[np.ndarray | bytes]) -> str:
    """Content hash of parameters, stable across processes (used for `CodecIdentity.params_hash`)."""
    h = hashlib.sha256()
    for a in arrays:
        if isinstance(a, bytes):
            h.update(a)
        else:
            arr = np.ascontiguousarray(a)
            h.update(str(arr.dtype).encode())
            h.update(str(arr.shape).encode())
            h.update(arr.tobytes())
    return h.hexdigest()
