"""Make the embedded default's raw corpora: generate text -> synthesise speech (in parallel) -> write native
layouts -> fit the embedded codec on a per-voice sample of the training audio.

Everything goes under `paths.raw` (directory names below), described by `prepared.json` there: the
config hash, what was written (a source list in `SourceConfig` shape, paths relative to the raw dir),
audio totals per voice and stage timings. Re-running with the same config skips the work; `force=true`
redoes it. The codec fit has its own hash (corpora hash + codec config), so changing only the codec
config refits the codec without re-synthesising.

Directories under `paths.raw`:
    LibriSpeech/{train-clean-100,test-clean}/...       librispeech (English)
    cv-corpus-1.0-synthetic/{en,zh-CN}/...             commonvoice (en: new TSV header, zh-CN: old header)
    AISHELL-2/iOS/data/...                             aishell2 train (Mandarin)
    AISHELL-DEV-TEST-SET/iOS/{dev,test}/...            aishell2 dev/test
    lhotse-synthetic/                                  lhotse manifests (English), parts train/test
    lhotse-tts/                                        lhotse manifests, English TTS training speech in one voice
    spoken_qa/train/eval_datas/<subset>/...            OpenAudioBench layout, QA for audio-chat training
    spoken_qa/eval/eval_datas/<subset>/...             OpenAudioBench layout, held-out evaluation QA
    openhermes/openhermes2_5.json                      OpenHermes-2.5 chat (text only)
    documents/documents.jsonl                          interleaved-document text (text only)
Held-out rules: see textgen's module docstring. Test/dev/eval audio is never used for the codec fit.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.synthetic import layouts, textgen
from pipelines.synthetic.layouts import CorpusPlan, Speaker, Spoken, SpokenQA
from pipelines.synthetic.synthesis import run_jobs
from pipelines.synthetic.textgen import QAItem, Statement, TextGenConfig, rng_for
from ttt_common.config_tools import config_digest, reject_unknown_keys
from ttt_common.files import atomic_write_text

log = logging.getLogger(__name__)

# Bump when the generated corpora change for an unchanged config, so old outputs are redone.
GENERATOR_VERSION = 2
MARKER = "prepared.json"
GENERATOR = "pipelines.synthetic"
CV_DIR = "cv-corpus-1.0-synthetic"
OWNED_DIRS = ("LibriSpeech", CV_DIR, "AISHELL-2", "AISHELL-DEV-TEST-SET", "lhotse-synthetic", "lhotse-tts",
              "spoken_qa", "openhermes", "documents")
LOSSLESS = (".flac", ".wav")


@dataclass(frozen=True)
class PrepareConfig:
    """The `prepare` config group, parsed (see workflows/conf/prepare/embedded.yaml for the meaning)."""

    workers: int
    textgen: TextGenConfig
    speakers: Mapping[str, tuple[Speaker, ...]]  # "en"/"zh" -> speakers
    librispeech: Mapping[str, int]
    commonvoice: Mapping[str, Mapping[str, Any]]
    aishell2: Mapping[str, int]
    lhotse: Mapping[str, int]
    tts_speaker: Speaker | None  # the one voice of the English TTS corpus (None: no such corpus)
    tts_train: int  # its sentences
    spoken_qa: Mapping[str, Mapping[str, int]]
    chat: int
    documents: int
    codec_fit_seconds_per_voice: float

    @staticmethod
    def from_mapping(m: Mapping[str, Any]) -> PrepareConfig:
        known = {"workers", "textgen", "speakers", "librispeech", "commonvoice", "aishell2", "lhotse", "tts",
                 "spoken_qa", "chat", "documents", "codec_fit_seconds_per_voice"}
        reject_unknown_keys(m, known, "prepare config")
        speakers = {lang: tuple(_speaker(s) for s in specs) for lang, specs in (m.get("speakers") or {}).items()}
        tts = m.get("tts") or {}
        reject_unknown_keys(tts, {"speaker", "train"}, "prepare config: tts")
        tts_train = int(tts.get("train", 0))
        if tts_train and not tts.get("speaker"):
            raise ValueError("prepare config: tts.train needs tts.speaker (the corpus's one voice)")
        for lang in ("en", "zh"):
            if not speakers.get(lang):
                raise ValueError(f"prepare config: speakers.{lang} must list at least one voice")
        # a typo'd split name would otherwise silently produce nothing
        reject_unknown_keys(m.get("aishell2") or {}, {"train", "dev", "test"}, "prepare config: aishell2")
        reject_unknown_keys(m.get("spoken_qa") or {}, {"train", "eval"}, "prepare config: spoken_qa")
        for locale, spec in (m.get("commonvoice") or {}).items():
            reject_unknown_keys(spec, {"header", *layouts.CV_SPLITS}, f"prepare config: commonvoice.{locale}")
        return PrepareConfig(
            workers=int(m.get("workers", 2)), textgen=TextGenConfig.from_mapping(m.get("textgen") or {}),
            speakers=speakers, librispeech=dict(m.get("librispeech") or {}),
            commonvoice={k: dict(v) for k, v in (m.get("commonvoice") or {}).items()},
            aishell2=dict(m.get("aishell2") or {}), lhotse=dict(m.get("lhotse") or {}),
            tts_speaker=_speaker(tts["speaker"]) if tts_train else None, tts_train=tts_train,
            spoken_qa={k: dict(v) for k, v in (m.get("spoken_qa") or {}).items()},
            chat=int(m.get("chat", 0)), documents=int(m.get("documents", 0)),
            codec_fit_seconds_per_voice=float(m.get("codec_fit_seconds_per_voice", 60.0)),
        )


def _speaker(spec: Mapping[str, Any]) -> Speaker:
    reject_unknown_keys(spec, {"voice", "speed", "gender"}, "prepare config: a speaker")
    return Speaker(str(spec["voice"]), float(spec.get("speed", 1.0)), str(spec.get("gender") or ""))


# ---------------------------------------------------------------- planning (pure: no audio is made here)


def _assign(texts: Sequence[str], speakers: Sequence[Speaker]) -> list[Spoken]:
    """Speakers in turn: every speaker gets an equal share of every split."""
    return [Spoken(t, speakers[i % len(speakers)]) for i, t in enumerate(texts)]


@dataclass(frozen=True)
class Plans:
    speech: list[CorpusPlan]
    conversations: list[textgen.Conversation]
    documents: list[textgen.Document]


def plan_corpora(cfg: PrepareConfig, raw: Path, seed: int) -> Plans:
    """Every corpus to write, with its text fixed; deterministic in (cfg, seed)."""
    tg = cfg.textgen
    en, zh = cfg.speakers["en"], cfg.speakers["zh"]
    train_items, heldout_items = textgen.split_items(textgen.qa_items(tg, seed), seed, tg.heldout_fraction)
    heldout_groups = {i.group for i in heldout_items}
    all_statements = textgen.statements(seed)
    train_statements = [s for s in all_statements if s.group not in heldout_groups]
    plans: list[CorpusPlan] = []
    en_seen: set[str] = set()
    en_rng = rng_for(seed, "english-sentences")

    def english(n: int, split: str, quotes: float = 0.0) -> list[str]:
        """Held-out splits get grammar sentences only: fact statements and quotations bring words the
        grammar lacks, and a held-out sentence must be a new combination of words heard in training."""
        if split != "train":
            return textgen.english_sentences(n, en_rng, [], 0.0, 0.0, en_seen)
        return textgen.english_sentences(n, en_rng, train_statements, tg.statement_fraction, quotes, en_seen)

    if cfg.librispeech:
        subsets = {subset: _assign(english(n, layouts.split_of(subset)), en) for subset, n in cfg.librispeech.items()}
        plans.append(layouts.librispeech(raw / "LibriSpeech", subsets))
    zh_seen: set[str] = set()
    zh_rng = rng_for(seed, "mandarin-sentences")
    for clip_base, (locale, spec) in enumerate(sorted(cfg.commonvoice.items())):
        splits = {s: int(spec.get(s, 0)) for s in layouts.CV_SPLITS if int(spec.get(s, 0))}
        if locale.startswith("zh"):
            texts = {s: textgen.mandarin_sentences(n, zh_rng, zh_seen) for s, n in splits.items()}
            speakers = zh
        else:
            texts = {s: english(n, s, tg.quote_fraction) for s, n in splits.items()}
            speakers = en
        plans.append(layouts.commonvoice(raw / CV_DIR / locale, locale,
                                         {s: _assign(t, speakers) for s, t in texts.items()},
                                         header=str(spec.get("header", "new")),
                                         first_clip=10_000_000 * (clip_base + 1)))
    for split, n in cfg.aishell2.items():
        data_dir = raw / ("AISHELL-2/iOS/data" if split == "train" else f"AISHELL-DEV-TEST-SET/iOS/{split}")
        prefix = {"train": "C", "dev": "D", "test": "T"}[split]
        items = _assign(textgen.mandarin_sentences(n, zh_rng, zh_seen), zh)
        plans.append(layouts.aishell2(data_dir, items, split, prefix, name=f"aishell2_{split}"))
    if cfg.lhotse:
        rec_rng = rng_for(seed, "lhotse-recordings")
        parts: dict[str, list[list[Spoken]]] = {}
        for part, n_recordings in cfg.lhotse.items():
            recs = []
            for i in range(n_recordings):
                speaker = en[i % len(en)]
                recs.append([Spoken(t, speaker) for t in english(rec_rng.randint(1, 3), part)])
            parts[part] = recs
        plans.append(layouts.lhotse_manifests(raw / "lhotse-synthetic", parts))
    if cfg.tts_speaker is not None:
        # Last of the English corpora, so adding it leaves every other corpus's sentences as they were.
        recordings = [[Spoken(t, cfg.tts_speaker)] for t in english(cfg.tts_train, "train")]
        plans.append(layouts.lhotse_manifests(raw / "lhotse-tts", {"train": recordings}, prefix="tts", name="tts_en",
                                              task="tts"))
    plans += _spoken_qa_plans(cfg, raw, seed, train_items, heldout_items)
    conv_rng = rng_for(seed, "conversations")
    conversations = textgen.conversations(cfg.chat, conv_rng, train_items, train_statements, tg)
    doc_facts: Sequence[Statement] = all_statements if tg.documents_state_heldout_facts else train_statements
    documents = textgen.documents(cfg.documents, rng_for(seed, "documents"), doc_facts, tg)
    return Plans(plans, conversations, documents)


def _spoken_qa_plans(cfg: PrepareConfig, raw: Path, seed: int, train_items: Sequence[QAItem],
                     heldout_items: Sequence[QAItem]) -> list[CorpusPlan]:
    plans = []
    for split, pool in (("train", train_items), ("eval", heldout_items)):
        subsets = cfg.spoken_qa.get(split) or {}
        if not any(subsets.values()):
            continue
        ordered = textgen.interleave_categories(pool, rng_for(seed, f"spoken-qa-{split}"))
        chosen = textgen.take(ordered, sum(subsets.values()), f"spoken_qa.{split} ({split} QA items)")
        by_subset: dict[str, list[SpokenQA]] = {}
        start = 0
        for subset, n in subsets.items():
            items = chosen[start:start + n]
            start += n
            by_subset[subset] = [SpokenQA(it, cfg.speakers["en"][i % len(cfg.speakers["en"])])
                                 for i, it in enumerate(items)]
        plans.append(layouts.openaudiobench(raw / "spoken_qa" / split, by_subset, split, name=f"spoken_qa_{split}"))
    return plans


# ---------------------------------------------------------------- running


def _read_marker(raw: Path) -> dict[str, Any] | None:
    path = raw / MARKER
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _write_marker(raw: Path, marker: Mapping[str, Any]) -> None:
    """Atomic, and untouched when unchanged (a skipped re-run leaves every file as it was)."""
    text = json.dumps(marker, indent=2, sort_keys=True) + "\n"
    path = raw / MARKER
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    atomic_write_text(path, text)


def _clear_owned(raw: Path, marker: Mapping[str, Any] | None) -> None:
    """Remove what a previous run wrote. Refuses when those directories exist without our marker: then
    they may be real corpora someone put there, and deleting them would be a disaster."""
    present = [d for d in OWNED_DIRS if (raw / d).exists()]
    if present and (marker is None or marker.get("generator") != GENERATOR):
        raise FileExistsError(f"{raw} holds {present} but no {MARKER} from a synthetic prepare run; refusing to "
                              f"overwrite them. Point paths.raw at an empty directory or remove them yourself.")
    for d in present:
        shutil.rmtree(raw / d)


def _audio_totals(results: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    totals: dict[str, dict[str, float]] = {}
    for r in results.values():
        t = totals.setdefault(r.voice, {"files": 0, "seconds": 0.0})
        t["files"] += 1
        t["seconds"] = round(t["seconds"] + r.duration, 3)
    return totals


def make_corpora(cfg: PrepareConfig, raw: Path, seed: int, corpora_hash: str,
                 marker: Mapping[str, Any] | None) -> dict[str, Any]:
    """Write every corpus (the slow part); returns the corpora section of the marker."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    _clear_owned(raw, marker)
    _write_marker(raw, {"generator": GENERATOR, "status": "in_progress", "corpora": {"hash": corpora_hash}})
    plans = plan_corpora(cfg, raw, seed)
    timings["plan_s"] = round(time.perf_counter() - t0, 2)
    t1 = time.perf_counter()
    results = run_jobs([job for p in plans.speech for job in p.jobs], cfg.workers)
    timings["synthesis_s"] = round(time.perf_counter() - t1, 2)
    t2 = time.perf_counter()
    for plan in plans.speech:
        plan.write_metadata(results)
    sources = [{"source": src, "counts": p.counts} for p in plans.speech for src in p.sources(raw)]
    if cfg.chat:
        path = raw / "openhermes" / "openhermes2_5.json"
        n = layouts.write_openhermes(path, plans.conversations, rng_for(seed, "openhermes-format"))
        sources.append({"source": {"name": "openhermes", "kind": "sharegpt", "path": "openhermes",
                                   "language": "en"}, "counts": {"train": n}})
    if cfg.documents:
        path = raw / "documents" / "documents.jsonl"
        n = layouts.write_documents(path, plans.documents)
        sources.append({"source": {"name": "documents", "kind": "ttt_json", "path": "documents",
                                   "language": "en", "task": "interleaved"}, "counts": {"train": n}})
    timings["metadata_s"] = round(time.perf_counter() - t2, 2)
    return {"hash": corpora_hash, "sources": sources, "audio": _audio_totals(results), "timings": timings}


def codec_sample_paths(cfg: PrepareConfig, raw: Path, seed: int) -> dict[str, list[str]]:
    """Per voice, the lossless training-split files in a seeded order (test/dev/eval audio never enters).

    Plans are rebuilt (pure and cheap) instead of stored, so a codec refit works on an existing raw dir.
    """
    by_voice: dict[str, list[str]] = {}
    for job in (j for p in plan_corpora(cfg, raw, seed).speech for j in p.jobs):
        if job.split == "train" and Path(job.path).suffix in LOSSLESS:
            by_voice.setdefault(job.voice, []).append(job.path)
    missing = sorted({s.voice for specs in cfg.speakers.values() for s in specs} - set(by_voice))
    if missing:
        raise ValueError(f"no lossless training audio for voices {missing}: the codec must see every voice")
    rng = rng_for(seed, "codec-sample")
    return {voice: rng.sample(paths, len(paths)) for voice, paths in sorted(by_voice.items())}


def load_codec_sample(paths_by_voice: Mapping[str, Sequence[str]], seconds_per_voice: float) -> list[tuple[Any, int]]:
    """Read files in order until each voice has `seconds_per_voice` of audio -> [(waveform, sample rate)]."""
    from tokenization.audio import load_audio

    waveforms: list[tuple[Any, int]] = []
    for voice, paths in paths_by_voice.items():
        total = 0.0
        for path in paths:
            if total >= seconds_per_voice:
                break
            wav, sr, _ = load_audio(path)
            waveforms.append((wav, sr))
            total += len(wav) / sr
        log.info("codec sample: %s %.1f s", voice, total)
    return waveforms


def prepare(prepare_cfg: Mapping[str, Any], raw: Path, seed: int = 0, force: bool = False,
            codec_cfg: Mapping[str, Any] | None = None, codec_dir: Path | None = None) -> dict[str, Any]:
    """Make (or skip, when already made with this config) the corpora, then fit the embedded codec when
    `codec_cfg.kind == "embedded"`. Returns the marker written to `raw/prepared.json`."""
    cfg = PrepareConfig.from_mapping(prepare_cfg)
    raw = Path(raw)
    corpora_hash = config_digest({"version": GENERATOR_VERSION, "prepare": prepare_cfg, "seed": seed,
                                  "raw": str(raw.resolve())}, 16)
    marker = _read_marker(raw)
    done = marker is not None and marker.get("status") == "complete"
    if done and not force and marker["corpora"]["hash"] == corpora_hash:
        log.info("corpora up to date in %s (hash %s); skipping synthesis", raw, corpora_hash)
        corpora = marker["corpora"]
    else:
        corpora = make_corpora(cfg, raw, seed, corpora_hash, marker)
        marker = None
    new_marker: dict[str, Any] = {"generator": GENERATOR, "status": "complete", "corpora": corpora}
    if codec_cfg is not None and codec_cfg.get("kind") == "embedded":
        if codec_dir is None:
            raise ValueError("codec.kind is 'embedded' but no codec output directory (codec.path) was given")
        new_marker["codec"] = _fit_codec(cfg, raw, seed, force, corpora_hash, codec_cfg, Path(codec_dir), marker)
    _write_marker(raw, new_marker)
    return new_marker


def _fit_codec(cfg: PrepareConfig, raw: Path, seed: int, force: bool, corpora_hash: str,
               codec_cfg: Mapping[str, Any], codec_dir: Path, marker: Mapping[str, Any] | None) -> dict[str, Any]:
    from tokenization.codecs.embedded import fit_embedded_codec

    codec_hash = config_digest({"corpora": corpora_hash, "codec": codec_cfg, "seed": seed,
                                "seconds_per_voice": cfg.codec_fit_seconds_per_voice}, 16)
    previous = (marker or {}).get("codec") or {}
    if not force and previous.get("hash") == codec_hash and codec_dir.exists():
        log.info("embedded codec up to date in %s (hash %s); skipping the fit", codec_dir, codec_hash)
        return dict(previous)
    t0 = time.perf_counter()
    waveforms = load_codec_sample(codec_sample_paths(cfg, raw, seed), cfg.codec_fit_seconds_per_voice)
    t1 = time.perf_counter()
    out = fit_embedded_codec(waveforms, codec_cfg, codec_dir, seed=seed)
    t2 = time.perf_counter()
    return {"hash": codec_hash, "path": str(out), "sample_files": len(waveforms),
            "sample_seconds": round(sum(len(w) / sr for w, sr in waveforms), 2),
            "timings": {"load_s": round(t1 - t0, 2), "fit_s": round(t2 - t1, 2)}}


def prepare_from_config(cfg: Any) -> dict[str, Any]:
    """Entry for the Hydra app: the composed root config (paths, prepare, codec, seed, force)."""
    from omegaconf import OmegaConf

    prepare_cfg = OmegaConf.to_container(cfg.prepare, resolve=True)
    codec_cfg = OmegaConf.to_container(cfg.codec, resolve=True) if "codec" in cfg else None
    codec_dir = Path(cfg.codec.path) if codec_cfg and codec_cfg.get("path") else None
    return prepare(prepare_cfg, Path(cfg.paths.raw), seed=int(cfg.seed), force=bool(cfg.force),
                   codec_cfg=codec_cfg, codec_dir=codec_dir)
