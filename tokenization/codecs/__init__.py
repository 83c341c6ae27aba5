"""Audio codecs behind one interface (`base.AudioCodec`), and the factory that picks one from config.

`build_codec(cfg)` dispatches on `cfg["kind"]`. Each codec module is imported only when its kind is
asked for: the GLM-4-Voice and S3 codecs pull in torch model code and large weights, which the
embedded default (and `ttt --help`) must not pay for.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from tokenization.codecs.base import AudioCodec

# kind -> module exposing `load_codec(cfg: Mapping) -> AudioCodec`
CODEC_MODULES: dict[str, str] = {
    "declared": "tokenization.codecs.declared",
    "embedded": "tokenization.codecs.embedded",
    "glm4voice": "tokenization.codecs.glm4voice",
    "s3": "tokenization.codecs.s3",
}


def build_codec(cfg: Mapping[str, Any]) -> AudioCodec:
    """The codec described by a `codec` config group (`kind` plus that codec's own fields)."""
    kind = cfg.get("kind") if isinstance(cfg, Mapping) else None
    if kind not in CODEC_MODULES:
        raise ValueError(f"unknown codec kind {kind!r}; known kinds: {', '.join(sorted(CODEC_MODULES))} "
                         "(set codec.kind or pick a codec config group, e.g. codec=embedded)")
    module = importlib.import_module(CODEC_MODULES[kind])
    codec = module.load_codec(cfg)
    if not isinstance(codec, AudioCodec):
        raise TypeError(f"{CODEC_MODULES[kind]}.load_codec returned {type(codec).__name__}, not an AudioCodec")
    return codec


__all__ = ["CODEC_MODULES", "AudioCodec", "build_codec"]
