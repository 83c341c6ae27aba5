"""Training settings: the `train` config group parsed into typed, validated values, and the batch arithmetic.

Everything a run can get wrong in its configuration is checked here, on the driver, before Ray starts a
single worker: a mistake found by 32 GPU workers after the model is built costs minutes of a cluster and
a traceback per worker; found here it costs one line. `TrainConfigError` carries a message that says
what to change.

Batch arithmetic (one optimizer step):
    global batch = micro-batch × accumulation steps × world size
in samples (`batch.unit: samples`, the paper's 2048) or in tokens (`batch.unit: tokens`, a budget of real
tokens per micro-batch). The accumulation count is derived, never configured, and a global batch that
the micro-batch × world size does not divide is an error rather than silently rounded: a rounded batch
changes the effective learning rate per sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from ttt_common.config_tools import reject_unknown_keys

BATCH_UNITS = ("samples", "tokens")
SCHEDULES = ("cosine", "linear", "constant_with_warmup")
MIXED_PRECISION = (None, "bf16")


class TrainConfigError(ValueError):
    """The run cannot start: the message names the setting and what to change."""


@dataclass(frozen=True)
class BatchSettings:
    unit: str = "samples"
    global_size: int = 16  # samples or tokens per optimizer step, all ranks together
    micro_size: int = 4  # samples or tokens per micro-batch on one rank


@dataclass(frozen=True)
class OptimSettings:
    lr: float = 2e-5
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.01
    schedule: str = "cosine"
    warmup_ratio: float = 0.01
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping (the norm is still logged)


@dataclass(frozen=True)
class LossSettings:
    chunk_size: int = 1024  # target positions per LM-head chunk (ttt_model.core.loss)
    checkpoint: bool = False  # recompute head chunks in backward instead of keeping their logits


@dataclass(frozen=True)
class DataSettings:
    shuffle_buffer: int = 2048  # rows in each rank's seeded shuffle buffer (0 = read order)
    read_batch_rows: int = 256  # rows per Ray Data batch pulled from the shard
    prefetch_steps: int = 0  # steps collated ahead in a background thread (0 = inline)
    materialize: bool = False  # read the shards once into the object store (small data: no re-read per epoch)


@dataclass(frozen=True)
class ScalingSettings:
    num_workers: int = 2
    use_gpu: bool = False
    backend: str = "gloo"
    resources_per_worker: Mapping[str, float] = field(default_factory=lambda: {"CPU": 0.5})
    placement_strategy: str = "PACK"
    threads_per_worker: int = 1  # torch intra-op threads per worker (0 = torch's default)


@dataclass(frozen=True)
class ParallelSettings:
    # None: fp32 compute | "bf16": bf16 compute, float32 weights (FSDP2 MixedPrecisionPolicy across ranks,
    # torch.autocast on one rank)
    mixed_precision: str | None = None
    activation_checkpointing: bool = False
    # torch.compile each decoder layer (as torchtitan does: the layers share one compiled graph, so compiling
    # costs about one layer's worth). Inductor on CPU needs a C++ compiler; without one the loop warns and runs
    # eager.
    compile: bool = False
    reshard_after_forward: bool = True


@dataclass(frozen=True)
class CheckpointSettings:
    storage_path: str = "runs/local/checkpoints"
    every_steps: int = 50
    keep: int = 3


@dataclass(frozen=True)
class LoggingSettings:
    dir: str = "runs/local/train"
    every_steps: int = 1  # progress line + JSONL/TensorBoard/MLflow record every N steps
    report_every_steps: int = 10  # ray.train.report every N steps (each is a barrier, docs/ray.md)
    tensorboard: bool = True
    mlflow_experiment: str = "ttt"
    sample_trace: bool = False  # per-rank JSONL of the sample ids of every step (audits, tests)
    peak_tflops: float | None = None  # per device; None = known GPUs only (MFU is omitted elsewhere)
    sync_timings: bool = False  # synchronise the device around each phase (exact breakdown, slower)


@dataclass(frozen=True)
class ValidationSettings:
    """Held-out loss per task while training (ttt_model/training/validation.py): `fraction` of the utterances never
    train; every `every_steps` steps (and at the end) the loss of up to `max_per_task` of them per task is
    logged as val/<task>/ar and val/<task>/diffusion, and with `control` the same targets after another held-out
    sample's prompt (val/<task>/ar_control, .../diffusion_control: one more forward per micro-batch). fraction 0
    or every_steps 0 = off."""

    fraction: float = 0.0
    every_steps: int = 0
    max_per_task: int = 64
    control: bool = True


@dataclass(frozen=True)
class RaySettings:
    address: str | None = None  # None: RAY_ADDRESS, else a local cluster with `num_cpus` logical CPUs
    num_cpus: int = 4
    object_store_gb: float = 1.0


@dataclass(frozen=True)
class FaultInjection:
    """Tests only: the worker of `rank` exits the process (os._exit) before optimizer step `step`, once per
    run directory (a marker file), so a restarted worker group gets past it."""

    step: int | None = None
    rank: int = 1


@dataclass(frozen=True)
class TrainSettings:
    name: str = "ttt"
    seed: int = 0
    epochs: int = 1
    max_steps: int | None = None  # cap on optimizer steps (also the schedule's horizon)
    max_tokens: int = 1024  # longest sample (longer ones are fitted) and the packed row length
    # Pack into rows of this many tokens instead (a multiple of it where a micro-batch holds a longer sample, at
    # most max_tokens): attention costs the row length squared (TtTCollator). None: rows of max_tokens.
    row_tokens: int | None = None
    packing: bool = True
    max_failures: int = 0  # worker-group restarts from the last checkpoint before the run fails (-1 = unlimited)
    batch: BatchSettings = field(default_factory=BatchSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    loss: LossSettings = field(default_factory=LossSettings)
    data: DataSettings = field(default_factory=DataSettings)
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    parallel: ParallelSettings = field(default_factory=ParallelSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    ray: RaySettings = field(default_factory=RaySettings)
    fault_injection: FaultInjection = field(default_factory=FaultInjection)

    @property
    def world_size(self) -> int:
        return self.scaling.num_workers

    @property
    def accumulation(self) -> int:
        """Micro-batches per rank per optimizer step."""
        return self.batch.global_size // (self.batch.micro_size * self.world_size)


_NESTED = {
    "batch": BatchSettings, "optim": OptimSettings, "loss": LossSettings, "data": DataSettings,
    "scaling": ScalingSettings, "parallel": ParallelSettings, "checkpoint": CheckpointSettings,
    "logging": LoggingSettings, "validation": ValidationSettings, "ray": RaySettings,
    "fault_injection": FaultInjection,
}


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    reject_unknown_keys(values, known, where, TrainConfigError)
    kwargs = {}
    for k, v in values.items():
        if k in _NESTED and cls is TrainSettings:
            kwargs[k] = _build(_NESTED[k], v or {}, f"{where}.{k}")
        elif isinstance(v, Sequence) and not isinstance(v, str):
            kwargs[k] = tuple(v)
        elif isinstance(v, Mapping):
            kwargs[k] = dict(v)
        else:
            kwargs[k] = v
    return cls(**kwargs)


def parse_settings(train_cfg: Mapping[str, Any]) -> TrainSettings:
    """The `train` group (a plain, resolved mapping) -> validated TrainSettings."""
    settings = _build(TrainSettings, train_cfg, "train")
    validate(settings)
    return settings


def validate(s: TrainSettings) -> None:
    """Every setting that can be checked without data or a cluster; raises TrainConfigError."""
    problems = []
    b = s.batch
    if b.unit not in BATCH_UNITS:
        problems.append(f"train.batch.unit must be one of {BATCH_UNITS}, got {b.unit!r}")
    if s.world_size < 1:
        problems.append(f"train.scaling.num_workers must be >= 1, got {s.world_size}")
    if b.micro_size < 1 or b.global_size < 1:
        problems.append(f"train.batch sizes must be positive, got global {b.global_size}, micro {b.micro_size}")
    elif s.world_size >= 1 and b.global_size % (b.micro_size * s.world_size) != 0:
        problems.append(
            f"train.batch.global_size={b.global_size} {b.unit} is not divisible by micro_size × num_workers = "
            f"{b.micro_size} × {s.world_size} = {b.micro_size * s.world_size}; pick a global size that is a "
            "multiple of it (or change micro_size / num_workers)")
    if b.unit == "tokens" and b.micro_size < s.max_tokens:
        problems.append(f"train.batch.micro_size={b.micro_size} tokens is below max_tokens={s.max_tokens}: "
                        "one full-length sample must fit a micro-batch")
    if s.max_tokens < 2:
        problems.append(f"train.max_tokens must be at least 2, got {s.max_tokens}")
    if s.row_tokens is not None and s.row_tokens < 2:
        problems.append(f"train.row_tokens must be null or at least 2, got {s.row_tokens}")
    if s.max_failures < -1:
        problems.append(f"train.max_failures must be >= -1, got {s.max_failures}")
    if s.epochs < 1:
        problems.append(f"train.epochs must be >= 1, got {s.epochs}")
    if s.max_steps is not None and s.max_steps < 1:
        problems.append(f"train.max_steps must be null or >= 1, got {s.max_steps}")
    o = s.optim
    if o.schedule not in SCHEDULES:
        problems.append(f"train.optim.schedule must be one of {SCHEDULES}, got {o.schedule!r}")
    if not 0.0 <= o.warmup_ratio < 1.0:
        problems.append(f"train.optim.warmup_ratio must be in [0, 1), got {o.warmup_ratio}")
    if o.lr <= 0 or o.weight_decay < 0 or o.grad_clip < 0 or len(o.betas) != 2:
        problems.append(f"train.optim: need lr > 0, weight_decay >= 0, grad_clip >= 0 and two betas, got {o}")
    if s.parallel.mixed_precision not in MIXED_PRECISION:
        problems.append(f"train.parallel.mixed_precision must be null or 'bf16', got {s.parallel.mixed_precision!r}")
    sc = s.scaling
    if sc.use_gpu and sc.backend != "nccl":
        problems.append(f"train.scaling.use_gpu needs backend nccl, got {sc.backend!r}")
    if not sc.use_gpu and sc.backend != "gloo":
        problems.append(f"CPU workers need backend gloo, got {sc.backend!r}")
    if s.checkpoint.every_steps < 1 or s.checkpoint.keep < 1:
        problems.append(f"train.checkpoint.every_steps and keep must be >= 1, got {s.checkpoint}")
    if s.logging.every_steps < 1 or s.logging.report_every_steps < 1:
        problems.append("train.logging.every_steps and report_every_steps must be >= 1")
    v = s.validation
    if not 0.0 <= v.fraction < 0.5 or v.every_steps < 0 or v.max_per_task < 1:
        problems.append(f"train.validation: need 0 <= fraction < 0.5, every_steps >= 0, max_per_task >= 1, got {v}")
    if s.data.shuffle_buffer < 0 or s.data.read_batch_rows < 1 or s.data.prefetch_steps < 0:
        problems.append(f"train.data: need shuffle_buffer >= 0, read_batch_rows >= 1, prefetch_steps >= 0, "
                        f"got {s.data}")
    if s.fault_injection.step is not None and not 0 <= s.fault_injection.rank < max(s.world_size, 1):
        problems.append(f"train.fault_injection.rank={s.fault_injection.rank} is not a rank of {s.world_size} workers")
    if problems:
        raise TrainConfigError("invalid training configuration:\n  - " + "\n  - ".join(problems))


def steps_per_epoch(s: TrainSettings, num_rows: int, clipped_tokens: int) -> int:
    """Optimizer steps in one epoch, the same on every rank.

    samples: Ray's equal split gives each rank exactly floor(rows / world) rows, so the count is exact.
    tokens: each micro-batch holds at most `micro_size` tokens (greedy fill), so a rank's share of the
    tokens lasts at least this many steps; `clipped_tokens` counts each sample at most max_tokens. The loop
    also stops an epoch early, on every rank at once, if any rank runs out first.
    """
    per_rank_step = s.batch.micro_size * s.accumulation
    if s.batch.unit == "samples":
        return (num_rows // s.world_size) // per_rank_step
    return (clipped_tokens // s.world_size) // per_rank_step


def total_steps(s: TrainSettings, per_epoch: int) -> int:
    """The schedule's horizon: all epochs, capped by max_steps."""
    total = per_epoch * s.epochs
    return min(total, s.max_steps) if s.max_steps is not None else total


__all__ = [
    "BATCH_UNITS", "BatchSettings", "CheckpointSettings", "DataSettings", "FaultInjection", "LoggingSettings",
    "LossSettings", "OptimSettings", "ParallelSettings", "RaySettings", "ScalingSettings", "TrainConfigError",
    "TrainSettings", "ValidationSettings", "parse_settings", "steps_per_epoch", "total_steps", "validate",
]
