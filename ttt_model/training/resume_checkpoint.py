"""Training checkpoints: everything needed to continue a run exactly, in one directory per checkpoint.

Layout (each rank stages its part in a local directory; Ray Train merges the ranks' directories into one
checkpoint under `storage_path` when they all report it):

    model/              rank 0, `ttt_model.core.model_checkpoint.save_checkpoint`: config.json + model.safetensors +
                        vocab_manifest.json (HF-loadable), objective.json (the training objective, so the
                        checkpoint is decoded the way it was trained) and, as its `extra`, the loop state +
                        scheduler
    optimizer/          torch.distributed.checkpoint (DCP): `.metadata` from rank 0, one shard file per rank
    rng/rank_<r>.pt     every rank's torch / numpy / python RNG states

Why the optimizer goes through DCP: with FSDP2 each rank holds only its shard of the Adam moments; DCP
writes the shards in parallel and reloads them into any rank's shard layout, so the 24 GB of a 3B run's
moments never pass through one process. The model is gathered to rank 0 and saved in full, because its
consumers (sampler, evaluation, stock transformers) want one HF-loadable directory.

Who guarantees what (checkpoint directories are never half-valid):
- Ray registers a checkpoint only after every rank's files are uploaded, then rewrites its snapshot, then
  deletes the checkpoints beyond `CheckpointConfig(num_to_keep)` (ray/train/v2 checkpoint_manager.py);
  `ray.train.get_checkpoint()` after a restart or a rerun returns the latest registered one. A crash
  mid-upload leaves an unregistered directory that nothing ever loads.
- Here: `save_checkpoint` writes `model/` atomically, and `load_train_state` refuses a directory missing
  any part (for a copy made by hand).
Ray's own num_to_keep is used rather than our own pruning because it also works on S3/GCS storage, where
a directory rename is not atomic and listing is eventually consistent.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from transformers import Qwen2ForCausalLM

from ttt_model.core.model_checkpoint import load_extra, save_checkpoint

MODEL_DIR, OPTIMIZER_DIR, RNG_DIR = "model", "optimizer", "rng"


@dataclass
class TrainState:
    """Where the loop is. `rows_in_epoch[r]` = rows rank r consumed in the current epoch (its data position)."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    rows_in_epoch: list[int] = field(default_factory=list)
    world_size: int = 1
    total_steps: int = 0
    seed: int = 0
    mlflow_run_id: str | None = None

    def next_epoch(self) -> None:
        self.epoch += 1
        self.step_in_epoch = 0
        self.rows_in_epoch = [0] * self.world_size


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain values (loadable with torch.load(weights_only=True))."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def full_model_state(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """The whole model's weights on rank 0's CPU (every rank must call; other ranks get {}). `prefix` is the
    attribute path of the language model inside `module` (e.g. "lm.")."""
    sd = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k.removeprefix(prefix): v for k, v in sd.items()}


def export_model(config: Any, state_dict: Mapping[str, torch.Tensor]) -> Qwen2ForCausalLM:
    """A plain CPU Qwen2ForCausalLM holding `state_dict`: built on the meta device (no random init of
    billions of weights just to overwrite them), materialised empty, re-tied, then loaded strictly."""
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    model.to_empty(device="cpu")
    model.tie_weights()
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def save_train_checkpoint(out_dir: str | Path, *, module: torch.nn.Module, lm_prefix: str, lm_config: Any,
                          optimizer: torch.optim.Optimizer, scheduler: Any, state: TrainState,
                          vocab_manifest: Mapping[str, Any], rank: int,
                          objective: Mapping[str, Any] | None = None) -> Path:
    """Stage this rank's part of a training checkpoint in `out_dir` (a local directory). Collective: every
    rank calls it with its own `out_dir`; Ray merges them. `objective`: the run's objective config (the
    `objective` group, `mode` included), recorded beside the model; None leaves it unrecorded."""
    out = Path(out_dir)
    (out / RNG_DIR).mkdir(parents=True, exist_ok=True)
    weights = full_model_state(module, lm_prefix)
    osd = get_optimizer_state_dict(module, optimizer)
    dcp.save({"optimizer": osd}, checkpoint_id=str(out / OPTIMIZER_DIR))
    torch.save(rng_state(), out / RNG_DIR / f"rank_{rank}.pt")
    if rank == 0:
        extra = {"train_state": asdict(state), "scheduler": scheduler.state_dict()}
        save_checkpoint(export_model(lm_config, weights), vocab_manifest, out / MODEL_DIR, extra=extra,
                        objective=objective)
    return out


def load_train_state(ckpt_dir: str | Path) -> tuple[TrainState, dict[str, Any]]:
    """(loop state, scheduler state) of a checkpoint; raises when a part is missing."""
    d = Path(ckpt_dir)
    missing = [p for p in (MODEL_DIR, f"{OPTIMIZER_DIR}/.metadata", RNG_DIR) if not (d / p).exists()]
    extra = load_extra(d / MODEL_DIR) if not missing else None
    if missing or extra is None:
        raise FileNotFoundError(f"{d} is not a complete training checkpoint (missing {missing or ['model extra']})")
    return TrainState(**extra["train_state"]), extra["scheduler"]


def restore_optimizer(ckpt_dir: str | Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load the sharded optimizer state into this rank's shard (collective)."""
    osd = get_optimizer_state_dict(module, optimizer)
    dcp.load({"optimizer": osd}, checkpoint_id=str(Path(ckpt_dir) / OPTIMIZER_DIR))
    set_optimizer_state_dict(module, optimizer, osd)


def restore_rng(ckpt_dir: str | Path, rank: int) -> bool:
    """Restore this rank's RNG states; False when the checkpoint has none for this rank."""
    f = Path(ckpt_dir) / RNG_DIR / f"rank_{rank}.pt"
    if not f.is_file():
        return False
    set_rng_state(torch.load(f, weights_only=True))
    return True


__all__ = [
    "MODEL_DIR", "OPTIMIZER_DIR", "RNG_DIR", "TrainState", "export_model", "full_model_state",
    "load_train_state", "restore_optimizer", "restore_rng", "rng_state", "save_train_checkpoint", "set_rng_state",
]
