"""A codec identity stated in config, for data whose audio is already codes: no weights, nothing to run.

The reference implementation releases its training data only as GLM-4-Voice codes written inline
(`<|audio_N|>`). Tokenizing and training on it needs the codec's *identity* (name, codebook size, rates:
what the vocabulary manifest records) but never its weights, so requiring the released weights
(`codec=glm4voice codec.tokenizer_path=...`) would only make a new user download gigabytes the job never
runs. `codec=glm4voice_declared` states that identity instead; the manifest records it with
`params_hash: declared`, and `tokenization.vocab.check_compatible` later accepts a real codec of the same
name, codebook size and rates for inference and evaluation, which need the decoder.

`encode` and `decode` fail with a message saying what to configure instead: a declared codec has nothing
to run, so silently returning nothing would hide a misconfigured job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tokenization.codecs.base import DECLARED, AudioCodec, CodecIdentity, StreamingDecoder

KIND = "declared"
_REQUIRED = ("name", "codebook_size", "token_rate", "sample_rate", "output_sample_rate")


class DeclaredCodec(AudioCodec):
    """The identity of a codec whose codes the data already holds; it cannot encode or decode."""

    def __init__(self, identity: CodecIdentity) -> None:
        if not identity.declared:
            raise ValueError(f"a declared codec's params_hash must be {DECLARED!r}, got {identity.params_hash!r}")
        self._identity = identity

    @property
    def identity(self) -> CodecIdentity:
        return self._identity

    @property
    def can_decode(self) -> bool:
        return False

    def _refuse(self, what: str) -> RuntimeError:
        return RuntimeError(
            f"codec {self._identity.name} is declared (codec kind {KIND!r}: its identity without weights), so it "
            f"cannot {what}; configure the real codec (e.g. codec=glm4voice with codec.tokenizer_path / "
            "codec.decoder_path) for data that is not already codes, or to hear the generated codes")

    def encode(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        raise self._refuse("encode audio")

    def decode(self, codes: np.ndarray) -> tuple[np.ndarray, int]:
        raise self._refuse("decode codes to audio")

    def stream_decoder(self) -> StreamingDecoder:
        raise self._refuse("decode codes to audio")


def load_codec(cfg: Mapping[str, Any]) -> DeclaredCodec:
    """Codec factory entry for `kind: declared` (fields: workflows/conf/codec/glm4voice_declared.yaml)."""
    missing = [k for k in _REQUIRED if cfg.get(k) in (None, "")]
    if missing:
        raise ValueError(f"codec kind {KIND!r} needs {', '.join(_REQUIRED)}; missing: {', '.join(missing)}")
    try:
        identity = CodecIdentity(
            name=str(cfg["name"]), version=str(cfg.get("version") or ""), token_rate=float(cfg["token_rate"]),
            codebook_size=int(cfg["codebook_size"]), sample_rate=int(cfg["sample_rate"]),
            output_sample_rate=int(cfg["output_sample_rate"]), params_hash=DECLARED)
    except (TypeError, ValueError) as e:
        raise ValueError(f"codec kind {KIND!r}: {e}") from None
    if identity.codebook_size <= 0 or identity.token_rate <= 0:
        raise ValueError(f"codec kind {KIND!r}: codebook_size and token_rate must be positive, got "
                         f"{identity.codebook_size} and {identity.token_rate}")
    return DeclaredCodec(identity)
