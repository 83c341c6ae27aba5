"""Train TtT with Ray Train: the shards -> FSDP2 workers -> checkpoints (ttt_model/training/loop.py).

    python workflows/train.py                                   # embedded default: 1 CPU worker, 2 threads
    python workflows/train.py train=a100x32 model=qwen2.5-3b model.init=pretrained model.path=/models/Qwen2.5-3B
    python workflows/train.py train.batch.global_size=32 train.epochs=2 paths.root=/nfs/ttt/run1
    ray job submit --working-dir . -- python workflows/train.py train=a100x32   # on a cluster (cluster/README.md)

Running it again with the same config continues from the run's latest checkpoint (`train.name` under
`train.checkpoint.storage_path`); a finished run is a no-op. Every configuration mistake is reported before
any worker starts (exit status 2). The last line printed is the final checkpoint's directory; the same
facts are in `<train.logging.dir>/final.json`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf

from pipelines.console import setup_console, train_log_level, training_progress
from pipelines.ray_runtime import ensure_ray
from ttt_model.training.settings import RaySettings, TrainConfigError, parse_settings

if TYPE_CHECKING:
    from ttt_model.training.plan import RunPlan

FINAL_FILE = "final.json"


def init_ray(settings: RaySettings) -> bool:
    """Join or start Ray as every job does (pipelines.ray_runtime); True when this call connected."""
    return ensure_ray(settings.address, settings.num_cpus, settings.object_store_gb)


def train_worker(config: dict[str, Any]) -> None:
    """What every Ray Train worker runs: console set-up for the driver, then ttt_model's training loop."""
    import logging

    from pipelines.console import mark_worker_warnings
    from ttt_model.training.loop import train_loop_per_worker

    # A no-op when Ray Train has configured this worker's root logger (the default); with its worker logging
    # disabled (RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING=0) this keeps the progress lines on stderr.
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Warnings print as "WARNING <logger>: ...": the driver's quiet console shows those and sends the per-step
    # progress lines to the run's log file (pipelines/console.py).
    mark_worker_warnings()
    train_loop_per_worker(config)


def build_trainer(plan: RunPlan) -> Any:
    """The TorchTrainer of a plan: scaling from `train.scaling`, the shards as the "train" dataset, split
    across ranks in read order (preserve_order, no locality: the deterministic split of ttt_model/training/data.py)."""
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from ttt_model.training.data import READ_COLUMNS

    s = plan.settings
    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = True
    shards = ray.data.read_parquet(list(plan.shard_files)).select_columns(list(READ_COLUMNS))  # pushed into the read
    shards.context.execution_options.preserve_order = True  # blocks in file order, materialized or not
    if s.data.materialize:
        shards = shards.materialize()
    return TorchTrainer(
        train_worker,
        train_loop_config={"plan": plan},
        scaling_config=ScalingConfig(num_workers=s.scaling.num_workers, use_gpu=s.scaling.use_gpu,
                                     resources_per_worker=dict(s.scaling.resources_per_worker),
                                     placement_strategy=s.scaling.placement_strategy),
        torch_config=TorchConfig(backend=s.scaling.backend),
        run_config=RunConfig(name=s.name, storage_path=plan.storage_path,
                             checkpoint_config=CheckpointConfig(num_to_keep=s.checkpoint.keep),
                             failure_config=FailureConfig(max_failures=s.max_failures),
                             logging_config=LoggingConfig(log_level=train_log_level())),
        datasets={"train": shards},
        dataset_config=DataConfig(execution_options=ingest, enable_shard_locality=False),
    )


def finished_run(plan: RunPlan) -> dict[str, Any] | None:
    """The final.json of a run with nothing left to do (it reached the planned steps and names the run's latest
    checkpoint), else None. Training it again would only restore that checkpoint, but doing so starts a Ray Train
    worker group and loads model and optimizer state on every rank (minutes for a 3B model on 32 GPUs), so `run`
    returns this instead (full_run's train stage and the sweep's finished variants)."""
    try:
        final = json.loads((Path(plan.log_dir) / FINAL_FILE).read_text())
    except (OSError, ValueError):
        return None
    checkpoints = sorted(p for p in (Path(plan.storage_path) / plan.settings.name).glob("checkpoint_*") if p.is_dir())
    done = final.get("total_steps") == plan.total_steps and (final.get("metrics") or {}).get("step") == plan.total_steps
    latest = bool(checkpoints) and str(checkpoints[-1]) == str(final.get("checkpoint"))
    return final if done and latest and Path(str(final.get("model"))).is_dir() else None


def run(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Plan (all checks), train, and record the final checkpoint; returns what final.json holds."""
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    if "train" in plain:
        parse_settings(plain["train"])  # pure-config mistakes fail here, before torch is even imported
    from ttt_model.training.plan import plan_run
    from ttt_model.training.telemetry import JSONL_FILE

    plan = plan_run(plain)
    done = finished_run(plan)
    if done is not None:
        return done
    owns_ray = init_ray(plan.settings.ray)
    try:
        with training_progress(Path(plan.log_dir) / JSONL_FILE, plan.total_steps):
            result = build_trainer(plan).fit()
    finally:
        if owns_ray:
            import ray

            ray.shutdown()
    final = {
        "name": plan.settings.name,
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "model": f"{result.checkpoint.path}/model" if result.checkpoint else None,
        "total_steps": plan.total_steps,
        "metrics": {k: v for k, v in (result.metrics or {}).items() if isinstance(v, int | float)},
        "log_dir": plan.log_dir,
    }
    log_dir = Path(plan.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / FINAL_FILE).write_text(json.dumps(final, indent=2, sort_keys=True) + "\n")
    return final


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    setup_console(cfg, "train")
    try:
        final = run(cfg)
    except TrainConfigError as e:  # a config mistake: the message says what to fix, a traceback would bury it
        print(f"train: {e}", file=sys.stderr)
        sys.exit(2)
    print(final["model"])


if __name__ == "__main__":
    main()
