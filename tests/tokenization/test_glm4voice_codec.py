"""GLM4VoiceCodec through its config entry point: identity, encode-only use, and encode -> decode."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tokenization.codecs.base import AudioCodec
from tokenization.codecs.cosyvoice_decoder import make_random_cosyvoice_decoder
from tokenization.codecs.glm4voice import GLM4VoiceCodec, load_codec
from tokenization.codecs.whisper_vq import make_random_whisper_vq

SR = 16000
CONF = Path(__file__).resolve().parents[2] / "workflows" / "conf" / "codec"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on the shared 2-core machine, more threads spin against each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_whisper_vq(tmp_path_factory.mktemp("glm_tok"), d_model=64, layers=2, heads=2, ffn_dim=128)


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_cosyvoice_decoder(tmp_path_factory.mktemp("glm_dec"), vocab_size=16384, token_rate=12.5)


def config(tokenizer_dir: Path, **overrides: object) -> dict:
    return {
        "kind": "glm4voice",
        "tokenizer_path": str(tokenizer_dir),
        "decoder_path": None,
        "device": "cpu",
        "dtype": "float32",
        "batch_size": 4,
        "output_sample_rate": 22050,
        **overrides,
    }


def noise(seconds: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * SR)) * 0.1).astype(np.float32)


@pytest.fixture(scope="module")
def codec(tokenizer_dir: Path) -> GLM4VoiceCodec:
    return load_codec(config(tokenizer_dir))


def test_identity(codec: GLM4VoiceCodec, tokenizer_dir: Path, tmp_path: Path) -> None:
    ident = codec.identity
    assert isinstance(codec, AudioCodec)
    assert (ident.name, ident.version, ident.token_rate, ident.codebook_size) == ("glm4voice", "1", 12.5, 16384)
    assert (ident.sample_rate, ident.output_sample_rate) == (16000, 22050)
    assert len(ident.params_hash) == 64
    assert load_codec(config(tokenizer_dir)).identity == ident
    other = make_random_whisper_vq(tmp_path / "other", d_model=64, layers=2, heads=2, ffn_dim=128, seed=1)
    assert load_codec(config(other)).identity.params_hash != ident.params_hash


def test_encode_paths_agree(codec: GLM4VoiceCodec) -> None:
    waves = [noise(1.3, seed=1), noise(0.2, seed=2)]
    batched = codec.encode_batch(waves, [SR, SR])
    for wave, codes in zip(waves, batched, strict=True):
        np.testing.assert_array_equal(codec.encode(wave, SR), codes)
        assert len(codes) == codec.num_codes(len(wave), SR)


def test_bfloat16_gives_valid_codes(tokenizer_dir: Path) -> None:
    codes = load_codec(config(tokenizer_dir, dtype="bfloat16")).encode(noise(2.0, seed=3), SR)
    assert len(codes) == 25 and codes.min() >= 0 and codes.max() < 16384


def test_encode_only_codec_cannot_decode(codec: GLM4VoiceCodec) -> None:
    with pytest.raises(RuntimeError, match="decoder_path"):
        codec.decode(np.zeros(4, np.int64))
    with pytest.raises(RuntimeError, match="decoder_path"):
        codec.stream_decoder()


def test_config_errors(tokenizer_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tokenizer_path is not set"):
        load_codec(config(tokenizer_dir, tokenizer_path=None))
    with pytest.raises(ValueError, match="kind 's3'"):
        load_codec(config(tokenizer_dir, kind="s3"))
    with pytest.raises(ValueError, match="dtype 'fp8'"):
        load_codec(config(tokenizer_dir, dtype="fp8"))
    with pytest.raises(FileNotFoundError, match=r"flow\.pt"):
        load_codec(config(tokenizer_dir, decoder_path=str(tmp_path)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when CUDA is absent")
def test_cuda_without_gpu_is_a_clear_error(tokenizer_dir: Path) -> None:
    with pytest.raises(RuntimeError, match=r"set codec\.device=cpu"):
        load_codec(config(tokenizer_dir, device="cuda"))


def test_shipped_yaml_loads_with_local_paths(tokenizer_dir: Path) -> None:
    cfg = OmegaConf.load(CONF / "glm4voice.yaml")
    assert cfg.kind == "glm4voice" and cfg.tokenizer_path is None and cfg.decoder_path is None
    cfg.tokenizer_path, cfg.device = str(tokenizer_dir), "cpu"
    assert load_codec(cfg).identity.codebook_size == 16384


def test_encode_then_decode(tokenizer_dir: Path, decoder_dir: Path, codec: GLM4VoiceCodec) -> None:
    full = load_codec(config(tokenizer_dir, decoder_path=str(decoder_dir)))
    assert full.identity == codec.identity  # the decoder does not change what the codes mean
    codes = full.encode(noise(0.4, seed=4), SR)
    audio, rate = full.decode(codes)
    assert rate == 22050 and audio.dtype == np.float32
    assert audio.shape == (full.decoder.num_samples(len(codes)),) and np.isfinite(audio).all()
    with pytest.raises(ValueError, match=r"must lie in \[0, 16384\)"):
        full.decode(np.array([16384]))


def test_decoder_of_another_vocabulary_is_rejected(tokenizer_dir: Path, tmp_path: Path) -> None:
    s3_decoder = make_random_cosyvoice_decoder(tmp_path / "dec4096", vocab_size=4096, token_rate=50.0)
    with pytest.raises(ValueError, match="do not belong together"):
        load_codec(config(tokenizer_dir, decoder_path=str(s3_decoder)))
