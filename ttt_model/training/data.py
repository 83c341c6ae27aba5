"""Training data: finding and checking the shards (driver), and each rank's deterministic sample stream (worker).

Order and split, and why they are deterministic:
1. Ray Data reads the Parquet shards (`sample_id`, `input_ids`, `spans` only) and Ray Train splits the
   stream across ranks (`streaming_split(world, equal=True)`). With `preserve_order` Ray's OutputSplitter
   drops locality hints and buffering "to ensure determinism" (ray/data/.../output_splitter.py, 2.60) and
   hands each block, in read order, to the split with the fewest rows so far, so which rows a rank gets is
   a function of the files alone; `equal=True` gives every rank exactly floor(rows / world) rows. The
   splits are disjoint by construction (each block goes to one split). tests/workflows/test_train.py checks
   both properties through the real trainer (and a rerun replays the same order), so an upgrade that changes
   them fails CI. Each rank therefore keeps the same rows every epoch; what changes is their order (2), and
   with it every global batch.
2. Each rank then shuffles its stream with a classic shuffle buffer driven by a generator seeded with
   (seed, epoch, rank): the order changes every epoch, is reproducible for a given seed, and does not
   depend on timing. Hand-written rather than `iter_batches(local_shuffle_seed=...)` because Ray's local
   shuffle reshuffles in "generations" whose boundaries depend on block sizes and compaction thresholds
   that are internal and have changed between versions; a resumed run must replay the exact order.
3. Rows are grouped into micro-batches and steps (all micro-batches of a step are collated before any
   forward pass, because the loss is normalised by counts over the whole step).
Resume: after a restore Ray restarts the epoch's stream from its beginning; the loop skips the rows this
rank had consumed (saved in the checkpoint), which replays to the same position because of 1 and 2.

The reference implementation shuffled before seeding, so ranks disagreed on the order (docs/paper-to-code.md,
weakness 5); here no rank ever draws an unseeded random number for data.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tokenization.codecs.base import CodecIdentity
from tokenization.shard_format import MANIFEST_FILE, PARQUET_DIR, read_vocab_manifest
from tokenization.vocab import UnifiedVocab, VocabMismatchError, check_compatible, read_manifest
from tokenization.vocab_factory import make_vocab, manifest_subset
from ttt_model.training.settings import TrainConfigError, TrainSettings
from ttt_model.training.validation import is_validation

READ_COLUMNS = ("sample_id", "task", "input_ids", "spans")  # all the collator needs (task: its loss weight)

T = TypeVar("T")
Row = dict[str, Any]


# ---- driver side ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShardSet:
    """The training shards of a run: files, their shared vocabulary manifest and sizes."""

    root: str
    files: tuple[str, ...]
    manifest: dict[str, Any]
    num_rows: int
    clipped_tokens: int | None  # sum of min(n_tokens, max_tokens); computed for token budgets only


def discover_shards(shards_dir: str | Path, max_tokens: int, count_tokens: bool) -> ShardSet:
    """Find `<shards_dir>/parquet/*.parquet` and `manifest.json`, and check that every file was written with
    the manifest's vocabulary (shards of two tokenize runs mixed in one directory fail here)."""
    root = Path(shards_dir).expanduser().resolve()
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise TrainConfigError(f"no shards at {root}: {MANIFEST_FILE} is missing (run `python "
                               "workflows/tokenize_data.py` first, or set paths.shards)")
    manifest = read_manifest(manifest_path)
    files = sorted((root / PARQUET_DIR).glob("*.parquet"))
    if not files:
        raise TrainConfigError(f"no Parquet shards under {root / PARQUET_DIR}")
    listed = (manifest.get("shards") or {}).get("parquet")
    if listed:
        missing = sorted(set(listed) - {f.name for f in files})
        if missing:
            raise TrainConfigError(f"{root}: {len(missing)} shard(s) listed in {MANIFEST_FILE} are missing, e.g. "
                                   f"{missing[:3]}")
    for f in files:
        try:
            check_compatible(manifest, read_vocab_manifest(f), what=f"shard {f.name} (vs {MANIFEST_FILE})")
        except (VocabMismatchError, ValueError) as e:
            raise TrainConfigError(str(e)) from e
    num_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    if num_rows == 0:
        raise TrainConfigError(f"the shards under {root} hold no samples")
    clipped = None
    if count_tokens:  # the n_tokens column: a few bytes per sample, never the token payload
        n = pq.read_table(files, columns=["n_tokens"]).column("n_tokens").to_numpy()
        clipped = int(np.minimum(n, max_tokens).sum())
    return ShardSet(str(root), tuple(str(f) for f in files), manifest, num_rows, clipped)


def training_vocab(text_tokenizer: str, layout: str, shards_manifest: Mapping[str, Any]) -> UnifiedVocab:
    """The vocabulary a run trains with: the configured text tokenizer and id layout, and the codec identity
    recorded in the shards (training needs no codec weights, and the driver of a cluster run may have no GPU
    to load them on), and the shards' text subset when their text vocabulary is sized to the corpus.
    `check_compatible` against the shards then catches a different tokenizer or layout."""
    return make_vocab(text_tokenizer, CodecIdentity(**shards_manifest["codec"]), layout,
                      manifest_subset(shards_manifest))


def check_vocab(vocab: UnifiedVocab, manifest: Mapping[str, Any], what: str) -> None:
    try:
        check_compatible(vocab.manifest(), manifest, what=what)
    except VocabMismatchError as e:
        raise TrainConfigError(str(e)) from e


# ---- worker side ---------------------------------------------------------------------------------------

def arrow_rows(table: pa.Table) -> list[Row]:
    """Shard rows (sample_id, task, input_ids, spans) as the collator's dicts; token ids as numpy slices of one
    buffer instead of Python lists (a million-token batch would otherwise cost a million int objects)."""
    ids_col = table.column("input_ids").combine_chunks()
    offsets = ids_col.offsets.to_numpy()
    values = ids_col.values.to_numpy(zero_copy_only=False)
    sample_ids = table.column("sample_id").to_pylist()
    spans = table.column("spans").to_pylist()
    tasks = table.column("task").to_pylist() if "task" in table.column_names else [None] * len(sample_ids)
    return [{"sample_id": sid, "task": tasks[i], "input_ids": values[offsets[i]:offsets[i + 1]], "spans": spans[i]}
            for i, sid in enumerate(sample_ids)]


def epoch_rng(seed: int, epoch: int, rank: int) -> np.random.Generator:
    """The generator of one rank's shuffle in one epoch."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, rank, 0x5EED]))


def shuffled(rows: Iterable[T], buffer_size: int, rng: np.random.Generator) -> Iterator[T]:
    """Shuffle-buffer order: keep `buffer_size` rows, emit a random one as each new row arrives, then the rest
    in random order. buffer_size 0 or 1 keeps the input order."""
    if buffer_size <= 1:
        yield from rows
        return
    buf: list[T] = []
    for row in rows:
        if len(buf) < buffer_size:
            buf.append(row)
            continue
        j = int(rng.integers(buffer_size))
        yield buf[j]
        buf[j] = row
    for j in rng.permutation(len(buf)):
        yield buf[j]


def micro_batches(rows: Iterable[Row], unit: str, size: int, max_tokens: int) -> Iterator[list[Row]]:
    """Consecutive rows grouped into micro-batches: `size` samples, or as many samples as fit `size` tokens
    (each counted at most max_tokens, as the collator fits it). A trailing partial micro-batch is dropped."""
    if unit == "samples":
        it = iter(rows)
        while len(chunk := list(itertools.islice(it, size))) == size:
            yield chunk
        return
    chunk, used = [], 0
    for row in rows:
        n = min(len(row["input_ids"]), max_tokens)
        if chunk and used + n > size:
            yield chunk
            chunk, used = [], 0
        chunk.append(row)
        used += n


@dataclass
class StepRows:
    """The rows of one optimizer step on one rank, by micro-batch."""

    micro: list[list[Row]]

    @property
    def n_rows(self) -> int:
        return sum(len(m) for m in self.micro)

    @property
    def sample_ids(self) -> list[str]:
        return [str(r["sample_id"]) for m in self.micro for r in m]


def step_rows(rows: Iterable[Row], s: TrainSettings) -> Iterator[StepRows]:
    """Micro-batches grouped `accumulation` at a time; a trailing partial step is dropped."""
    it = micro_batches(rows, s.batch.unit, s.batch.micro_size, s.max_tokens)
    while len(group := list(itertools.islice(it, s.accumulation))) == s.accumulation:
        yield StepRows(group)


def rank_stream(batches: Iterable[pa.Table], s: TrainSettings, epoch: int, rank: int,
                skip_rows: int) -> Iterator[StepRows]:
    """One rank's steps for one epoch from its shard's Arrow batches, after skipping `skip_rows` rows of the
    shuffled order (the rows it consumed before a checkpoint). Validation rows (ttt_model.training.validation) are
    left out before the shuffle, so the order and the resume position do not depend on them."""
    fraction = s.validation.fraction
    rows = (row for table in batches for row in arrow_rows(table) if not is_validation(row["sample_id"], fraction))
    ordered = shuffled(rows, s.data.shuffle_buffer, epoch_rng(s.seed, epoch, rank))
    return step_rows(itertools.islice(ordered, skip_rows, None), s)


_END = object()


class Prefetcher(Generic[T]):
    """Computes up to `depth` items of `source` (mapped through `fn`) ahead in one background thread, so data
    collation overlaps the device's work. depth 0 runs inline. One thread only: the source generator is never
    advanced concurrently, and the order is the source's."""

    def __init__(self, source: Iterator[Any], fn: Callable[[Any], T], depth: int) -> None:
        self._source, self._fn, self._depth = source, fn, depth
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ttt-data") if depth > 0 else None
        self._pending: deque[Future] = deque()

    def _produce(self) -> Any:
        item = next(self._source, _END)
        return item if item is _END else self._fn(item)

    def next(self) -> T | None:
        """The next item, or None when the source is exhausted."""
        if self._pool is None:
            item = self._produce()
        else:
            while len(self._pending) <= self._depth:
                self._pending.append(self._pool.submit(self._produce))
            item = self._pending.popleft().result()
        return None if item is _END else item

    def close(self) -> None:
        """Wait for work in flight, then close the source (which stops the Ray Data iterator behind it)."""
        for fut in self._pending:
            fut.result()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        close = getattr(self._source, "close", None)
        if close is not None:
            close()


__all__ = [
    "READ_COLUMNS", "Prefetcher", "ShardSet", "StepRows", "arrow_rows", "check_vocab", "discover_shards",
    "epoch_rng", "micro_batches", "rank_stream", "shuffled", "step_rows", "training_vocab",
]
