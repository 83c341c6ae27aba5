"""Build the unified vocabulary from config: text tokenizer + codec identity + layout.

Every entry point (tokenize job, training, sampler, CLI) builds its vocabulary here, so the same
config always gives the same manifest. Building needs only the codec's *identity*; callers that already
hold a codec (or an identity read from a manifest) pass it in and no codec weights are loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from tokenization.codecs.base import CodecIdentity
from tokenization.text import BUNDLED, load_text_tokenizer
from tokenization.text_subset import subset_tokenizer
from tokenization.vocab import UnifiedVocab

DEFAULT_LAYOUT = "compact"


def vocab_settings(cfg: Mapping[str, Any]) -> tuple[str, str]:
    """(text tokenizer path, vocabulary layout) from `cfg.data`, with the embedded defaults."""
    data = cfg.get("data") or {}
    return str(data.get("text_tokenizer") or BUNDLED), str(data.get("vocab_layout") or DEFAULT_LAYOUT)


@lru_cache(maxsize=8)
def make_vocab(text_tokenizer: str, identity: CodecIdentity, layout: str,
               text_subset: tuple[int, ...] = ()) -> UnifiedVocab:
    """One vocabulary per (tokenizer, codec identity, layout, text subset) and process: Ray workers call this
    per batch. `text_subset`: the base ids a corpus-sized text vocabulary keeps (tokenization.text_subset);
    empty = the whole tokenizer."""
    text = load_text_tokenizer(text_tokenizer)
    if text_subset:
        text = subset_tokenizer(text, text_subset)
    return UnifiedVocab(text, identity, layout=layout)


def manifest_subset(manifest: Mapping[str, Any]) -> tuple[int, ...]:
    """The text subset a vocabulary manifest records (empty for the whole tokenizer): how shards and
    checkpoints hand their text vocabulary to training and inference."""
    return tuple(int(i) for i in (manifest.get("text_tokenizer") or {}).get("base_ids") or ())


def build_vocab(cfg: Mapping[str, Any], codec_identity: CodecIdentity | None = None) -> UnifiedVocab:
    """The vocabulary of a full config (`data.text_tokenizer`, `data.vocab_layout`, `codec`).

    Without `codec_identity` the codec is loaded from `cfg.codec` to learn its identity.
    """
    if codec_identity is None:
        from tokenization.codecs import build_codec

        codec_identity = build_codec(cfg["codec"]).identity
    text_tokenizer, layout = vocab_settings(cfg)
    return make_vocab(text_tokenizer, codec_identity, layout)


__all__ = ["DEFAULT_LAYOUT", "build_vocab", "make_vocab", "manifest_subset", "vocab_settings"]
