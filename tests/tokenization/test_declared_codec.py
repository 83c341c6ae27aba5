"""A declared codec identity (issue #17): GLM-4-Voice's name, codebook size and rates without its weights, for
data that is already codes. It builds the vocabulary and manifest (recorded as declared), refuses to encode or
decode, and a real codec with the same name, size and rates is accepted against its manifest while any other
is refused, naming the fields."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from tokenization.codecs import build_codec
from tokenization.codecs.base import DECLARED, CodecIdentity
from tokenization.text import load_text_tokenizer
from tokenization.vocab import UnifiedVocab, VocabMismatchError, check_compatible

ROOT = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((ROOT / "workflows/conf/codec/glm4voice_declared.yaml").read_text())
# what GLM4VoiceCodec.identity gives with the released weights (the hash is of the tokenizer files)
REAL = CodecIdentity("glm4voice", "1", 12.5, 16384, 16000, 22050, "ab" * 32)


def manifest(identity: CodecIdentity) -> dict:
    return UnifiedVocab(load_text_tokenizer(), identity, layout="reference").manifest()


def test_declared_glm4voice_identity_builds_the_reference_vocabulary_without_weights() -> None:
    codec = build_codec(CONFIG)
    identity = codec.identity
    assert identity == CodecIdentity("glm4voice", "", 12.5, 16384, 16000, 22050, DECLARED) and identity.declared
    assert not codec.can_decode and codec.num_codes(16000, 16000) == 13
    assert manifest(identity)["codec"]["params_hash"] == "declared"  # the manifest says so
    with pytest.raises(RuntimeError, match=r"codec glm4voice is declared .* cannot encode audio"):
        codec.encode(np.zeros(1600, np.float32), 16000)
    with pytest.raises(RuntimeError, match="cannot decode codes to audio; configure the real codec"):
        codec.decode(np.arange(3))
    with pytest.raises(RuntimeError, match="cannot decode"):
        codec.stream_decoder()


def test_declared_config_needs_every_identity_field() -> None:
    with pytest.raises(ValueError, match="missing: codebook_size, token_rate"):
        build_codec({"kind": "declared", "name": "glm4voice", "sample_rate": 16000, "output_sample_rate": 22050})
    with pytest.raises(ValueError, match="must be positive"):
        build_codec({**CONFIG, "token_rate": 0})


def test_a_real_codec_of_the_same_name_size_and_rates_matches_a_declared_manifest() -> None:
    declared = manifest(build_codec(CONFIG).identity)
    check_compatible(manifest(REAL), declared, "checkpoint")
    check_compatible(declared, manifest(REAL), "checkpoint")
    for field, value in (("codebook_size", 16383), ("token_rate", 25.0), ("name", "s3"), ("sample_rate", 24000),
                         ("output_sample_rate", 24000)):
        other = replace(REAL, **{field: value})
        if field == "codebook_size":  # the reference layout itself refuses other sizes
            with pytest.raises(VocabMismatchError, match="needs a 16384-code codec"):
                manifest(other)
            continue
        with pytest.raises(VocabMismatchError, match=rf"codec\.{field}: "):
            check_compatible(manifest(other), declared, "checkpoint")
    # two real codecs still differ by their weights' hash, two declared ones by their version
    with pytest.raises(VocabMismatchError, match=r"codec\.params_hash"):
        check_compatible(manifest(REAL), manifest(replace(REAL, params_hash="cd" * 32)))
    with pytest.raises(VocabMismatchError, match=r"codec\.version"):
        check_compatible(declared, manifest(replace(build_codec(CONFIG).identity, version="2")))


def test_glm4voice_without_weights_points_at_the_declared_codec() -> None:
    with pytest.raises(ValueError, match=r"tokenizer_path is not set.*codec=glm4voice_declared"):
        build_codec({"kind": "glm4voice", "device": "cpu"})
