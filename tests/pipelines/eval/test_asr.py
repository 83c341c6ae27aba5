"""ASR backends: Whisper tiny.en (faster-whisper, int8, CPU) must understand Piper speech; the transformers backend's
batching / long-form / empty-input plumbing runs on a tiny random Whisper; Paraformer fails clearly without funasr."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from pipelines.eval.asr import (
    BUNDLED_TINY_EN,
    AsrConfig,
    Transcriber,
    build_transcriber,
    resolve_model_path,
    to_asr_input,
)
from pipelines.eval.scoring import error_rate


def test_tiny_en_transcribes_piper_speech() -> None:
    from tokenization.tts import get_voice

    voice = get_voice("piper:joe")
    text = "Alice will meet Bob at the station on Monday."
    wav = voice.synthesize(text)
    asr = build_transcriber({"backend": "faster_whisper", "model": BUNDLED_TINY_EN, "cpu_threads": 2})
    assert isinstance(asr, Transcriber) and asr.name == f"faster_whisper:{BUNDLED_TINY_EN}"
    hyp, silent = asr.transcribe_batch([wav, np.zeros(0, dtype=np.float32)], [voice.sample_rate, 16000])
    assert error_rate([text], [hyp], "en").rate <= 0.15, hyp
    assert silent == ""


def test_to_asr_input_resamples_and_downmixes() -> None:
    stereo = np.zeros((44100, 2), dtype=np.float32)
    out = to_asr_input(stereo, 44100)
    assert out.shape == (16000,) and out.dtype == np.float32


@pytest.fixture(scope="module")
def tiny_random_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer random Whisper with the real tiny.en tokenizer, saved like a Hub checkpoint (no download)."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizerFast,
    )

    torch.manual_seed(0)
    tok = WhisperTokenizerFast(tokenizer_file=os.path.join(resolve_model_path(BUNDLED_TINY_EN), "tokenizer.json"))
    ids = {"decoder_start_token_id": tok.convert_tokens_to_ids("<|startoftranscript|>"),
           "eos_token_id": tok.eos_token_id, "pad_token_id": tok.eos_token_id, "bos_token_id": tok.eos_token_id}
    model = WhisperForConditionalGeneration(WhisperConfig(
        vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_target_positions=64, **ids))
    model.generation_config = GenerationConfig(
        **ids, no_timestamps_token_id=tok.convert_tokens_to_ids("<|notimestamps|>"), max_length=64)
    path = tmp_path_factory.mktemp("whisper")
    model.save_pretrained(path)
    WhisperProcessor(WhisperFeatureExtractor(), tok).save_pretrained(path)
    return path


def test_transformers_backend_batches_long_form_and_empty(tiny_random_whisper: Path) -> None:
    asr = build_transcriber({"backend": "transformers_whisper", "model": str(tiny_random_whisper),
                             "compute_type": "float32", "batch_size": 2, "max_new_tokens": 3, "language": "en"})
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 8000, 24000 * 31)]
    texts = asr.transcribe_batch([clips[0], np.zeros(0, np.float32), clips[1], clips[2]], [16000, 16000, 16000, 24000])
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)
    assert texts[1] == ""
    assert texts[0] and texts[2] and texts[3]  # a random model still emits tokens: every clip was decoded


@pytest.mark.skipif(importlib.util.find_spec("funasr") is not None, reason="funasr is installed here")
def test_paraformer_without_funasr_names_the_package() -> None:
    with pytest.raises(ImportError, match="funasr"):
        build_transcriber({"backend": "paraformer", "model": "/models/paraformer-zh", "language": "zh"})


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        AsrConfig.from_mapping({"backend": "faster_whisper", "modle": "x"})
    with pytest.raises(ValueError, match="unknown backend"):
        AsrConfig.from_mapping({"backend": "kaldi"})
    with pytest.raises(ValueError, match="bundled"):
        resolve_model_path("bundled:whisper-large")
    assert Path(resolve_model_path(BUNDLED_TINY_EN), "model.bin").is_file()
    with pytest.raises(ValueError, match="2 waveforms but 1"):
        build_transcriber(AsrConfig()).transcribe_batch([np.zeros(10), np.zeros(10)], [16000])
