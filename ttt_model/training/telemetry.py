"""Training metrics: model FLOPs and MFU, per-phase step timing, and the sinks rank 0 writes to.

FLOPs (model FLOPs, so activation recomputation does not inflate MFU), per optimizer step, forward +
backward = 3 × forward:
- body: 6 × N_body per real token, N_body = parameters outside the embedding / LM head;
- LM head: 6 × H × V per target position. The loss gathers the hidden states of target positions before
  the head (ttt_model.core.loss), so prompt tokens and padding cost nothing there;
- attention scores: per layer and packed sample of n tokens, QKᵀ and AV over the ~n²/2 causal pairs cost
  2 × n² × d_q forward, so 6 × n² × d_q with the backward. Packed samples never attend to each other, so
  the sum runs over samples, not rows (this is what packing saves over the reference's padded rows).
MFU = FLOPs / (step seconds × devices × peak). The peak is `logging.peak_tflops`, or the dense bf16 tensor
peak of a recognised GPU (A100 312 TFLOPS, H100/H200 989); unknown devices, CPUs included, get no MFU
rather than a made-up one.

Sinks (rank 0 only): `metrics.jsonl` (one record per logged step, what the report stage plots), TensorBoard
event files under `tensorboard/`, and MLflow when MLFLOW_TRACKING_URI is set in the environment (the
tracking URI and any credentials come only from the environment, never from config). A resumed run rewinds
all three to the checkpoint's step so a loss curve has no duplicated or orphaned points.

The human-readable progress line goes through `logging` (`log_progress`), never `print`: on a Ray Train
worker `print` is patched to log to the root logger and, because Ray has replaced the worker's sys.stdout,
also to echo to stdout, so a printed line reached the driver's console twice. Ray Train gives the worker's
root logger one console handler (and its per-worker application log file), so a logged line arrives once.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ttt_common.files import atomic_write_text

JSONL_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
# Dense bf16 tensor-core peak per device, TFLOPS (vendor data sheets, SXM parts).
PEAK_TFLOPS = {"A100": 312.0, "H100": 989.0, "H200": 989.0}

logger = logging.getLogger(__name__)


class FlopsModel:
    """Per-step model FLOPs of a Qwen2-style decoder from its config (see the module docstring)."""

    def __init__(self, config: Any) -> None:
        h, n_layers = int(config.hidden_size), int(config.num_hidden_layers)
        heads, kv_heads = int(config.num_attention_heads), int(config.num_key_value_heads)
        head_dim = int(getattr(config, "head_dim", None) or h // heads)
        inter = int(config.intermediate_size)
        q, kv = heads * head_dim, kv_heads * head_dim
        attn = h * q + q + 2 * (h * kv + kv) + q * h  # q/k/v projections with biases, o projection without
        mlp = 3 * h * inter
        self.body_params = n_layers * (attn + mlp + 2 * h) + h  # + 2 norms per layer, final norm
        self.hidden, self.vocab_rows, self.layers, self.q_dim = h, int(config.vocab_size), n_layers, q

    def step_flops(self, tokens: float, targets: float, sum_sq_lengths: float) -> float:
        return (6.0 * self.body_params * tokens + 6.0 * self.hidden * self.vocab_rows * targets
                + 6.0 * self.layers * self.q_dim * sum_sq_lengths)


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    """Peak FLOP/s of one device, or None when unknown (then MFU is not reported)."""
    if override_tflops:
        return float(override_tflops) * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for key, tf in PEAK_TFLOPS.items() if key in name), None)


def mfu(flops: float, seconds: float, devices: int, peak: float | None) -> float | None:
    if peak is None or seconds <= 0:
        return None
    return flops / (seconds * devices * peak)


class StepTimer:
    """Wall time per phase of a step. `sync` (e.g. torch.cuda.synchronize) runs around each phase when
    given, so asynchronous device work is charged to the phase that queued it."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self._sync = sync
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self._sync:
            self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._sync:
                self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def format_progress(step: int, total: int, epoch: int, m: Mapping[str, float], eta_s: float | None) -> str:
    """One human-readable line per logged step."""
    parts = [
        f"step {step}/{total} ep {epoch}",
        f"loss {m['loss']:.4f} (ar {m['loss_ar']:.4f} diff {m['loss_diffusion']:.4f})",
        f"lr {m['lr']:.2e}",
        f"gnorm {m['grad_norm']:.3f}",
        f"{m['tokens_per_s']:,.0f} tok/s",
    ]
    if "mfu" in m:
        parts.append(f"mfu {100 * m['mfu']:.1f}%")
    parts.append(f"pad {100 * m['padding_fraction']:.0f}%")
    parts.append(f"{m['step_s']:.2f} s/step")
    if eta_s is not None:
        parts.append(f"eta {_duration(eta_s)}")
    return " | ".join(parts)


def log_progress(step: int, total: int, epoch: int, m: Mapping[str, float], eta_s: float | None) -> None:
    """The progress line, once per logged step on rank 0 (logged, not printed: see the module docstring)."""
    logger.info(format_progress(step, total, epoch, m, eta_s))


def _duration(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def rewind_jsonl(path: Path, last_step: int) -> None:
    """Drop records after `last_step` (a resumed run redoes those steps), atomically."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b": "value"} (MLflow params are flat strings of at most 500 characters)."""
    out: dict[str, str] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = str(v)[:500]
    return out


class MlflowSink:
    """An MLflow run (new, or the one a resumed training run started); everything else from the environment."""

    def __init__(self, experiment: str, run_name: str, run_id: str | None, params: Mapping[str, Any]) -> None:
        import mlflow

        self._mlflow = mlflow
        mlflow.set_experiment(experiment)
        self.run_id: str = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name).info.run_id
        if run_id is None:
            flat = sorted(flatten(params).items())
            for start in range(0, len(flat), 100):  # the tracking API takes at most 100 params per call
                mlflow.log_params(dict(flat[start:start + 100]))

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self._mlflow.log_metrics({k.replace("/", "."): v for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        self._mlflow.end_run()


class MetricSinks:
    """Rank 0's metric outputs under `log_dir`: JSONL always, TensorBoard and MLflow when enabled."""

    def __init__(self, log_dir: str | Path, resume_step: int, tensorboard: bool, mlflow: MlflowSink | None) -> None:
        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        rewind_jsonl(self.dir / JSONL_FILE, resume_step)
        self._jsonl = (self.dir / JSONL_FILE).open("a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events at or after it (written before a crash) are hidden when the run resumes
            self._tb = SummaryWriter(str(self.dir / TENSORBOARD_DIR), purge_step=resume_step + 1)
        self.mlflow = mlflow

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        self._jsonl.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items() if v is not None}},
                                     sort_keys=True) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in finite.items():
                self._tb.add_scalar(k, v, step)
        if self.mlflow is not None:
            self.mlflow.log(step, finite)

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self.mlflow is not None:
            self.mlflow.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The per-step records of a run, in step order (for reports and tests)."""
    p = Path(path)
    if p.is_dir():
        p = p / JSONL_FILE
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


__all__ = [
    "JSONL_FILE", "PEAK_TFLOPS", "TENSORBOARD_DIR", "FlopsModel", "MetricSinks", "MlflowSink", "StepTimer",
    "flatten", "format_progress", "log_progress", "mfu", "peak_flops", "read_jsonl", "rewind_jsonl",
]
