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

The control (`val/<task>/ar_control`, `val/<task>/diffusion_control`): the same targets, with the same noise,
scored after another held-out sample's prompt (everything before the first target: the speech of an ASR sample,
the text of a TTS sample, the question of a chat), the prompts rotated by half the task's rows so every sample
gets one that is not its own (`TtTCollator(..., prompt_donors=...)`). A model that ignores its input scores the
same on both; the gap is how much of the loss the input explains, a per-task learning signal that needs no
decoding (the TTS diffusion loss can fall by learning only which codes are common; its control falls with it).
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
def task_losses(loss_fn: Callable[[PackedBatch], LossSums], collate: Callable[..., PackedBatch],
                rows_by_task: Mapping[str, Sequence[Mapping]], micro_size: int, rank: int, world: int,
                device: torch.device | str, control: bool = True) -> dict[str, dict[str, float]]:
    """Loss per task over the validation rows, split across ranks.

    Every rank runs the same number of forward passes per task (a rank with no rows left runs an empty
    micro-batch), because sharded models gather parameters collectively in every forward.
    """
    names = sorted(rows_by_task)
    # per task: (AR CE sum, weighted masked CE sum) with the samples' own prompts, then with the donors' prompts
    # and how many of the task's samples have a prompt to swap (documents have none: no control for them)
    sums = torch.zeros(len(names), 5, dtype=torch.float64, device=device)
    counts: list[tuple[int, int]] = []
    with_control = [control and len(rows_by_task[task]) > 1 for task in names]  # one row has no other's prompt
    for t, task in enumerate(names):
        rows = list(rows_by_task[task])
        donors = rotated(rows)
        parts = [slice((m * world + rank) * micro_size, (m * world + rank + 1) * micro_size)
                 for m in range(math.ceil(len(rows) / (micro_size * world)))]
        batches = [collate(rows[part], VALIDATION_EPOCH) for part in parts]
        counts.append(global_counts(batches, device))  # all ranks: (N_AR, N_maskable) of the task
        for k, batch in enumerate(batches):
            own = loss_fn(batch)
            sums[t, :2] += torch.stack([own.ar_sum.detach(), own.diff_sum.detach()]).double()
            if with_control[t]:
                swapped = collate(rows[parts[k]], VALIDATION_EPOCH, prompt_donors=donors[parts[k]])
                other = loss_fn(swapped)
                sums[t, 2:4] += torch.stack([other.ar_sum.detach(), other.diff_sum.detach()]).double()
                sums[t, 4] += swapped.stats["prompted"]
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    out: dict[str, dict[str, float]] = {}
    for t, ((ar, diff, ar_c, diff_c, prompted), (n_ar, n_mask)) in enumerate(zip(sums.tolist(), counts,
                                                                                  strict=True)):
        out[names[t]] = {}
        for term, own_sum, control_sum, n in (("ar", ar, ar_c, n_ar), ("diffusion", diff, diff_c, n_mask)):
            if n:
                out[names[t]][term] = own_sum / n
                if prompted:
                    out[names[t]][f"{term}_control"] = control_sum / n
    return out


def rotated(rows: Sequence[Mapping]) -> list[Mapping]:
    """The prompt donor of each row: the row half the list away, never the row itself when there are two or more
    (held-out rows are sorted by sample id, so neighbours are often views of related recordings)."""
    return [rows[(i + len(rows) // 2) % len(rows)] for i in range(len(rows))]


__all__ = ["VALIDATION_EPOCH", "is_validation", "read_validation_rows", "rotated", "task_losses", "utterance_key"]
