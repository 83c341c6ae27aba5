"""End-to-end training speed of the embedded preset against its settings before the speed work, side by side.

Why: the goal was >= 5x the embedded trainer's tokens/s of 2026-11 (commit 5797c1c), measured in one run on one
machine. Both sides here are `workflows/train.py`'s `run()` (Ray Train, TorchTrainer, the deterministic data
path, metrics, a checkpoint at the end) on the same shards, alternated `--rounds` times so the shared box's load
hits both alike:

- before: `train=cpu` as it was then — 2 single-thread workers (FSDP2 over gloo), float32,
  eager, 4 samples per micro-batch in rows of 1024 tokens — but run by today's code, so the loop fixes made since
  (one LM-head pass instead of two, ~10 %) count for the baseline: the ratio understates the gain;
- now: `train=cpu` as it is (one 2-thread worker, bf16 autocast, compiled decoder layers, 16 samples per
  micro-batch in rows of 320 tokens).

Per run: the median over steps after `--warmup` of the loop's own global non-pad tokens/s (the compile steps
fall in the warm-up), and the tokens/s over all steps with compiling included. The shards are the embedded
default's (`make run` writes them; any tokenize output works).

    python bench/train_speedup.py                        # runs/local/shards, 40 steps, 2 rounds: ~6 min
    python bench/train_speedup.py --shards /path/shards --steps 60
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

ROOT = Path(__file__).resolve().parents[1]
# train=cpu before the speed work (git show 5797c1c:workflows/conf/train/cpu.yaml), in today's keys
BEFORE = ["train.scaling.num_workers=2", "train.scaling.threads_per_worker=1", "train.batch.micro_size=4",
          "train.batch.global_size=16", "train.max_tokens=1024", "train.row_tokens=null",
          "train.parallel.mixed_precision=null", "train.parallel.compile=false"]
SIDES = {"before": BEFORE, "now": []}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    shards = Path(args.shards).resolve()
    if not (shards / "manifest.json").is_file():
        raise SystemExit(f"no shards at {shards}: run `make run` first (or pass --shards <a tokenize output>)")
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for _ in range(args.rounds):
        for side, extra in SIDES.items():
            runs[side].append(measure(shards, args, extra))
            r = runs[side][-1]
            print(f"{side}: {r['tokens_per_s']:.0f} tok/s (median), {r['tokens_per_s_all_steps']:.0f} tok/s over "
                  f"all steps, padding {r['padding_fraction']:.1%}", flush=True)
    summary = {side: statistics.median(r["tokens_per_s"] for r in rs) for side, rs in runs.items()}
    report = {
        "name": "train_speedup",
        "config": {**{k: v for k, v in vars(args).items() if k != "out"}, "shards": str(shards),
                   "before_overrides": BEFORE},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": _torch_version()},
        "runs": runs,
        "tokens_per_s": summary,
        "speedup": summary["now"] / summary["before"],
        "units": {"tokens_per_s": "global non-pad tokens per second, median over the timed steps",
                  "speedup": "now / before, medians over the rounds"},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"before {summary['before']:.0f} tok/s, now {summary['now']:.0f} tok/s: {report['speedup']:.2f}x; "
          f"wrote {out}")
    return 0


def measure(shards: Path, args: argparse.Namespace, extra: Sequence[str]) -> dict[str, Any]:
    """One `workflows/train.py` run of `args.steps` steps on `shards` with the preset plus `extra` overrides."""
    from hydra import compose, initialize_config_dir

    from ttt_model.training.telemetry import read_jsonl
    from workflows.train import run

    with tempfile.TemporaryDirectory(prefix="ttt-speedup-") as tmp:
        root = Path(tmp)
        os.symlink(shards, root / "shards")
        overrides = [f"paths.root={root}", f"train.max_steps={args.steps}", "train.epochs=1000",
                     "train.validation.every_steps=0", f"train.checkpoint.every_steps={args.steps}",
                     "train.logging.tensorboard=false", "train.max_failures=0", *extra]
        with initialize_config_dir(config_dir=str(ROOT / "workflows" / "conf"), version_base=None):
            cfg = compose("config", overrides=overrides)
        start = time.perf_counter()
        final = run(cfg)
        wall = time.perf_counter() - start
        records = read_jsonl(Path(final["log_dir"]))
    timed = records[args.warmup:]
    return {
        "steps_timed": len(timed),
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed),
        "tokens_per_s_all_steps": sum(r["tokens"] for r in records) / sum(r["step_s"] for r in records),
        "step_s": statistics.median(r["step_s"] for r in timed),
        "padding_fraction": statistics.mean(r["padding_fraction"] for r in timed),
        "run_wall_s": wall,
    }


def _torch_version() -> str:
    import torch

    return torch.__version__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", default=str(ROOT / "runs" / "local" / "shards"))
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    p.add_argument("--warmup", type=int, default=10, help="steps left out of the median (compiling included)")
    p.add_argument("--rounds", type=int, default=2, help="before/now pairs, alternated")
    p.add_argument("--out", default="runs/bench/train_speedup.json")
    return p


if __name__ == "__main__":
    raise SystemExit(main())
