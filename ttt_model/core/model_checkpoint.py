"""Checkpoint I/O: Hugging Face layout (config.json + safetensors) plus the vocabulary manifest.

A checkpoint directory is loadable by plain `Qwen2ForCausalLM.from_pretrained(dir)`; `vocab_manifest.json`
beside the weights says what every embedding row means. Loading through `load_checkpoint` checks that
manifest against the data's, because a model trained on one codec or id layout silently produces garbage
on another.

Writes are atomic: everything goes into a temporary sibling directory, is fsynced, and is renamed into place.
A crash at any point leaves either the previous checkpoint or the new one complete under `out_dir` (or, in
the instant between the two renames of an overwrite, no `out_dir` and the previous one in a `.old` sibling),
never a directory that loads wrong. `extra` carries the training loop's own state for resume (optimizer,
scheduler, RNG, data position), saved in the same atomic step.

`objective.json` records the training objective (workflows/conf/objective: `mode` ttt | ar | nar and the rest
of the group), because a checkpoint must be decoded the way it was trained (ttt_model/decoding/sampler_config.py
`decode: auto`). It is JSON beside the weights, not part of `extra`, so evaluation drivers read it without torch and
without loading the optimizer state (ttt_model/core/checkpoint_layout.py: the file names and that reader); a
checkpoint without it (older ones) reads as "not recorded".
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import Qwen2ForCausalLM

from tokenization.vocab import check_compatible, read_manifest, write_manifest
from ttt_model.core.checkpoint_layout import EXTRA_FILE, MANIFEST_FILE, OBJECTIVE_FILE


def save_checkpoint(model: Qwen2ForCausalLM, vocab_manifest: Mapping[str, Any], out_dir: str | Path,
                    extra: Mapping[str, Any] | None = None, objective: Mapping[str, Any] | None = None) -> Path:
    """Write `model` (safetensors), its vocabulary manifest, optional `extra` state and optional training
    `objective` config (a JSON-serialisable mapping with at least `mode`) to `out_dir`, atomically.

    `extra` is saved with `torch.save` (tensors, nested dicts/lists, numbers and strings: what optimizer and
    scheduler `state_dict()`s and RNG states are made of) and read back with `load_extra`. An existing
    `out_dir` is replaced. Returns the checkpoint directory.
    """
    out = Path(out_dir)
    _check_rows(model, vocab_manifest, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; a checkpoint is read by other processes and users
        model.save_pretrained(tmp)
        write_manifest(vocab_manifest, tmp / MANIFEST_FILE)
        if extra is not None:
            torch.save(dict(extra), tmp / EXTRA_FILE)
        if objective is not None:
            if "mode" not in objective:
                raise ValueError(f"the objective record needs its `mode`, got keys {sorted(objective)}")
            (tmp / OBJECTIVE_FILE).write_text(json.dumps(dict(objective), indent=2, sort_keys=True) + "\n")
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_checkpoint(path: str | Path, expected_manifest: Mapping[str, Any] | None = None, *,
                    attn_implementation: str = "sdpa",
                    dtype: torch.dtype | str = "auto") -> tuple[Qwen2ForCausalLM, dict[str, Any]]:
    """Load a checkpoint written by `save_checkpoint` -> (model, its vocabulary manifest).

    Raises `VocabMismatchError` when `expected_manifest` (the data's or the sampler's) differs from the
    checkpoint's in anything that changes what an id means, and FileNotFoundError when the directory or
    its manifest is missing. `dtype="auto"` keeps the dtype the weights were saved in.
    """
    d = Path(path).expanduser()
    if not d.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {d}")
    manifest_path = d / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"{d} has no {MANIFEST_FILE}, so what its embedding rows mean is unknown: it is not a TtT checkpoint "
            "(to start from a base Qwen2/2.5 checkpoint, use build_model with model.init=pretrained)"
        )
    manifest = read_manifest(manifest_path)
    if expected_manifest is not None:
        check_compatible(expected_manifest, manifest, what=f"checkpoint {d}")
    model = Qwen2ForCausalLM.from_pretrained(d, local_files_only=True, attn_implementation=attn_implementation,
                                             dtype=dtype)
    _check_rows(model, manifest, d)
    return model, manifest


def load_extra(path: str | Path) -> dict[str, Any] | None:
    """The `extra` state saved with a checkpoint, or None when it was saved without one."""
    f = Path(path).expanduser() / EXTRA_FILE
    return torch.load(f, map_location="cpu", weights_only=True) if f.is_file() else None


def _check_rows(model: Qwen2ForCausalLM, manifest: Mapping[str, Any], where: Path) -> None:
    """Every id of the vocabulary must have an embedding row (catches pairing a model with the wrong manifest)."""
    rows = model.get_input_embeddings().weight.shape[0]
    if rows < int(manifest["vocab_size"]):
        raise ValueError(f"{where}: the model has {rows} embedding rows but the vocabulary has "
                         f"{manifest['vocab_size']} ids")


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename the finished `tmp` to `out` (same filesystem, so each rename is atomic)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.{uuid.uuid4().hex}.old")
        os.rename(out, old)
    os.rename(tmp, out)
    _fsync(out.parent)
    if old is not None:
        shutil.rmtree(old)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
