"""Benchmark "tokenize" of the tokenize job: samples/s and audio-seconds/s per core, the codec stage on its
own, and Ray Data scaling from 1 to 2 physical cores (goal: >= 1.7x). (The file is not bench/tokenize.py:
that name would shadow the standard library's `tokenize` module for every script run from bench/.)

Corpus: the embedded corpora when `prepare_data` has made them (`--corpus embedded`, with the fitted
embedded codec), else a generated one (`--corpus generated`, default when the embedded one is absent):
espeak speech in a lhotse layout read as ASR and as TTS (ratio 0.5), plus chats spoken as audio chat,
and a tiny embedded codec fitted on it. Each measured run is a fresh process pinned to N cores
(`os.sched_setaffinity`, inherited by every Ray process it starts) running the whole job with
`force=true`; times exclude Ray start-up. The codec stage is timed in-process on the same input audio,
single-threaded.

    python bench/tokenize_job.py                      # -> runs/bench/tokenize.json
    python bench/tokenize_job.py --utterances 120 --repeats 2 --out /tmp/tok.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = ("The weather is warm and bright today.", "Please bring the blue book to the kitchen.",
             "Seven children walked along the river after school.", "A quiet library opens at nine in the morning.",
             "The old bridge was painted green last summer.", "My brother plays the piano every Sunday evening.",
             "Fresh bread smells wonderful in the early morning.", "The train to Boston leaves from platform four.")


def generate_corpus(work: Path, utterances: int) -> list[dict[str, Any]]:
    """espeak speech in a lhotse layout + spoken chats; returns the source list (kept when present)."""
    import gzip

    import soundfile as sf

    from tokenization.tts import get_voice

    corpus = work / "corpus"
    sources = [{"kind": "lhotse", "name": "speech", "path": str(corpus / "lhotse")},
               {"kind": "lhotse", "name": "speech_tts", "path": str(corpus / "lhotse"), "task": "tts", "ratio": 0.5},
               {"kind": "sharegpt", "name": "chat", "path": str(corpus / "chat"), "task": "audio_chat"}]
    marker = corpus / f"made-{utterances}"
    if marker.exists():
        return sources
    voice = get_voice("espeak:en")
    (corpus / "lhotse" / "wavs").mkdir(parents=True, exist_ok=True)
    recordings, supervisions = [], []
    for i in range(utterances):
        text = f"{SENTENCES[i % len(SENTENCES)]} Item {i}."
        wav = voice.synthesize(text)
        path = corpus / "lhotse" / "wavs" / f"u{i:05d}.wav"
        sf.write(path, wav, voice.sample_rate)
        sec = len(wav) / voice.sample_rate
        recordings.append({"id": f"u{i:05d}", "sources": [{"type": "file", "channels": [0], "source": str(path)}],
                           "sampling_rate": voice.sample_rate, "num_samples": len(wav), "duration": sec})
        supervisions.append({"id": f"u{i:05d}", "recording_id": f"u{i:05d}", "start": 0.0, "duration": sec,
                             "channel": 0, "text": text.upper(), "language": "English", "speaker": "espeak"})
    for name, rows in (("recordings", recordings), ("supervisions", supervisions)):
        with gzip.open(corpus / "lhotse" / f"bench_{name}_train.jsonl.gz", "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    chats = [{"id": f"c{i}", "conversations": [{"from": "human", "value": f"Can you repeat sentence {i}?"},
                                               {"from": "gpt", "value": SENTENCES[i % len(SENTENCES)]}]}
             for i in range(max(1, utterances // 4))]
    (corpus / "chat").mkdir(parents=True, exist_ok=True)
    (corpus / "chat" / "chats.json").write_text(json.dumps(chats))
    marker.touch()
    return sources


# The default 2 x 4096 codebooks need more audio than a generated bench corpus has; the encode cost per
# frame (PCA + nearest-centroid search) grows with codebook size, so the codec stage is also timed with
# the default codec when prepare_data has fitted one (`--corpus embedded`).
GENERATED_CODEBOOKS = [256, 256]


def fit_codec(work: Path, sources: list[dict[str, Any]], codec_group: dict[str, Any]) -> dict[str, Any]:
    """An embedded codec fitted on the generated speech (kept between bench runs)."""
    from tokenization.audio import load_audio
    from tokenization.codecs.embedded import fit_embedded_codec

    cfg = {**codec_group, "codebook_sizes": GENERATED_CODEBOOKS, "path": str(work / "codec")}
    if not (work / "codec").exists():
        wavs = sorted((Path(sources[0]["path"]) / "wavs").glob("*.wav"))
        fit_embedded_codec([load_audio(p)[:2] for p in wavs], cfg, Path(cfg["path"]), seed=0)
    return cfg


def compose(overrides: list[str]) -> dict[str, Any]:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "workflows" / "conf"), version_base=None):
        return OmegaConf.to_container(hydra_compose(config_name="config", overrides=overrides), resolve=True)


def child(cfg_path: Path, cpus: list[int], out: Path) -> None:
    """One measured run, pinned to `cpus` (every Ray process started from here inherits the affinity).
    The job is sized for the cores it gets: one TTS actor per core (TTS dominates the embedded corpora)
    and 2 logical Ray CPUs per core plus 2 for the actors, as the default config does for 2 cores."""
    os.sched_setaffinity(0, cpus)
    from pipelines.tokenize_job import run_tokenize_job

    cfg = json.loads(cfg_path.read_text())
    cfg["data"]["tts"]["pool_size"] = len(cpus)
    cfg["data"]["job"]["num_cpus"] = 2 * len(cpus) + 2
    report = run_tokenize_job(cfg)
    total = report.manifest["counts"]["total"]
    out.write_text(json.dumps({"cpus": cpus, "timings": report.timings, "samples": total["written_samples"],
                               "records": total["written_records"], "audio_hours": total["audio_hours"],
                               "tokens": total["tokens"]}))


def measure_codec(cfg: dict[str, Any], sources: list[dict[str, Any]]) -> dict[str, Any]:
    """The codec alone on the job's input audio (decoded first, not timed), one thread."""
    import torch

    from pipelines.readers import get_reader
    from pipelines.records import SourceConfig
    from pipelines.tokenize_stages import encode_grouped
    from tokenization.audio import load_audio
    from tokenization.codecs import build_codec

    torch.set_num_threads(1)
    codec = build_codec(cfg["codec"])
    sr = codec.identity.sample_rate
    waves = []
    for m in sources:
        s = SourceConfig.from_mapping(m)
        reader = get_reader(s.kind)
        for unit in reader.units(s):
            for row in reader.read(s, unit):
                if row["audio_path"] and not row["error"]:
                    waves.append(load_audio(row["audio_path"], sr, row["audio_start"], row["audio_end"])[0])
    t0 = time.perf_counter()
    encode_grouped(codec, waves, sr, max_samples=int(cfg["data"]["encode"]["max_batch_seconds"] * sr))
    seconds = time.perf_counter() - t0
    audio = sum(len(w) for w in waves) / sr
    return {"utterances": len(waves), "audio_seconds": round(audio, 2), "seconds": round(seconds, 3),
            "audio_seconds_per_second_per_core": round(audio / seconds, 2), "codec": codec.identity.to_dict()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", choices=("auto", "embedded", "generated"), default="auto")
    p.add_argument("--paths-root", type=Path, default=Path("runs/local"),
                   help="paths.root of a prepare_data run (embedded corpora under raw/, codec under codec/)")
    p.add_argument("--utterances", type=int, default=80, help="size of the generated corpus")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--work-dir", type=Path, default=Path("runs/bench/tokenize_work"))
    p.add_argument("--out", type=Path, default=Path("runs/bench/tokenize.json"))
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--cpus", type=str, help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, [int(c) for c in args.cpus.split(",")], args.child_out)
        return 0

    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    paths_root = args.paths_root.resolve()
    embedded_ready = (paths_root / "raw" / "prepared.json").is_file()
    corpus = "embedded" if args.corpus == "embedded" or (args.corpus == "auto" and embedded_ready) else "generated"
    common = [f"paths.root={paths_root}", f"paths.shards={work / 'shards'}", "force=true",
              "data.job.object_store_gb=1"]
    if corpus == "embedded":
        cfg = compose(common)
    else:
        sources = generate_corpus(work, args.utterances)
        codec = fit_codec(work, sources, compose([])["codec"])
        cfg = compose([*common, "data.tts.voice=espeak:en"])
        cfg["data"]["sources"], cfg["data"]["sources_file"] = sources, None
        cfg["codec"] = codec
    cfg_path = work / "job_config.json"
    cfg_path.write_text(json.dumps(cfg))
    available = sorted(os.sched_getaffinity(0))
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in range(args.repeats):  # alternate 1 and 2 cores, so load changes on a shared box hit both alike
        for n in (1, 2):
            if n > len(available):
                continue
            cpus = ",".join(str(c) for c in available[:n])
            out = work / f"child-{n}-{r}.json"
            subprocess.run([sys.executable, __file__, "--child", str(cfg_path), "--cpus", cpus, "--child-out",
                            str(out)], check=True, cwd=ROOT,
                           env={**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
            runs.setdefault(str(n), []).append(json.loads(out.read_text()))
    summary = {}
    for n, results in runs.items():
        best = min(results, key=lambda r: r["timings"]["stage_s"] + r["timings"]["finalize_s"])
        busy = best["timings"]["stage_s"] + best["timings"]["finalize_s"]
        audio_s = best["audio_hours"] * 3600
        summary[n] = {"cores": int(n), "stage_s": best["timings"]["stage_s"],
                      "finalize_s": best["timings"]["finalize_s"], "samples": best["samples"],
                      "audio_seconds": round(audio_s, 2), "samples_per_s": round(best["samples"] / busy, 3),
                      "samples_per_s_per_core": round(best["samples"] / busy / int(n), 3),
                      "audio_seconds_per_s_per_core": round(audio_s / busy / int(n), 3), "runs": results}
    scaling = (summary["2"]["samples_per_s"] / summary["1"]["samples_per_s"]) if {"1", "2"} <= set(summary) else None
    result = {
        "name": "tokenize",
        "config": {"corpus": corpus, "utterances": args.utterances if corpus == "generated" else None,
                   "paths_root": str(paths_root) if corpus == "embedded" else None,
                   "repeats": args.repeats, "per_run": "tts.pool_size = cores, job.num_cpus = 2 * cores + 2",
                   "tts_voice": cfg["data"]["tts"]["voice"], "codec": cfg["codec"].get("kind"),
                   "codebook_sizes": cfg["codec"].get("codebook_sizes")},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "cores_used": available,
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()],
                    "note": "shared machine: other jobs run concurrently; compare runs taken together"},
        "job": summary,
        "scaling_1_to_2_cores": round(scaling, 3) if scaling else None,
        "scaling_goal": 1.7,
        "codec_stage": measure_codec(cfg, cfg["data"]["sources"]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for n, s in summary.items():
        print(f"{n} core(s): {s['samples_per_s']:.2f} samples/s, {s['audio_seconds_per_s_per_core']:.2f} "
              f"audio-s/s/core (stage {s['stage_s']:.1f} s, finalize {s['finalize_s']:.1f} s)")
    print(f"scaling 1->2 cores: {result['scaling_1_to_2_cores']}; codec alone: "
          f"{result['codec_stage']['audio_seconds_per_second_per_core']} audio-s/s/core")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
