"""Speech in, speech out: a TtT checkpoint + its codec behind a chat interface, streaming or batched.

`SpeechLM.load(checkpoint, codec)` rebuilds the vocabulary from the codec's identity and the layout and
tokenizer the checkpoint's manifest records, and refuses the pair when the two manifests disagree (a model
decoding another codec's codes produces noise, silently). A conversation is a list of `Message`s (text
and/or audio per turn); user audio is encoded with the codec and wrapped as a user audio span, and the
prompt ends with an open assistant header (`build_chat(..., add_generation_prompt=True)`).

`generate_stream` yields the sampler's events (`TextDelta`, `AudioBlock`, `SpanEnd`, `TurnEnd`) and, after
every audio block, an `AudioOut` with the samples the codec's streaming decoder could finish, so playback
starts after the first block instead of the end of the turn. `answer` collects one turn with timings;
`answer_batch` decodes many conversations together (evaluation).

The decoder follows the checkpoint's recorded training objective (`objective.json`; sampler `decode: auto`):
a TtT checkpoint gets AR text + diffusion spans (block-causal ones when it was trained with them), an AR or NAR
baseline its own decoder (ttt_model/decoding/ttt_sampler.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Qwen2ForCausalLM

from tokenization.audio import load_audio
from tokenization.codecs.base import AudioCodec
from tokenization.sequence import Part, Turn, build_chat
from tokenization.text import BUNDLED
from tokenization.vocab import UnifiedVocab, check_compatible, read_manifest
from tokenization.vocab_factory import make_vocab, manifest_subset
from ttt_model.core.checkpoint_layout import MANIFEST_FILE, load_objective
from ttt_model.core.model_checkpoint import load_checkpoint
from ttt_model.decoding.decode_run import DecodeRun
from ttt_model.decoding.events import AudioBlock, Event, LogitsProcessor, TextDelta, TurnEnd
from ttt_model.decoding.sampler_config import SamplerConfig, resolve_decode
from ttt_model.decoding.ttt_sampler import TtTSampler

AudioInput = str | Path | tuple[np.ndarray, int]


@dataclass(frozen=True)
class Message:
    """One chat turn: text, audio (a file path or (waveform, sample_rate)), or both (text first)."""

    role: str
    text: str | None = None
    audio: AudioInput | None = None


@dataclass(frozen=True)
class AudioOut:
    """Decoded speech that is final and can be played now."""

    samples: np.ndarray
    sample_rate: int


StreamEvent = Event | AudioOut


@dataclass
class Answer:
    """One generated turn: its text, codes, speech, why it stopped, and how long each part took.

    `timings` (seconds from the call): first_text_s (first text delta), first_audio_block_s (first block of
    codes committed), first_audio_s (first decoded samples), total_s; audio_tokens_per_s over total_s.
    """

    text: str
    codes: np.ndarray
    waveform: np.ndarray
    sample_rate: int
    finish_reason: str
    ids: list[int] = field(default_factory=list)
    timings: dict[str, float | None] = field(default_factory=dict)


@dataclass
class SpeechLM:
    """A loaded checkpoint with the vocabulary and codec it was trained with, and its training objective
    (None when the checkpoint records none: then `decode: auto` means TtT)."""

    model: Qwen2ForCausalLM
    vocab: UnifiedVocab
    codec: AudioCodec
    manifest: dict[str, Any]
    objective: dict[str, Any] | None = None

    @property
    def trained_mode(self) -> str | None:
        return None if self.objective is None else str(self.objective["mode"])

    def decode_mode(self, cfg: SamplerConfig | None = None) -> str:
        """The decoder `cfg` selects for this checkpoint (ttt | ar | nar)."""
        return resolve_decode((cfg or SamplerConfig()).decode, self.trained_mode)

    @classmethod
    def load(cls, checkpoint: str | Path, codec: AudioCodec, text_tokenizer: str = BUNDLED,
             device: str | torch.device = "cpu", dtype: str | torch.dtype = "auto") -> SpeechLM:
        """Load `checkpoint` (HF safetensors + vocab_manifest.json) for inference with `codec`.

        `text_tokenizer` is the tokenizer the checkpoint's data was tokenized with (the bundled Qwen BPE by
        default), or the base of its corpus-sized subset (whose id mapping the manifest records); its hash, like
        the codec identity, must match the manifest. A checkpoint trained on pre-coded data records a declared
        codec identity; a real codec of the same name, codebook size and rates is accepted for it, and
        `vocab.manifest()` then records the real codec's weights hash.
        """
        ckpt = Path(checkpoint).expanduser()
        if not ckpt.is_dir():
            raise FileNotFoundError(f"checkpoint directory not found: {ckpt}")
        if not (ckpt / MANIFEST_FILE).is_file():
            raise FileNotFoundError(f"{ckpt} has no {MANIFEST_FILE}: not a TtT checkpoint (train one, or pass "
                                    "the directory save_checkpoint wrote)")
        manifest = read_manifest(ckpt / MANIFEST_FILE)
        vocab = make_vocab(text_tokenizer, codec.identity, str(manifest.get("layout", "compact")),
                           manifest_subset(manifest))
        check_compatible(vocab.manifest(), manifest, what=f"checkpoint {ckpt} (with codec "
                                                          f"{codec.identity.name} and tokenizer {text_tokenizer})")
        # checked above with a message naming codec and tokenizer; the sampler's masks need sdpa
        model, manifest = load_checkpoint(ckpt, None, attn_implementation="sdpa", dtype=dtype)
        return cls(model.to(device).eval(), vocab, codec, manifest, load_objective(ckpt))

    def sampler(self, cfg: SamplerConfig | None = None, logits_processor: LogitsProcessor | None = None) -> TtTSampler:
        return TtTSampler(self.model, self.vocab, cfg, logits_processor, objective=self.objective)


def read_audio(source: AudioInput) -> tuple[np.ndarray, int]:
    """(mono float32 waveform, sample rate) from a path or an array; errors name the file and the cause."""
    if isinstance(source, tuple):
        wav, sr = np.asarray(source[0], dtype=np.float32), int(source[1])
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"audio file not found: {path}")
        try:
            wav, sr, _ = load_audio(path)
        except Exception as e:  # soundfile raises its own error types for unreadable/corrupt files
            raise ValueError(f"cannot read audio file {path}: {e}") from e
    if wav.ndim != 1 or wav.size == 0:
        raise ValueError(f"audio input {source if not isinstance(source, tuple) else '(array)'} holds no samples")
    if not np.isfinite(wav).all():
        raise ValueError("audio input holds NaN or infinite samples")
    return wav, sr


def build_prompt(lm: SpeechLM, messages: Sequence[Message]) -> list[int]:
    """Chat prompt ids: each message's text then its audio (encoded with the codec), plus an open
    assistant header. Raises ValueError on an empty conversation."""
    turns: list[Turn] = []
    for m in messages:
        parts: list[Part] = []
        if m.text:
            parts.append(Part(text=m.text))
        if m.audio is not None:
            wav, sr = read_audio(m.audio)
            codes = lm.codec.encode(wav, sr)
            if len(codes) == 0:
                raise ValueError(f"the codec made no codes from the {m.role} audio (too short?)")
            parts.append(Part.audio(codes))
        if parts:
            turns.append(Turn(m.role, parts))
    if not any(t.role == "user" for t in turns):
        raise ValueError("empty prompt: give a user message with text or audio")
    return build_chat(lm.vocab, turns, add_generation_prompt=True).input_ids.tolist()


def generate_stream(lm: SpeechLM, messages: Sequence[Message], cfg: SamplerConfig | None = None,
                    logits_processor: LogitsProcessor | None = None) -> Iterator[StreamEvent]:
    """One assistant turn as a stream: sampler events, plus `AudioOut` after each `AudioBlock` (and the
    decoder's tail at `TurnEnd`)."""
    run = lm.sampler(cfg, logits_processor).start([build_prompt(lm, messages)])
    yield from _with_speech(run, lm.codec)


def _with_speech(run: DecodeRun, codec: AudioCodec) -> Iterator[StreamEvent]:
    """The run's events, plus decoded speech when the codec can decode (a declared or encode-only codec
    cannot: the answer then carries its codes and no waveform)."""
    if not codec.can_decode:
        yield from run
        return
    decoder = codec.stream_decoder()
    rate = codec.identity.output_sample_rate
    for ev in run:
        yield ev
        if isinstance(ev, AudioBlock):
            samples = decoder.push(ev.codes)
            if samples.size:
                yield AudioOut(samples, rate)
        elif isinstance(ev, TurnEnd):
            tail = decoder.flush()
            if tail.size:
                yield AudioOut(tail, rate)


def answer(lm: SpeechLM, messages: Sequence[Message], cfg: SamplerConfig | None = None,
           logits_processor: LogitsProcessor | None = None) -> Answer:
    """Generate one assistant turn; timings are measured from the call (prompt encoding included)."""
    t0 = time.perf_counter()
    timings: dict[str, float | None] = {"first_text_s": None, "first_audio_block_s": None, "first_audio_s": None}
    audio: list[np.ndarray] = []
    run = lm.sampler(cfg, logits_processor).start([build_prompt(lm, messages)])
    for ev in _with_speech(run, lm.codec):
        now = time.perf_counter() - t0
        if isinstance(ev, TextDelta) and timings["first_text_s"] is None:
            timings["first_text_s"] = now
        elif isinstance(ev, AudioBlock) and timings["first_audio_block_s"] is None:
            timings["first_audio_block_s"] = now
        elif isinstance(ev, AudioOut):
            audio.append(ev.samples)
            if timings["first_audio_s"] is None:
                timings["first_audio_s"] = now
    total = time.perf_counter() - t0
    gen = run.results()[0]
    codes = gen.codes
    timings.update(total_s=total, audio_tokens=float(codes.size), spans=float(len(gen.spans)),
                   audio_tokens_per_s=codes.size / total)
    wave = np.concatenate(audio).astype(np.float32) if audio else np.zeros(0, dtype=np.float32)
    return Answer(gen.text, codes, wave, lm.codec.identity.output_sample_rate, gen.finish_reason, gen.ids, timings)


def answer_batch(lm: SpeechLM, conversations: Sequence[Sequence[Message]], cfg: SamplerConfig | None = None,
                 logits_processor: LogitsProcessor | None = None) -> list[Answer]:
    """Many conversations decoded together (one batch, ragged prompts); speech decoded once per answer."""
    prompts = [build_prompt(lm, conv) for conv in conversations]
    t0 = time.perf_counter()
    gens = lm.sampler(cfg, logits_processor).generate(prompts)
    total = time.perf_counter() - t0
    out = []
    for g in gens:
        codes = g.codes
        wave, rate = lm.codec.decode(codes) if codes.size and lm.codec.can_decode else (
            np.zeros(0, np.float32), lm.codec.identity.output_sample_rate)
        out.append(Answer(g.text, codes, wave, rate, g.finish_reason, g.ids,
                          {"total_s": total, "audio_tokens": float(codes.size), "spans": float(len(g.spans))}))
    return out
