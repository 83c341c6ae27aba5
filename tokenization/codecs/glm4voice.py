"""Production codecs built like GLM-4-Voice: a supervised semantic speech tokenizer + a CosyVoice decoder.

`SemanticTokenCodec` joins any speech tokenizer (waveform -> codes: GLM-4-Voice's WhisperVQ here, the
CosyVoice S3 tokenizer in `tokenization.codecs.s3`) with an optional CosyVoice flow-matching + HiFT
decoder (codes -> waveform). The decoder is optional because the tokenize job only encodes; `decode`
then fails with an error that says how to configure one.

The identity's `params_hash` covers the tokenizer files only: the codes (what shards and the vocabulary
manifest depend on) are a function of the tokenizer alone, so encode-only tokenize runs and inference
with a decoder must agree on it. `output_sample_rate` comes from config for the same reason and is
checked against the decoder when one is loaded.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from tokenization.codecs.base import AudioCodec, CodecIdentity, StreamingDecoder, hash_arrays
from tokenization.codecs.cosyvoice_decoder import REQUIRED_FILES as DECODER_FILES
from tokenization.codecs.cosyvoice_decoder import CosyVoiceDecoder
from tokenization.codecs.whisper_vq import WhisperVQTokenizer

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class SpeechTokenizer(Protocol):
    """What a codec needs from an encoder (WhisperVQTokenizer, S3Tokenizer)."""

    sample_rate: int
    files: list[Path]

    @property
    def codebook_size(self) -> int: ...

    @property
    def token_rate(self) -> float: ...

    def num_codes(self, num_samples: int, sample_rate: int) -> int: ...

    def encode_batch(self, waveforms: Sequence[np.ndarray], sample_rates: Sequence[int]) -> list[np.ndarray]: ...


def hash_files(files: Sequence[Path], block_bytes: int = 1 << 22) -> str:
    """sha256 over each file's name, size and bytes, streamed (weights can be gigabytes)."""

    def blocks() -> Iterator[bytes]:
        for file in files:
            yield f"{file.name}:{file.stat().st_size}".encode()
            with open(file, "rb") as handle:
                while block := handle.read(block_bytes):
                    yield block

    return hash_arrays(blocks())


def parse_dtype(name: str) -> torch.dtype:
    """Config dtype name -> torch dtype (float32 reproduces the reference codes; bf16/fp16 are faster)."""
    try:
        return _DTYPES[str(name)]
    except KeyError:
        raise ValueError(f"codec dtype {name!r} is not one of {sorted(_DTYPES)}") from None


def resolve_device(name: str) -> torch.device:
    """Config device -> torch device, failing early and clearly when CUDA is asked for but absent."""
    device = torch.device(str(name))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("codec.device is cuda but torch sees no CUDA device; set codec.device=cpu")
    return device


def required_path(cfg: Mapping[str, Any], key: str) -> Path:
    """A path the config must set (production users point it at their local copy of the weights)."""
    value = cfg.get(key)
    if not value:
        raise ValueError(f"codec.{key} is not set: point it at a local directory of the released weights (data "
                         "whose audio is already codes needs none: codec=glm4voice_declared)")
    return Path(str(value)).expanduser()


def load_decoder(path: str | Path | None, device: torch.device) -> CosyVoiceDecoder | None:
    """The CosyVoice decoder in `path` (config.yaml, flow.pt, hift.pt), or None when no path is configured."""
    if not path:
        return None
    return CosyVoiceDecoder.from_dir(Path(str(path)).expanduser(), device=device)


class SemanticTokenCodec(AudioCodec):
    """A speech tokenizer plus an optional CosyVoice decoder, behind the project's `AudioCodec` interface."""

    def __init__(
        self,
        name: str,
        version: str,
        tokenizer: SpeechTokenizer,
        decoder: CosyVoiceDecoder | None,
        output_sample_rate: int,
    ) -> None:
        if decoder is not None:
            if (decoder.vocab_size, decoder.token_rate) != (tokenizer.codebook_size, tokenizer.token_rate):
                raise ValueError(
                    f"decoder takes {decoder.vocab_size} codes at {decoder.token_rate} Hz, the tokenizer gives "
                    f"{tokenizer.codebook_size} at {tokenizer.token_rate} Hz: they do not belong together"
                )
            if decoder.sample_rate != output_sample_rate:
                raise ValueError(
                    f"decoder outputs {decoder.sample_rate} Hz but output_sample_rate is "
                    f"{output_sample_rate}; fix codec.output_sample_rate"
                )
        self.name = name
        self.version = version
        self.tokenizer = tokenizer
        self.decoder = decoder
        self.output_sample_rate = int(output_sample_rate)

    @cached_property
    def identity(self) -> CodecIdentity:
        return CodecIdentity(
            name=self.name,
            version=self.version,
            token_rate=float(self.tokenizer.token_rate),
            codebook_size=int(self.tokenizer.codebook_size),
            sample_rate=int(self.tokenizer.sample_rate),
            output_sample_rate=self.output_sample_rate,
            params_hash=hash_files(self.tokenizer.files),
        )

    def encode(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        return self.tokenizer.encode_batch([waveform], [sample_rate])[0]

    def encode_batch(self, waveforms: Sequence[np.ndarray], sample_rates: Sequence[int]) -> list[np.ndarray]:
        return self.tokenizer.encode_batch(waveforms, sample_rates)

    def num_codes(self, num_samples: int, sample_rate: int) -> int:
        return self.tokenizer.num_codes(num_samples, sample_rate)

    @property
    def can_decode(self) -> bool:
        return self.decoder is not None

    def _require_decoder(self) -> CosyVoiceDecoder:
        if self.decoder is None:
            raise RuntimeError(
                f"codec {self.name} was loaded without a decoder (encode-only); set "
                f"codec.decoder_path to a CosyVoice decoder directory ({', '.join(DECODER_FILES)})"
            )
        return self.decoder

    def decode(self, codes: np.ndarray) -> tuple[np.ndarray, int]:
        decoder = self._require_decoder()
        return np.asarray(decoder.decode(codes), dtype=np.float32), decoder.sample_rate

    def stream_decoder(self) -> StreamingDecoder:
        return self._require_decoder().stream_decoder()


class GLM4VoiceCodec(SemanticTokenCodec):
    """GLM-4-Voice speech tokenizer (12.5 Hz, 16,384 codes) + its CosyVoice decoder (22.05 kHz)."""

    NAME = "glm4voice"
    # Version of our encode procedure (30 s chunks, per-chunk features); bump when it changes codes.
    VERSION = "1"

    def __init__(
        self, tokenizer: WhisperVQTokenizer, decoder: CosyVoiceDecoder | None = None, output_sample_rate: int = 22050
    ) -> None:
        super().__init__(self.NAME, self.VERSION, tokenizer, decoder, output_sample_rate)


def load_codec(cfg: Mapping[str, Any]) -> GLM4VoiceCodec:
    """Codec factory entry for `kind: glm4voice` (see workflows/conf/codec/glm4voice.yaml for the fields)."""
    kind = cfg.get("kind", GLM4VoiceCodec.NAME)
    if kind != GLM4VoiceCodec.NAME:
        raise ValueError(f"tokenization.codecs.glm4voice.load_codec got kind {kind!r}")
    device = resolve_device(cfg.get("device", "cpu"))
    tokenizer = WhisperVQTokenizer.from_dir(
        required_path(cfg, "tokenizer_path"),
        device=device,
        dtype=parse_dtype(cfg.get("dtype", "float32")),
        batch_size=int(cfg.get("batch_size", 64)),
    )
    decoder = load_decoder(cfg.get("decoder_path"), device)
    return GLM4VoiceCodec(tokenizer, decoder, int(cfg.get("output_sample_rate", 22050)))
