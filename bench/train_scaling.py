"""Training throughput through the real Ray Train loop: 1 vs N workers, the step-time breakdown, and the
wall-clock estimate of the paper's run.

Every measured run is `workflows/train.py`'s `run()` (TorchTrainer, FSDP2, the deterministic data path,
checkpointing) on synthetic shards with a realistic task mix (ASR, TTS, spoken chat with GLM-4-Voice-style
13-text / 26-audio interleaving, interleaved documents; 100-900 tokens per sample), with the same
micro-batch per worker (weak scaling: the global batch grows with the workers, as on a cluster).
Per run: the median of the per-step global non-pad tokens/s after `--warmup` steps, and the mean seconds per
phase from the loop's own timers (data wait, forward, backward, optimizer; checkpoint = the one checkpoint
written at the last step). Scaling = tokens/s(N workers) / tokens/s(1 worker); goal 1.6× for 2 workers.

    python bench/train_scaling.py                                  # CPU: 1 and 2 gloo workers, small model
    python bench/train_scaling.py --device cuda --shape qwen2.5-1.5b --workers 1 8 --samples 8192
    python bench/train_scaling.py --estimate-only --shards runs/local/shards   # tokens/sample from a manifest

The paper estimate (always written): model FLOPs per token from the architecture (training.telemetry.FlopsModel:
6·N_body + 6·H·V per target position + 6·layers·d_q·n per token for causal attention over samples of n tokens),
times 6.3M samples × 10 epochs × tokens per sample, over 32 A100 at 312 TFLOPS dense bf16 × an assumed MFU.
Assumptions are written next to the numbers; tokens per sample come from a shards manifest when given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]

PAPER = {"samples": 6_321_321, "epochs": 10, "gpus": 32, "peak_tflops": 312.0, "global_batch": 2048,
         "reference_padded_tokens_per_sample": 2048}
# Stated estimate when no shards manifest is given: ASR/TTS utterances (~10 s at 12.5 codes/s plus text and
# template, ~250 tokens), spoken chat (~600: question audio + 13:26 interleaved answer), interleaved documents
# (~900); a mix weighted towards ASR/TTS as in the paper's Table 2.
ESTIMATED_TOKENS_PER_SAMPLE = 450
TARGET_FRACTION = 0.6  # positions with a loss target (assistant text/audio, documents); prompts have none
ASSUMED_MFU = (0.3, 0.4, 0.5)
WORDS = ["the", "model", "speaks", "while", "it", "reads", "every", "sentence", "about", "rivers", "cities",
         "numbers", "and", "quiet", "green", "hills", "today", "tomorrow", "people", "music"]


def write_synthetic_shards(shards: Path, vocab: Any, n: int, seed: int = 0, files: int = 4) -> dict[str, float]:
    """Shards in the tokenize job's layout with a realistic task mix; returns their token statistics."""
    from pipelines.shards import write_parquet_shard
    from tokenization.sequence import SPAN_ARROW_TYPE, Part, Turn, build_chat, build_document, spans_to_pylist
    from tokenization.shard_format import MANIFEST_FILE, PARQUET_DIR
    from tokenization.vocab import write_manifest

    rng = np.random.default_rng(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS, size=int(rng.integers(lo, hi))))

    def codes(lo: int, hi: int) -> np.ndarray:
        return rng.integers(0, vocab.codebook_size, int(rng.integers(lo, hi)))

    rows = []
    for i in range(n):
        kind = i % 4
        if kind == 0:  # ASR: speech in, transcript out
            seq = build_chat(vocab, [Turn("user", [Part(text="Transcribe:"), Part.audio(codes(60, 190))]),
                                     Turn("assistant", [Part(text=text(8, 30))])])
        elif kind == 1:  # TTS: text in, speech out
            seq = build_chat(vocab, [Turn("user", [Part(text="Read aloud: " + text(8, 30))]),
                                     Turn("assistant", [Part.audio(codes(60, 190), final=True)])])
        elif kind == 2:  # spoken chat: 13 text / 26 audio interleaved answer, final span variable
            answer = []
            for _ in range(int(rng.integers(2, 8))):
                answer += [Part(text=text(10, 14)), Part.audio(codes(26, 27))]
            answer.append(Part.audio(codes(20, 120), final=True))
            seq = build_chat(vocab, [Turn("user", [Part.audio(codes(40, 120))]), Turn("assistant", answer)])
        else:  # interleaved document
            parts = []
            for _ in range(int(rng.integers(2, 6))):
                parts += [Part(text=text(10, 25)), Part.audio(codes(17, 150))]
            seq = build_document(vocab, parts)
        rows.append({"sample_id": f"bench/{i:07d}", "n_tokens": len(seq.input_ids),
                     "spans": spans_to_pylist(seq.spans), "input_ids": seq.input_ids.astype(np.int32)})
    schema = pa.schema([("sample_id", pa.string()), ("n_tokens", pa.int32()), ("spans", pa.list_(SPAN_ARROW_TYPE)),
                        ("input_ids", pa.list_(pa.int32()))])
    names = []
    for k in range(files):
        part = rows[k::files]
        names.append(f"part-{k:05d}-of-{files:05d}.parquet")
        write_parquet_shard(pa.table({c: [r[c] for r in part] for c in schema.names}, schema=schema),
                            shards / PARQUET_DIR / names[-1], vocab.manifest(), row_group_rows=256)
    tokens = [r["n_tokens"] for r in rows]
    counts = {"written_samples": n, "tokens": int(sum(tokens))}
    write_manifest(vocab.manifest(), shards / MANIFEST_FILE, shards={"parquet": names}, counts=counts)
    return {"samples": n, "mean_tokens": float(np.mean(tokens)), "max_tokens": int(max(tokens))}


def bench_vocab() -> Any:
    """The paper's vocabulary size: Qwen2.5 text + 16,384 GLM-4-Voice codes + span markers (reference layout)."""
    from tokenization.codecs.base import CodecIdentity
    from tokenization.text import load_text_tokenizer
    from tokenization.vocab import UnifiedVocab

    return UnifiedVocab(load_text_tokenizer(), CodecIdentity("bench-glm4voice", "1", 12.5, 16384, 16000, 22050, ""),
                        layout="reference")


def overrides(root: Path, args: argparse.Namespace, workers: int, layout: str) -> list[str]:
    common = [f"paths.root={root}", f"train.scaling.num_workers={workers}", f"train.max_steps={args.steps}",
              "train.epochs=1000", f"train.batch.micro_size={args.micro}",
              f"train.batch.global_size={args.micro * workers}", f"train.max_tokens={args.max_tokens}",
              f"train.checkpoint.every_steps={args.steps}", f"train.logging.report_every_steps={args.steps}",
              "train.data.shuffle_buffer=256", "train.max_failures=0", "codec=s3", f"model={args.shape}",
              f"data.vocab_layout={layout}",
              "train.logging.tensorboard=false"]
    if args.device == "cuda":
        return [*common, _group("a100x32"), "train.ray.address=null",
                "train.scaling.resources_per_worker={CPU:2,GPU:1}", "train.logging.sync_timings=true"]
    return [*common, _group("cpu"), f"train.scaling.threads_per_worker={args.threads}"]


def _group(option: str) -> str:
    from omegaconf import OmegaConf

    defaults = OmegaConf.load(ROOT / "workflows" / "conf" / "config.yaml").defaults
    listed = any(OmegaConf.is_dict(d) and "train" in d for d in defaults)
    return f"train={option}" if listed else f"+train={option}"


def measure(shards: Path, args: argparse.Namespace, workers: int) -> dict[str, Any]:
    """One training run with `workers` workers; per-step numbers from its metrics.jsonl."""
    from hydra import compose, initialize_config_dir

    from ttt_model.training.telemetry import read_jsonl
    from workflows.train import run

    layout = json.loads((shards / "manifest.json").read_text())["layout"]
    with tempfile.TemporaryDirectory(prefix=f"ttt-bench-w{workers}-") as tmp:
        root = Path(tmp)
        os.symlink(shards, root / "shards")
        with initialize_config_dir(config_dir=str(ROOT / "workflows" / "conf"), version_base=None):
            cfg = compose("config", overrides=overrides(root, args, workers, layout))
        start, load_before = time.perf_counter(), os.getloadavg()[0]
        final = run(cfg)
        wall = time.perf_counter() - start
        records = read_jsonl(Path(final["log_dir"]))
    timed = records[args.warmup:]
    phases = ("data", "forward", "backward", "optimizer")
    return {
        "workers": workers,
        "steps_timed": len(timed),
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed),
        "tokens_per_step": statistics.mean(r["tokens"] for r in timed),
        "step_s": statistics.median(r["step_s"] for r in timed),
        "padding_fraction": statistics.mean(r["padding_fraction"] for r in timed),
        "mfu": statistics.median(r["mfu"] for r in timed) if all("mfu" in r for r in timed) else None,
        "breakdown_s": {**{p: statistics.mean(r[f"time/{p}"] for r in timed) for p in phases},
                        "checkpoint": records[-1].get("time/checkpoint")},
        "run_wall_s": wall,
        "load_avg_1m": {"before": load_before, "after": os.getloadavg()[0]},  # other processes on the machine
    }


def paper_estimate(tokens_per_sample: float, source: str) -> dict[str, Any]:
    """Wall-clock of the paper's run on 32 A100 from per-token model FLOPs (see the module docstring)."""
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ttt_model.core.model import build_model
    from ttt_model.training.telemetry import FlopsModel

    vocab = bench_vocab()
    total_tokens = PAPER["samples"] * PAPER["epochs"] * tokens_per_sample
    out: dict[str, Any] = {
        "assumptions": {
            "samples": PAPER["samples"], "epochs": PAPER["epochs"], "gpus": PAPER["gpus"],
            "peak_tflops_per_gpu": PAPER["peak_tflops"], "tokens_per_sample": tokens_per_sample,
            "tokens_per_sample_source": source, "target_fraction": TARGET_FRACTION,
            "attention_context": "causal within a packed sample of tokens_per_sample tokens",
            "vocab_rows": vocab.padded_size(), "mfu_assumed": list(ASSUMED_MFU),
            "flops": "model FLOPs (activation recomputation not counted), 3x forward for forward+backward",
        },
        "total_tokens": total_tokens,
        "optimizer_steps": PAPER["epochs"] * -(-PAPER["samples"] // PAPER["global_batch"]),
        "models": {},
    }
    for shape in ("qwen2.5-1.5b", "qwen2.5-3b"):
        with initialize_config_dir(config_dir=str(ROOT / "workflows" / "conf"), version_base=None):
            model_cfg = OmegaConf.to_container(compose("config", overrides=[f"model={shape}", "codec=s3"]).model,
                                               resolve=True)
        with torch.device("meta"):
            config = build_model(model_cfg, vocab).config
        f = FlopsModel(config)
        per_token = f.step_flops(1.0, TARGET_FRACTION, tokens_per_sample)
        total = per_token * total_tokens
        cluster_peak = PAPER["gpus"] * PAPER["peak_tflops"] * 1e12
        padded = f.step_flops(PAPER["reference_padded_tokens_per_sample"], TARGET_FRACTION * tokens_per_sample,
                              PAPER["reference_padded_tokens_per_sample"] ** 2)
        out["models"][shape] = {
            "body_params": f.body_params,
            "flops_per_token": per_token,
            "total_flops": total,
            "wall_clock_hours": {f"mfu_{m}": total / (cluster_peak * m) / 3600 for m in ASSUMED_MFU},
            "tokens_per_s_needed_at_mfu_0.4": cluster_peak * 0.4 / per_token,
            # the reference pads every sample to 2048 tokens and attends over all of them: its FLOPs per sample
            "reference_padding_flops_ratio": padded / (per_token * tokens_per_sample),
        }
    return out


def tokens_per_sample_from(shards: Path | None) -> tuple[float, str]:
    if shards is not None:
        manifest = json.loads((shards / "manifest.json").read_text())
        counts = manifest.get("counts") or {}
        if counts.get("written_samples"):
            return counts["tokens"] / counts["written_samples"], f"{shards}/manifest.json counts"
    return float(ESTIMATED_TOKENS_PER_SAMPLE), "stated estimate (ESTIMATED_TOKENS_PER_SAMPLE in this file)"


def machine() -> dict[str, Any]:
    import ray
    import torch

    info = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "ray": ray.__version__, "load_avg_1m": os.getloadavg()[0]}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "train_scaling.json")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--shape", default=None, help="model preset (default: small on cpu, qwen2.5-1.5b on cuda)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per run (the last one checkpoints)")
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the statistics")
    p.add_argument("--micro", type=int, default=None, help="samples per micro-batch per worker")
    p.add_argument("--max-tokens", type=int, default=None, help="packed row length")
    p.add_argument("--samples", type=int, default=None, help="synthetic samples")
    p.add_argument("--threads", type=int, default=1, help="torch threads per CPU worker")
    p.add_argument("--shards", type=Path, default=None, help="train on these shards instead of synthetic ones")
    p.add_argument("--estimate-only", action="store_true", help="only the paper wall-clock estimate")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    args.shape = args.shape or ("qwen2.5-1.5b" if cuda else "small")
    args.micro = args.micro or (16 if cuda else 4)
    args.max_tokens = args.max_tokens or (2048 if cuda else 1024)
    args.samples = args.samples or (8192 if cuda else 256)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    result: dict[str, Any] = {"name": "train_scaling", "machine": machine(), "config": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    if not args.estimate_only:
        import ray

        ray.init(address="local", num_cpus=max(4, 2 * max(args.workers)), include_dashboard=False,
                 object_store_memory=1 << 30, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
        try:
            with tempfile.TemporaryDirectory(prefix="ttt-bench-shards-") as tmp:
                shards = args.shards.resolve() if args.shards else Path(tmp) / "shards"
                if args.shards is None:
                    result["data"] = write_synthetic_shards(shards, bench_vocab(), args.samples)
                runs = [measure(shards, args, w) for w in args.workers]
        finally:
            ray.shutdown()
        result["runs"] = runs
        base = runs[0]["tokens_per_s"]
        result["scaling"] = {str(r["workers"]): r["tokens_per_s"] / base for r in runs}
        if args.device == "cpu" and 2 in args.workers and runs[0]["workers"] == 1:
            ratio = result["scaling"]["2"]
            result["scaling_goal"] = {"workers": 2, "goal": 1.6, "measured": ratio, "met": ratio >= 1.6}
    tokens, source = tokens_per_sample_from(args.shards)
    result["paper_estimate"] = paper_estimate(tokens, source)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps({k: result[k] for k in ("scaling", "scaling_goal") if k in result}, indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
