"""GLM-4-Voice WhisperVQ tokenizer: real architecture at reduced size, random weights, release layout."""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tokenization.audio import resample
from tokenization.codecs.whisper_vq import (
    WhisperVQTokenizer,
    _attention_bias,
    make_random_whisper_vq,
    torchaudio_optional,
)

SR = 16000


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on the shared 2-core machine, more threads spin against each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_whisper_vq(tmp_path_factory.mktemp("glm_tok"), d_model=64, layers=2, heads=2, ffn_dim=128)


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> WhisperVQTokenizer:
    return WhisperVQTokenizer.from_dir(model_dir, device="cpu", batch_size=4)


def noise(seconds: float, seed: int, scale: float = 0.1, sr: int = SR) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * sr)) * scale).astype(np.float32)


def test_random_model_has_release_layout(model_dir: Path) -> None:
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "whisper"
    assert config["architectures"] == ["WhisperVQForConditionalGeneration"]
    assert (config["pooling_kernel_size"], config["pooling_type"], config["quantize_vocab_size"]) == (4, "avg", 16384)
    assert config["quantize_position"] == config["pooling_position"] == 2
    assert config["encoder_causal_convolution"] and config["quantize_causal_block_size"] == 200
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
    assert all(key.startswith("model.encoder.") for key in keys)
    # Tensors the release has and the tokenizer must skip: a later layer, the final norm, the 2nd table.
    assert {
        "model.encoder.layers.2.fc1.weight",
        "model.encoder.layer_norm.weight",
        "model.encoder.embed_positions2.weight",
        "model.encoder.codebook.weight",
    } <= keys


def test_identity_numbers(tokenizer: WhisperVQTokenizer) -> None:
    assert tokenizer.token_rate == 12.5
    assert tokenizer.samples_per_token == 1280
    assert tokenizer.codebook_size == 16384


@pytest.mark.parametrize("n", [1, 1279, 1280, 1281, 16000, 23456])
def test_code_count_is_ceil_samples_over_1280(tokenizer: WhisperVQTokenizer, n: int) -> None:
    codes = tokenizer.encode_batch([noise(n / SR, seed=n)], [SR])[0]
    assert codes.dtype == np.int64
    assert len(codes) == math.ceil(n / 1280) == tokenizer.num_codes(n)
    assert codes.min() >= 0 and codes.max() < 16384


def test_codes_vary_over_time(tokenizer: WhisperVQTokenizer) -> None:
    codes = tokenizer.encode_batch([noise(4.0, seed=1)], [SR])[0]
    assert len(np.unique(codes)) > 5


def test_batch_equals_one_by_one(tokenizer: WhisperVQTokenizer) -> None:
    waves = [noise(s, seed=i) for i, s in enumerate([0.3, 2.0, 1.07, 5.5, 0.08])]
    batched = tokenizer.encode_batch(waves, [SR] * len(waves))
    for wave, codes in zip(waves, batched, strict=True):
        np.testing.assert_array_equal(codes, tokenizer.encode_batch([wave], [SR])[0])


def test_35_seconds_is_two_chunks(tokenizer: WhisperVQTokenizer) -> None:
    wave = noise(35.0, seed=3)
    codes = tokenizer.encode_batch([wave, noise(1.0, seed=4)], [SR, SR])[0]
    assert len(codes) == math.ceil(35 * SR / 1280) == 438
    first = tokenizer.encode_batch([wave[: 30 * SR]], [SR])[0]
    second = tokenizer.encode_batch([wave[30 * SR :]], [SR])[0]
    np.testing.assert_array_equal(codes, np.concatenate([first, second]))


@pytest.mark.parametrize("rate", [22050, 44100])
def test_other_sample_rates_are_resampled(tokenizer: WhisperVQTokenizer, rate: int) -> None:
    wave = noise(2.3, seed=rate, sr=rate)
    codes = tokenizer.encode_batch([wave], [rate])[0]
    at_16k = resample(wave, rate, SR)
    np.testing.assert_array_equal(codes, tokenizer.encode_batch([at_16k], [SR])[0])
    assert len(codes) == math.ceil(len(at_16k) / 1280) == tokenizer.num_codes(len(wave), rate)


def test_block_causal_encoder_ignores_audio_two_blocks_ahead(tokenizer: WhisperVQTokenizer) -> None:
    """Causal convs + 4 s block-causal attention: audio from 6 s on cannot change the first 4 s of codes."""
    base = noise(8.0, seed=5)
    changed = base.copy()
    changed[6 * SR :] = noise(2.0, seed=6, scale=0.02)  # quieter, so the log-mel floor (utterance max) stays
    a, b = tokenizer.encode_batch([base, changed], [SR, SR])
    np.testing.assert_array_equal(a[:50], b[:50])
    assert not np.array_equal(a[75:], b[75:])


def test_attention_bias_matches_reference_block_causal_mask() -> None:
    """Reference: tril(ones) | block_diag(ones per block), restricted to valid keys."""
    valid = torch.tensor([[True] * 7 + [False] * 3, [True] * 10])
    bias = _attention_bias(valid, block_size=4, causal=False, dtype=torch.float32)
    causal = torch.tril(torch.ones(10, 10, dtype=torch.bool))
    blocks = torch.block_diag(*[torch.ones(n, n) for n in (4, 4, 2)]).bool()
    expected = (causal | blocks)[None] & valid[:, None, :]
    assert torch.equal(bias[:, 0] == 0, expected)


def test_empty_and_stereo_inputs(tokenizer: WhisperVQTokenizer) -> None:
    assert tokenizer.encode_batch([np.zeros(0, np.float32)], [SR])[0].shape == (0,)
    with pytest.raises(ValueError, match="mono"):
        tokenizer.encode_batch([np.zeros((100, 2), np.float32)], [SR])


def test_missing_directory_and_files_are_named(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such directory"):
        WhisperVQTokenizer.from_dir(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match=r"config\.json, preprocessor_config\.json, model\*\.safetensors"):
        WhisperVQTokenizer.from_dir(tmp_path)
    partial = tmp_path / "partial"
    shutil.copytree(model_dir, partial)
    (partial / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing: model\*\.safetensors"):
        WhisperVQTokenizer.from_dir(partial)


def _copy_with_weights(model_dir: Path, dest: Path, edit: dict[str, torch.Tensor | None]) -> Path:
    shutil.copytree(model_dir, dest)
    state = load_file(str(dest / "model.safetensors"))
    for key, value in edit.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    save_file(state, str(dest / "model.safetensors"))
    return dest


def test_wrong_weights_are_rejected(tmp_path: Path, model_dir: Path) -> None:
    missing = _copy_with_weights(model_dir, tmp_path / "missing", {"model.encoder.layers.1.fc2.weight": None})
    with pytest.raises(ValueError, match=r"missing \['layers\.1\.fc2\.weight'\]"):
        WhisperVQTokenizer.from_dir(missing)
    unknown = _copy_with_weights(model_dir, tmp_path / "unknown", {"model.encoder.adapter.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"unexpected \['model\.encoder\.adapter\.weight'\]"):
        WhisperVQTokenizer.from_dir(unknown)
    small_codebook = {"model.encoder.codebook.weight": torch.zeros(8, 64)}
    wrong_shape = _copy_with_weights(model_dir, tmp_path / "shape", small_codebook)
    with pytest.raises(ValueError, match=r"wrong shape \['codebook\.weight \(8, 64\) != \(16384, 64\)'\]"):
        WhisperVQTokenizer.from_dir(wrong_shape)


def test_config_without_quantizer_is_rejected(tmp_path: Path, model_dir: Path) -> None:
    plain = tmp_path / "plain_whisper"
    shutil.copytree(model_dir, plain)
    config = json.loads((plain / "config.json").read_text())
    del config["quantize_vocab_size"]
    (plain / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="quantize_vocab_size"):
        WhisperVQTokenizer.from_dir(plain)


def test_torchaudio_placeholder_only_inside_the_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unimportable torchaudio (None in sys.modules makes `import` fail) is stood in for, then restored."""
    monkeypatch.setitem(sys.modules, "torchaudio", None)
    with torchaudio_optional():
        import torchaudio

        with pytest.raises(AttributeError, match=r"torchaudio\.load: torchaudio cannot be imported here"):
            torchaudio.load("x.wav")
    assert sys.modules["torchaudio"] is None
