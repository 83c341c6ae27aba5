"""Held-out loss per task while training: the learning curves of a run.

Which samples: a stable hash of the *utterance* (the sample id without its source name and repeat suffix)
puts a fixed `fraction` of the shards aside. Hashing the utterance, not the sample, matters: one recording
is often several samples (`librispeech/84-121123-0000` as ASR and `librispeech_tts/84-121123-0000` as TTS),
and a held-out ASR sample whose audio and text train the TTS task would not be held out. Training skips
these rows (`ttt_model.training.data.rank_stream`); every `every_steps` steps all ranks compute the loss of the
same validation rows, per task, and rank 0 logs `val/<task>/ar` and `val/<task>/diffusion`.

What the numbers are: the training objective (strategies and noising included) on unseen samples, with the
noise drawn once (a fixed epoch of the collator's per-sample streams), so two points of a curve differ only
by the model. AR loss = mean CE per text target; diffusion loss = the 1/p-weighted masked CE per maskable
audio token, as in training (ttt_model.core.loss).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from ttt_model.core.collator import PackedBatch
from ttt_model.core.loss import LossSums, global_counts

VALIDATION_EPOCH = 0  # the collator's noise streams of this epoch, at every evaluation
_REPEAT = re.compile(r"#r\d+$")  # up-sampled copies of a record (pipelines.records: <record_id>#r<k>)


def utterance_key(sample_id: str) -> str:
    """`<source>/<utterance>[#r<k>]` -> `<utterance>`: the same for every view of one recording or text."""
    return _REPEAT.sub("", sample_id.split("/", 1)[-1])


def is_validation(sample_id: str, fraction: float) -> bool:
    """Whether a sample is held out for validation (stable across processes, runs and shard layouts)."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"validation\x1f{utterance_key(sample_id)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64 < fraction


def read_validation_rows(files: Sequence[str], fraction: float, max_per_task: int,
                         columns: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The validation rows of the shards, per task: the first `max_per_task` held-out samples of each task in
    sample-id order. Reads the small id/task columns of every file, then the token columns of the chosen rows."""
    if fraction <= 0 or not files:
        return {}
    index = pq.read_table(list(files), columns=["sample_id", "task"]).to_pylist()
    chosen: dict[str, list[str]] = {}
    for row in sorted(index, key=lambda r: r["sample_id"]):
        ids = chosen.setdefault(row["task"], [])
        if len(ids) < max_per_task and is_validation(row["sample_id"], fraction):
            ids.append(row["sample_id"])
    wanted = sorted(i for ids in chosen.values() for i in ids)
    if not wanted:
        return {}
    table = pq.read_table(list(files), columns=[*dict.fromkeys([*columns, "task"])])
    table = table.filter(pc.is_in(table.column("sample_id"), value_set=pc.cast(wanted, table.schema.field(
        "sample_id").type)))
    out: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(table.to_pylist(), key=lambda r: r["sample_id"]):
        out.setdefault(row["task"], []).append(row)
    return out


@torch.no_grad()
def task_losses(loss_fn: Callable[[PackedBatch], LossSums], collate: Callable[[Sequence[Mapping], int], PackedBatch],
                rows_by_task: Mapping[str, Sequence[Mapping]], micro_size: int, rank: int, world: int,
                device: torch.device) -> dict[str, dict[str, float]]:
    """Loss per task over the validation rows, split across ranks.

    Every rank runs the same number of forward passes per task (a rank with no rows left runs an empty
    micro-batch), because sharded models gather parameters collectively in every forward.
    """
    names = sorted(rows_by_task)
    sums = torch.zeros(len(names), 2, dtype=torch.float64, device=device)  # (AR CE sum, weighted masked CE sum)
    counts: list[tuple[int, int]] = []
    for t, task in enumerate(names):
        rows = list(rows_by_task[task])
        n_micro = math.ceil(len(rows) / (micro_size * world))
        batches = [collate(rows[(m * world + rank) * micro_size:(m * world + rank + 1) * micro_size],
                           VALIDATION_EPOCH) for m in range(n_micro)]
        counts.append(global_counts(batches, device))  # all ranks: (N_AR, N_maskable) of the task
        for batch in batches:
            part = loss_fn(batch)
            sums[t] += torch.stack([part.ar_sum.detach(), part.diff_sum.detach()]).double()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    out: dict[str, dict[str, float]] = {}
    for task, (ar_sum, diff_sum), (n_ar, n_mask) in zip(names, sums.tolist(), counts, strict=True):
        out[task] = {**({"ar": ar_sum / n_ar} if n_ar else {}), **({"diffusion": diff_sum / n_mask} if n_mask else {})}
    return out


__all__ = ["VALIDATION_EPOCH", "is_validation", "read_validation_rows", "task_losses", "utterance_key"]
