"""The files of a model checkpoint directory, and the readers that need no torch.

    config.json + model.safetensors   the Hugging Face layout (loadable by `Qwen2ForCausalLM.from_pretrained`)
    vocab_manifest.json               what every embedding row means (tokenization/vocab.py)
    objective.json                    the training objective, so the checkpoint is decoded the way it was trained
    training_state.pt                 optional: the training loop's own state for resume

Drivers that only inspect a checkpoint (evaluation picks a decoder from `objective.json`) import this module,
not ttt_model/core/model_checkpoint.py, and so never import torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MANIFEST_FILE = "vocab_manifest.json"
EXTRA_FILE = "training_state.pt"
OBJECTIVE_FILE = "objective.json"


def load_objective(path: str | Path) -> dict[str, Any] | None:
    """The training objective recorded with a checkpoint, or None when it has no record (older checkpoints)."""
    f = Path(path).expanduser() / OBJECTIVE_FILE
    return json.loads(f.read_text()) if f.is_file() else None


__all__ = ["EXTRA_FILE", "MANIFEST_FILE", "OBJECTIVE_FILE", "load_objective"]
