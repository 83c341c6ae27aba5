"""The embedded codec on a tiny fit (a few seconds of espeak speech, 2 x 16 codes): contract, determinism,
streaming equivalence and input validation. Quality is measured by bench/codec.py, not here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tokenization.codecs import build_codec
from tokenization.codecs.embedded import (
    META_FILE,
    PARAMS_FILE,
    EmbeddedCodec,
    EmbeddedCodecConfig,
    fit_embedded_codec,
    load_codec,
)
from tokenization.tts import get_voice

TINY = {  # two residual stages at 25 Hz: exercises the interleaved layout the default (one stage) skips
    "kind": "embedded",
    "frames_per_token": 4,
    "codebook_sizes": [16, 16],
    "pca_dim": 8,
    "kmeans_iterations": 4,
    "griffin_lim_iterations": 4,
    "block_frames": 16,
    "lookahead_frames": 4,
}
TEXTS = [
    "Alice will meet Bob on Monday at nine o'clock.",
    "How many apples did the farmer find near the station?",
    "The quiet garden costs forty dollars.",
]


@pytest.fixture(scope="module")
def speech() -> list[tuple[np.ndarray, int]]:
    voice = get_voice("espeak:en")
    return [(voice.synthesize(t), voice.sample_rate) for t in TEXTS]


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory: pytest.TempPathFactory, speech: list[tuple[np.ndarray, int]]) -> Path:
    return fit_embedded_codec(speech, TINY, tmp_path_factory.mktemp("codec"), seed=0)


@pytest.fixture(scope="module")
def codec(codec_dir: Path) -> EmbeddedCodec:
    return EmbeddedCodec.load(codec_dir)


def test_artifact_and_identity(codec_dir: Path, codec: EmbeddedCodec) -> None:
    assert (codec_dir / PARAMS_FILE).is_file()
    meta = json.loads((codec_dir / META_FILE).read_text())
    ident = codec.identity
    assert (ident.name, ident.version) == ("ttt-embedded", meta["version"])
    assert ident.token_rate == 50.0  # 25 codec frames/s x 2 stages
    assert ident.codebook_size == 32
    assert ident.sample_rate == ident.output_sample_rate == 16000
    assert ident.params_hash == meta["params_hash"] and len(ident.params_hash) == 64


def test_fit_is_deterministic_per_seed(
    tmp_path: Path, speech: list[tuple[np.ndarray, int]], codec: EmbeddedCodec
) -> None:
    again = EmbeddedCodec.load(fit_embedded_codec(speech, TINY, tmp_path / "same", seed=0))
    other = EmbeddedCodec.load(fit_embedded_codec(speech, TINY, tmp_path / "other", seed=1))
    assert again.identity.params_hash == codec.identity.params_hash
    assert other.identity.params_hash != codec.identity.params_hash


def test_encode_layout_and_rate(codec: EmbeddedCodec, speech: list[tuple[np.ndarray, int]]) -> None:
    wav, sr = speech[0]
    codes = codec.encode(wav, sr)
    assert codes.dtype == np.int64 and codes.ndim == 1
    assert len(codes) == codec.num_codes(len(wav), sr)
    assert abs(len(codes) - len(wav) / sr * codec.identity.token_rate) <= 2  # at most one frame of padding
    assert np.all((codes[0::2] >= 0) & (codes[0::2] < 16))  # stage 0 ids first in every frame
    assert np.all((codes[1::2] >= 16) & (codes[1::2] < 32))  # then stage 1, offset by stage 0's size
    np.testing.assert_array_equal(codec.encode(wav, sr), codes)


def test_encode_batch_matches_encode(codec: EmbeddedCodec, speech: list[tuple[np.ndarray, int]]) -> None:
    batch = codec.encode_batch([w for w, _ in speech], [sr for _, sr in speech])
    for (wav, sr), codes in zip(speech, batch, strict=True):
        np.testing.assert_array_equal(codes, codec.encode(wav, sr))


def test_encoding_ignores_input_level(codec: EmbeddedCodec, speech: list[tuple[np.ndarray, int]]) -> None:
    wav, sr = speech[1]
    np.testing.assert_array_equal(codec.encode(wav * 0.5, sr), codec.encode(wav, sr))


def test_round_trip_keeps_the_loudness_contour(codec: EmbeddedCodec, speech: list[tuple[np.ndarray, int]]) -> None:
    wav, sr = speech[1]
    audio, out_sr = codec.decode(codec.encode(wav, sr))
    assert out_sr == 16000 and audio.dtype == np.float32
    assert len(audio) == len(codec.encode(wav, sr)) // 2 * 640
    assert np.all(np.isfinite(audio))
    step = sr // 25
    original = np.sqrt(np.mean(np.pad(wav, (0, -len(wav) % step)).reshape(-1, step) ** 2, axis=1))
    decoded = np.sqrt(np.mean(audio.reshape(-1, 640) ** 2, axis=1))[: len(original)]
    assert np.corrcoef(np.log(original + 1e-4), np.log(decoded + 1e-4))[0, 1] > 0.7


@pytest.mark.parametrize("chunk", [1, 3, 8, 50])
def test_streaming_equals_whole_decode(codec: EmbeddedCodec, speech: list[tuple[np.ndarray, int]], chunk: int) -> None:
    codes = codec.encode(*speech[2])
    whole, _ = codec.decode(codes)
    stream = codec.stream_decoder()
    pieces = [stream.push(codes[i : i + chunk]) for i in range(0, len(codes), chunk)]
    assert sum(len(p) for p in pieces) > 0  # audio arrives before the end of the stream
    pieces.append(stream.flush())
    np.testing.assert_allclose(np.concatenate(pieces), whole, atol=1e-5)


def test_stream_rejects_a_partial_last_frame(codec: EmbeddedCodec, speech: list[tuple[np.ndarray, int]]) -> None:
    stream = codec.stream_decoder()
    stream.push(codec.encode(*speech[0])[:5])
    with pytest.raises(ValueError, match="inside a codec frame"):
        stream.flush()


def test_stream_rejects_non_integer_codes(codec: EmbeddedCodec) -> None:
    with pytest.raises(ValueError, match="integer"):
        codec.stream_decoder().push(np.array([1.0, 17.0]))


def test_empty_codes_decode_to_empty_audio(codec: EmbeddedCodec) -> None:
    audio, sr = codec.decode(np.zeros(0, dtype=np.int64))
    assert audio.shape == (0,) and sr == 16000


@pytest.mark.parametrize(
    ("waveform", "message"),
    [
        (np.zeros(0, dtype=np.float32), "empty"),
        (np.array([0.1, np.nan, 0.2], dtype=np.float32), "NaN"),
        (np.zeros((100, 2), dtype=np.float32), "mono"),
    ],
)
def test_encode_rejects_bad_input(codec: EmbeddedCodec, waveform: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        codec.encode(waveform, 16000)


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        (np.array([1, 17, 2]), "whole number of frames"),
        (np.array([1, 2]), "not a stage-1 code"),
        (np.array([1.5, 17.0]), "integer"),
    ],
)
def test_decode_rejects_malformed_codes(codec: EmbeddedCodec, codes: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        codec.decode(codes)


def test_fit_rejects_bad_input(tmp_path: Path, speech: list[tuple[np.ndarray, int]]) -> None:
    with pytest.raises(ValueError, match="no audio"):
        fit_embedded_codec([], TINY, tmp_path)
    with pytest.raises(ValueError, match="too few"):
        fit_embedded_codec(speech[:1], {**TINY, "codebook_sizes": [4096]}, tmp_path)
    with pytest.raises(ValueError, match="NaN"):
        fit_embedded_codec([(np.full(16000, np.nan, dtype=np.float32), 16000)], TINY, tmp_path)
    with pytest.raises(ValueError, match="unknown embedded codec settings"):
        fit_embedded_codec(speech, {**TINY, "codebook_size": 16}, tmp_path)


def test_load_checks_presence_and_integrity(tmp_path: Path, codec_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no fitted embedded codec"):
        EmbeddedCodec.load(tmp_path)
    meta = json.loads((codec_dir / META_FILE).read_text())
    (tmp_path / PARAMS_FILE).write_bytes((codec_dir / PARAMS_FILE).read_bytes())
    (tmp_path / META_FILE).write_text(json.dumps({**meta, "params_hash": "0" * 64}))
    with pytest.raises(ValueError, match="does not match"):
        EmbeddedCodec.load(tmp_path)


def test_factories_load_the_fitted_codec(codec_dir: Path, codec: EmbeddedCodec) -> None:
    cfg = {**TINY, "path": str(codec_dir)}
    assert load_codec(cfg).identity == codec.identity
    assert build_codec(cfg).identity == codec.identity
    assert EmbeddedCodec.load(codec_dir / PARAMS_FILE).identity == codec.identity
    with pytest.raises(ValueError, match="needs `path`"):
        load_codec({"kind": "embedded"})


def test_the_shipped_codec_group_is_the_dataclass_default() -> None:
    """workflows/conf/codec/embedded.yaml states the defaults users read; the dataclass must not drift from it."""
    shipped = yaml.safe_load((Path(__file__).resolve().parents[2] / "workflows/conf/codec/embedded.yaml").read_text())
    assert EmbeddedCodecConfig.from_mapping({k: v for k, v in shipped.items() if k not in ("kind", "path")}) == (
        EmbeddedCodecConfig())


def test_config_validation() -> None:
    default = EmbeddedCodecConfig()
    assert (default.token_rate, default.codebook_sizes) == (50.0, (4096,))  # one code per 20 ms frame
    assert EmbeddedCodecConfig.from_mapping({"codebook_sizes": [8, 4]}).codebook_sizes == (8, 4)
    with pytest.raises(ValueError, match="pca_dim"):
        EmbeddedCodecConfig.from_mapping({"pca_dim": 1000})
    with pytest.raises(ValueError, match="n_fft"):
        EmbeddedCodecConfig.from_mapping({"n_fft": 200, "hop_length": 160})
