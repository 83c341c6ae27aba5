"""The driver's half of a training run: every check that can fail, then the plan the workers execute.

`plan_run(cfg)` runs before Ray starts any worker and raises `TrainConfigError` with a message saying what
to change for: an invalid `train` group or objective, missing or inconsistent shards, a shard vocabulary
that does not match the configured tokenizer/layout, an unknown or incompatible model path, a checkpoint of
the same run name made with another vocabulary, a global batch that does not divide, a data set too small
for one step, and MLflow requested (MLFLOW_TRACKING_URI) but not installed. What it returns is plain data
(a frozen dataclass) that Ray pickles into every worker's `train_loop_config`.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from tokenization.vocab import UnifiedVocab, read_manifest
from tokenization.vocab_factory import vocab_settings
from ttt_model.core.checkpoint_layout import MANIFEST_FILE
from ttt_model.core.model import build_model
from ttt_model.core.objective import ObjectiveConfig
from ttt_model.training.data import ShardSet, check_vocab, discover_shards, training_vocab
from ttt_model.training.resume_checkpoint import MODEL_DIR
from ttt_model.training.settings import TrainConfigError, TrainSettings, parse_settings, steps_per_epoch, total_steps
from ttt_model.training.validation import is_validation


@dataclass(frozen=True)
class RunPlan:
    """Everything a worker needs, decided once on the driver."""

    settings: TrainSettings
    model_cfg: dict[str, Any]
    objective: dict[str, Any]
    text_tokenizer: str
    vocab_layout: str
    vocab_manifest: dict[str, Any]  # the shards' (identical in meaning to the training vocabulary's)
    shard_files: tuple[str, ...]
    num_rows: int
    steps_per_epoch: int
    total_steps: int
    storage_path: str  # absolute path or URI of Ray's run storage (checkpoints)
    log_dir: str  # absolute path of metrics, TensorBoard, traces
    mlflow: bool
    config: dict[str, Any]  # the whole resolved config (MLflow params, the record of the run)


def plan_run(cfg: Mapping[str, Any]) -> RunPlan:
    """Check a full resolved config (plain dicts) and compute the run's plan; raises TrainConfigError."""
    if "train" not in cfg:
        raise TrainConfigError("the config has no `train` group: pick one, e.g. `train=cpu` or `train=a100x32`")
    settings = parse_settings(cfg["train"])
    try:
        objective = ObjectiveConfig.from_mapping(cfg["objective"])
    except ValueError as e:
        raise TrainConfigError(f"objective: {e}") from e
    shards = discover_shards(cfg["paths"]["shards"], settings.max_tokens, settings.batch.unit == "tokens")
    check_task_weights(objective, shards)
    text_tokenizer, layout = vocab_settings(cfg)
    try:
        vocab = training_vocab(text_tokenizer, layout, shards.manifest)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TrainConfigError(f"cannot build the training vocabulary (text tokenizer {text_tokenizer!r}, layout "
                               f"{layout!r}, codec of the shards): {e}") from e
    check_vocab(vocab, shards.manifest, f"the shards in {shards.root} (vs data.text_tokenizer / data.vocab_layout)")
    check_model(cfg["model"], vocab)
    storage = storage_path(settings)
    check_run_checkpoints(storage, settings.name, vocab)
    shards = without_validation(shards, settings)
    per_epoch = steps_per_epoch(settings, shards.num_rows, shards.clipped_tokens or 0)
    if per_epoch < 1:
        have = shards.num_rows if settings.batch.unit == "samples" else shards.clipped_tokens
        raise TrainConfigError(f"{have} {settings.batch.unit} in {shards.root} are fewer than one global batch "
                               f"({settings.batch.global_size} {settings.batch.unit}): lower train.batch.global_size")
    mlflow = bool(os.environ.get("MLFLOW_TRACKING_URI"))
    if mlflow and importlib.util.find_spec("mlflow") is None:
        raise TrainConfigError("MLFLOW_TRACKING_URI is set but mlflow is not installed (pip install mlflow-skinny), "
                               "or unset it to log to TensorBoard and JSONL only")
    return RunPlan(
        settings=settings, model_cfg=dict(cfg["model"]), objective=dict(cfg["objective"]),
        text_tokenizer=text_tokenizer, vocab_layout=layout, vocab_manifest=dict(shards.manifest),
        shard_files=shards.files, num_rows=shards.num_rows, steps_per_epoch=per_epoch,
        total_steps=total_steps(settings, per_epoch), storage_path=storage,
        log_dir=str(Path(settings.logging.dir).expanduser().resolve()), mlflow=mlflow, config=dict(cfg),
    )


def check_task_weights(objective: ObjectiveConfig, shards: ShardSet) -> None:
    """A weight (other than 1) for a task the shards do not hold is a typo or the wrong shards: it would silently
    weigh nothing."""
    weighted = {task for task, w in objective.task_weights.items() if w != 1}
    if not weighted:
        return
    tasks = set(pq.read_table(list(shards.files), columns=["task"]).column("task").unique().to_pylist())
    unknown = sorted(weighted - tasks)
    if unknown:
        raise TrainConfigError(f"objective.task_weights names task(s) {unknown} that the shards in {shards.root} do "
                               f"not hold (they hold {sorted(tasks)})")


def without_validation(shards: ShardSet, settings: TrainSettings) -> ShardSet:
    """The shard sizes training sees: validation rows (train.validation.fraction) never train, so the epoch
    is counted without them (reads the sample_id / n_tokens columns only)."""
    fraction = settings.validation.fraction
    if fraction <= 0:
        return shards
    table = pq.read_table(list(shards.files), columns=["sample_id", "n_tokens"])
    train = np.array([not is_validation(i, fraction) for i in table.column("sample_id").to_pylist()], dtype=bool)
    clipped = None
    if shards.clipped_tokens is not None:
        n = table.column("n_tokens").to_numpy()[train]
        clipped = int(np.minimum(n, settings.max_tokens).sum())
    return replace(shards, num_rows=int(train.sum()), clipped_tokens=clipped)


def storage_path(settings: TrainSettings) -> str:
    """Ray needs an absolute local path (or a URI such as s3://bucket/prefix, kept as is)."""
    path = settings.checkpoint.storage_path
    return path if "://" in path else str(Path(path).expanduser().resolve())


def check_model(model_cfg: Mapping[str, Any], vocab: UnifiedVocab) -> None:
    """The model config builds (on the meta device: no memory, no init) and its weights exist and match."""
    init = model_cfg.get("init", "random")
    if init == "pretrained":
        if not model_cfg.get("path"):
            raise TrainConfigError("model.init=pretrained needs model.path (a local checkpoint directory)")
        path = Path(str(model_cfg["path"])).expanduser()
        if not (path / "config.json").is_file():
            raise TrainConfigError(f"model.path {path} is not a model directory (no config.json there)")
        if (path / MANIFEST_FILE).is_file():
            check_vocab(vocab, read_manifest(path / MANIFEST_FILE), f"model.path {path}")
        return
    try:
        with torch.device("meta"):
            build_model(model_cfg, vocab)
    except (ValueError, TypeError) as e:
        raise TrainConfigError(f"model: {e}") from e


def check_run_checkpoints(storage: str, name: str, vocab: UnifiedVocab) -> None:
    """A rerun resumes from the run's latest checkpoint: refuse now if those were made with another vocabulary.
    (Local storage only; on object storage the worker's load_checkpoint performs the same check.)"""
    if "://" in storage:
        return
    for manifest in sorted(Path(storage, name).glob(f"checkpoint_*/{MODEL_DIR}/{MANIFEST_FILE}")):
        check_vocab(vocab, read_manifest(manifest), f"checkpoint {manifest.parent.parent} of run {name!r}")


__all__ = ["RunPlan", "check_model", "check_run_checkpoints", "plan_run", "storage_path"]
