"""CosyVoice S3 tokenizer and codec: every release variant at reduced size, random weights, real load path."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tokenization.audio import resample
from tokenization.codecs.cosyvoice_decoder import make_random_cosyvoice_decoder
from tokenization.codecs.s3 import (
    VARIANTS,
    S3Codec,
    S3Tokenizer,
    load_codec,
    make_random_s3_tokenizer,
)

SR = 16000
CONF = Path(__file__).resolve().parents[2] / "workflows" / "conf" / "codec"
# Mel frames (hop 160) per code: conv strides 1x2 (50 Hz) or 2x2 (25 Hz).
FRAMES_PER_CODE = {
    "speech_tokenizer_v1": 2,
    "speech_tokenizer_v1_25hz": 4,
    "speech_tokenizer_v2_25hz": 4,
    "speech_tokenizer_v3_25hz": 4,
}
CODEBOOK = {
    "speech_tokenizer_v1": 4096,
    "speech_tokenizer_v1_25hz": 4096,
    "speech_tokenizer_v2_25hz": 6561,
    "speech_tokenizer_v3_25hz": 6561,
}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on the shared 2-core machine, more threads spin against each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("s3")
    return {name: make_random_s3_tokenizer(root / name, name, n_state=128, n_layer=2) for name in VARIANTS}


@pytest.fixture(scope="module")
def tokenizers(weights: dict[str, Path]) -> dict[str, S3Tokenizer]:
    return {name: S3Tokenizer.from_path(path.parent, name, batch_size=4) for name, path in weights.items()}


def noise(seconds: float, seed: int, sr: int = SR) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * sr)) * 0.1).astype(np.float32)


def test_random_weights_use_release_file_names(weights: dict[str, Path]) -> None:
    assert {name: path.name for name, path in weights.items()} == {
        "speech_tokenizer_v1": "speech_tokenizer_v1.pt",
        "speech_tokenizer_v1_25hz": "speech_tokenizer_v1.pt",
        "speech_tokenizer_v2_25hz": "speech_tokenizer_v2.pt",
        "speech_tokenizer_v3_25hz": "speech_tokenizer_v3.pt",
    }
    codebook = torch.load(weights["speech_tokenizer_v1"], weights_only=True)["quantizer._codebook.embed"]
    assert torch.allclose(codebook.norm(dim=1), torch.ones(4096))


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("n", [201, 1000, 16000, 23456])
def test_code_count_and_range(tokenizers: dict[str, S3Tokenizer], name: str, n: int) -> None:
    tok = tokenizers[name]
    codes = tok.encode_batch([noise(n / SR, seed=n)], [SR])[0]
    assert codes.dtype == np.int64
    assert len(codes) == math.ceil((n // 160) / FRAMES_PER_CODE[name]) == tok.num_codes(n)
    assert codes.min() >= 0 and codes.max() < CODEBOOK[name] == tok.codebook_size


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_codes_vary_over_time(tokenizers: dict[str, S3Tokenizer], name: str) -> None:
    assert len(np.unique(tokenizers[name].encode_batch([noise(3.0, seed=1)], [SR])[0])) > 5


@pytest.mark.parametrize("name", ["speech_tokenizer_v1", "speech_tokenizer_v2_25hz"])
def test_batch_equals_one_by_one(tokenizers: dict[str, S3Tokenizer], name: str) -> None:
    tok = tokenizers[name]
    waves = [noise(s, seed=i) for i, s in enumerate([0.3, 2.0, 1.07, 4.5, 0.05])]
    for wave, codes in zip(waves, tok.encode_batch(waves, [SR] * len(waves)), strict=True):
        np.testing.assert_array_equal(codes, tok.encode_batch([wave], [SR])[0])


@pytest.mark.parametrize(("name", "expected"), [("speech_tokenizer_v1", 1750), ("speech_tokenizer_v2_25hz", 875)])
def test_35_seconds_uses_windowed_merge(tokenizers: dict[str, S3Tokenizer], name: str, expected: int) -> None:
    """3500 frames -> windows [0, 3000) and [2600, 3500); 2 s of codes dropped at the shared edge of each.

    50 Hz: 1500 - 100 + 450 - 100 = 1750; 25 Hz: 750 - 50 + 225 - 50 = 875.
    """
    tok = tokenizers[name]
    long, short = noise(35.0, seed=2), noise(1.5, seed=3)
    codes = tok.encode_batch([long, short], [SR, SR])
    assert len(codes[0]) == expected == tok.num_codes(len(long))
    np.testing.assert_array_equal(codes[1], tok.encode_batch([short], [SR])[0])


@pytest.mark.parametrize("rate", [22050, 44100])
def test_other_sample_rates_are_resampled(tokenizers: dict[str, S3Tokenizer], rate: int) -> None:
    tok = tokenizers["speech_tokenizer_v2_25hz"]
    wave = noise(2.3, seed=rate, sr=rate)
    codes = tok.encode_batch([wave], [rate])[0]
    np.testing.assert_array_equal(codes, tok.encode_batch([resample(wave, rate, SR)], [SR])[0])
    assert len(codes) == tok.num_codes(len(wave), rate)


def test_model_class_follows_the_name_not_the_file(weights: dict[str, Path]) -> None:
    """v1 and v1_25hz weights have equal shapes; only the canonical name sets the conv stride."""
    file = weights["speech_tokenizer_v1"]
    wave = noise(2.0, seed=9)
    at_50 = S3Tokenizer.from_path(file, "speech_tokenizer_v1").encode_batch([wave], [SR])[0]
    at_25 = S3Tokenizer.from_path(file, "speech_tokenizer_v1_25hz").encode_batch([wave], [SR])[0]
    assert (len(at_50), len(at_25)) == (100, 50)


def test_inputs_that_cannot_be_framed(tokenizers: dict[str, S3Tokenizer]) -> None:
    tok = tokenizers["speech_tokenizer_v1"]
    empty, normal = tok.encode_batch([np.zeros(0, np.float32), noise(0.5, seed=1)], [SR, SR])
    assert empty.shape == (0,) and len(normal) == 25
    with pytest.raises(ValueError, match="at least 201"):
        tok.encode_batch([np.zeros(200, np.float32)], [SR])
    with pytest.raises(ValueError, match="mono"):
        tok.encode_batch([np.zeros((400, 2), np.float32)], [SR])


def test_missing_and_wrong_weights(tmp_path: Path, weights: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="unknown S3 tokenizer"):
        S3Tokenizer.from_path(weights["speech_tokenizer_v1"], "speech_tokenizer_v4")
    with pytest.raises(FileNotFoundError, match=r"speech_tokenizer_v2\.onnx, speech_tokenizer_v2\.pt"):
        S3Tokenizer.from_path(tmp_path, "speech_tokenizer_v2_25hz")
    with pytest.raises(ValueError, match="missing"):
        S3Tokenizer.from_path(weights["speech_tokenizer_v2_25hz"], "speech_tokenizer_v1")
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"\.onnx or \.pt"):
        S3Tokenizer.from_path(bad, "speech_tokenizer_v1")


def test_codec_identity_and_encode_only(weights: dict[str, Path]) -> None:
    name = "speech_tokenizer_v2_25hz"
    cfg = {
        "kind": "s3",
        "model_name": name,
        "tokenizer_path": str(weights[name]),
        "decoder_path": None,
        "device": "cpu",
        "dtype": "float32",
        "batch_size": 4,
        "output_sample_rate": 24000,
    }
    codec = load_codec(cfg)
    assert isinstance(codec, S3Codec)
    ident = codec.identity
    assert (ident.name, ident.version, ident.token_rate, ident.codebook_size) == (
        "cosyvoice_s3",
        "speech_tokenizer_v2_25hz",
        25.0,
        6561,
    )
    assert (ident.sample_rate, ident.output_sample_rate) == (16000, 24000)
    assert ident.params_hash == load_codec(cfg).identity.params_hash
    other = load_codec(
        {**cfg, "model_name": "speech_tokenizer_v3_25hz", "tokenizer_path": str(weights["speech_tokenizer_v3_25hz"])}
    )
    assert other.identity.params_hash != ident.params_hash
    wave = noise(1.0, seed=4)
    np.testing.assert_array_equal(codec.encode(wave, SR), codec.encode_batch([wave], [SR])[0])
    assert codec.num_codes(len(wave), SR) == len(codec.encode(wave, SR)) == 25
    with pytest.raises(RuntimeError, match="decoder_path"):
        codec.decode(np.zeros(5, np.int64))


def test_shipped_yaml_and_decoder_composition(weights: dict[str, Path], tmp_path: Path) -> None:
    """s3.yaml (v1, 50 Hz, 4,096 codes) with local paths set; a CosyVoice-300M-shaped decoder decodes."""
    decoder = make_random_cosyvoice_decoder(tmp_path / "dec", vocab_size=4096, token_rate=50.0)
    cfg = OmegaConf.load(CONF / "s3.yaml")
    assert (cfg.kind, cfg.model_name, cfg.tokenizer_path, cfg.decoder_path) == ("s3", "speech_tokenizer_v1", None, None)
    cfg.tokenizer_path, cfg.decoder_path, cfg.device = str(weights["speech_tokenizer_v1"].parent), str(decoder), "cpu"
    codec = load_codec(cfg)
    assert (codec.identity.token_rate, codec.identity.codebook_size, codec.identity.output_sample_rate) == (
        50.0,
        4096,
        22050,
    )
    codes = codec.encode(noise(0.3, seed=5), SR)
    audio, rate = codec.decode(codes)
    assert len(codes) == 15 and rate == 22050
    assert audio.shape == (codec.decoder.num_samples(15),) and np.isfinite(audio).all()
    cfg.output_sample_rate = 24000
    with pytest.raises(ValueError, match=r"fix codec\.output_sample_rate"):
        load_codec(cfg)
