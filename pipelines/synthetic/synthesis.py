"""Speak planned utterances with the offline voices and write them as audio files, in parallel.

A `SynthesisJob` is one output file: one or more texts said by one voice (several texts become one
recording with silences between them, for manifests whose supervisions are segments of a recording).
Speakers beyond the three shipped voices come from speed perturbation (resampling, as in Kaldi's speed
perturbation): it changes tempo and pitch together, so e.g. espeak:en at 0.9 and 1.1 sound like different
people to an ASR model and to the codec.

Parallelism: a process pool rather than Ray tasks. Preparation is one node's embarrassingly parallel map
that runs before any Ray job, and a pool starts in about a second where a Ray runtime takes 5-10 s on these
2-core machines; each worker process loads each voice once (`get_voice` caches per process). Files are
written to a temporary name and renamed, so a crash never leaves a truncated file under the final name.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from pipelines.synthetic.textgen import round_robin
from tokenization.audio import resample
from ttt_common.files import atomic_write

# Subtype per file suffix: 16-bit PCM like the real corpora; MP3 is what Common Voice ships.
_FORMATS = {".flac": ("FLAC", "PCM_16"), ".wav": ("WAV", "PCM_16"), ".mp3": ("MP3", "MPEG_LAYER_III")}


@dataclass(frozen=True)
class SynthesisJob:
    path: str  # output file; its suffix (.flac/.wav/.mp3) picks the format
    texts: tuple[str, ...]  # said one after another, `gap_s` of silence apart
    voice: str  # a tokenization.tts voice name
    speed: float  # speed-perturbation factor (1.0 = as synthesised)
    sample_rate: int  # rate of the written file
    split: str  # train/dev/test/eval: the codec is fitted on "train" audio only
    gap_s: float = 0.0
    pad_s: float = 0.0  # silence before the first and after the last text


@dataclass(frozen=True)
class SynthesisResult:
    path: str
    voice: str
    split: str
    sample_rate: int
    num_samples: int
    segments: tuple[tuple[int, int], ...]  # (start sample, number of samples) of each text

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate


def speed_perturb(wav: np.ndarray, sample_rate: int, speed: float) -> np.ndarray:
    """Play `wav` `speed` times faster (shorter and higher), by reinterpreting it at a scaled rate."""
    if speed == 1.0:
        return wav
    return resample(wav, round(sample_rate * speed), sample_rate)


def render(job: SynthesisJob) -> tuple[np.ndarray, tuple[tuple[int, int], ...]]:
    """The job's audio at `job.sample_rate` and where each text lies in it."""
    from tokenization.tts import get_voice

    voice = get_voice(job.voice)
    gap = np.zeros(round(job.gap_s * job.sample_rate), dtype=np.float32)
    pad = np.zeros(round(job.pad_s * job.sample_rate), dtype=np.float32)
    pieces = [pad]
    segments: list[tuple[int, int]] = []
    cursor = len(pad)
    for i, text in enumerate(job.texts):
        if i:
            pieces.append(gap)
            cursor += len(gap)
        try:
            wav = voice.synthesize(text)
        except Exception as exc:
            raise RuntimeError(f"{job.voice} failed on {text!r} for {job.path}: {exc}") from exc
        wav = resample(speed_perturb(wav, voice.sample_rate, job.speed), voice.sample_rate, job.sample_rate)
        pieces.append(wav)
        segments.append((cursor, len(wav)))
        cursor += len(wav)
    pieces.append(pad)
    return np.clip(np.concatenate(pieces), -1.0, 1.0), tuple(segments)


def synthesize_job(job: SynthesisJob) -> SynthesisResult:
    """Render and write one job (atomically); runs in pool workers."""
    audio, segments = render(job)
    path = Path(job.path)
    fmt, subtype = _FORMATS[path.suffix.lower()]  # named: the temporary file's name has no audio suffix
    atomic_write(path, lambda tmp: sf.write(str(tmp), audio, job.sample_rate, subtype=subtype, format=fmt))
    return SynthesisResult(job.path, job.voice, job.split, job.sample_rate, len(audio), segments)


def interleave_voices(jobs: Sequence[SynthesisJob]) -> list[SynthesisJob]:
    """Round-robin over voices so slow (Piper) and fast (espeak) jobs are spread evenly over the run and
    over the pool's chunks, and the progress bar's rate is meaningful from the start."""
    by_voice: dict[str, list[SynthesisJob]] = {}
    for job in jobs:
        by_voice.setdefault(job.voice, []).append(job)
    return round_robin(q for _, q in sorted(by_voice.items()))


def run_jobs(jobs: Iterable[SynthesisJob], workers: int, desc: str = "synthesize") -> dict[str, SynthesisResult]:
    """Synthesise every job (workers <= 1: in this process) -> results keyed by output path."""
    ordered = interleave_voices(list(jobs))
    if workers <= 1 or len(ordered) <= 1:
        return _collect(map(synthesize_job, ordered), len(ordered), desc)
    # spawn: workers must not inherit a parent that may hold onnxruntime or Ray threads.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return _collect(pool.map(synthesize_job, ordered, chunksize=4), len(ordered), desc)


def _collect(results: Iterator[SynthesisResult], total: int, desc: str) -> dict[str, SynthesisResult]:
    return {r.path: r for r in tqdm(results, total=total, desc=desc, unit="utt", mininterval=2.0)}
