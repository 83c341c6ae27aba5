"""Shard writers (Parquet + WebDataset), byte for byte reproducible; the format itself (layout, schema, names) is
tokenization/shard_format.py.

Samples go to shard `hash(record_id) mod N` (every copy of an up-sampled record lands in the same shard)
and are sorted by sample_id inside it, so a shard's content depends only on the input, never on task
scheduling. Writers leave no timestamps: Parquet footers carry only the writer version, tar members
have mtime 0 and fixed owner names. Files appear by atomic rename, so a file that exists is complete.

Row groups: columns are stored as separate chunks, so a reader that selects metadata columns never
touches `input_ids` (it is also the last column). Row groups of `row_group_rows` rows keep the token
chunks moderate, and because rows are sorted by sample_id, per-row-group min/max statistics let a lookup
by id read one row group.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tokenization.shard_format import MANIFEST_METADATA_KEY, SHARD_SCHEMA, wds_key
from ttt_common.files import atomic_write


def num_parts(rows: int, rows_per_part: int) -> int:
    """Shard count for a row total: at least one (an empty run still has a readable, typed shard)."""
    return max(1, -(-rows // max(1, rows_per_part)))


def part_of(record_keys: pa.Array | pa.ChunkedArray, count: int) -> np.ndarray:
    """Shard index of each row from its 16-byte record key (first 8 bytes, big endian, mod count)."""
    keys = record_keys.combine_chunks() if isinstance(record_keys, pa.ChunkedArray) else record_keys
    keys = keys.cast(pa.binary(16))
    raw = np.frombuffer(keys.buffers()[1], dtype=np.uint8)[keys.offset * 16:(keys.offset + len(keys)) * 16]
    heads = raw.reshape(-1, 16)[:, :8].copy().view(">u8").ravel()
    return (heads % np.uint64(count)).astype(np.int64)


def dedup(table: pa.Table, key: str, tiebreak: str) -> tuple[pa.Table, pa.Table]:
    """Sort by (key, tiebreak) and keep the first row per key -> (kept, genuine duplicates). Rows equal to
    the kept one in `tiebreak` too are identical copies (a retried Ray task can stage a row twice): they
    are dropped without being reported as duplicates in the data."""
    table = table.sort_by([(key, "ascending"), (tiebreak, "ascending")])
    keys = table.column(key).to_numpy(zero_copy_only=False)
    ties = table.column(tiebreak).to_numpy(zero_copy_only=False)
    first = np.ones(len(keys), dtype=bool)
    same_tie = np.zeros(len(keys), dtype=bool)
    if len(keys) > 1:
        first[1:] = keys[1:] != keys[:-1]
        same_tie[1:] = ties[1:] == ties[:-1]
    return table.filter(pa.array(first)), table.filter(pa.array(~first & ~same_tie))


def expand_copies(staged: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    """Staged ok rows (one per record, `copies` = how many samples it yields) -> shard rows sorted by
    sample_id, plus the duplicate record ids dropped per source (the same corpus id read twice: the row
    with the smallest locator is kept, so the choice does not depend on arrival order)."""
    staged, dups = dedup(staged, "record_id", "locator")
    duplicates = {d["values"]: int(d["counts"]) for d in dups.column("source").value_counts().to_pylist()}
    copies = staged.column("copies").to_numpy().astype(np.int64)
    take = np.repeat(np.arange(staged.num_rows), copies)
    copy_no = (np.arange(len(take)) - np.repeat(np.cumsum(copies) - copies, copies)).astype(np.int16)
    rows = staged.take(pa.array(take))
    record_ids = rows.column("record_id").to_pylist()
    sample_ids = [rid if k == 0 else f"{rid}#r{k}" for rid, k in zip(record_ids, copy_no.tolist(), strict=True)]
    columns = {"sample_id": pa.array(sample_ids, pa.string()), "copy": pa.array(copy_no, pa.int16())}
    out = pa.table({f.name: columns[f.name] if f.name in columns else rows.column(f.name).cast(f.type)
                    for f in SHARD_SCHEMA}, schema=SHARD_SCHEMA)
    return out.sort_by("sample_id"), duplicates


def write_parquet_shard(table: pa.Table, path: Path, vocab_manifest: Mapping[str, Any], row_group_rows: int,
                        compression: str = "zstd", extra_metadata: Mapping[bytes, Any] | None = None) -> None:
    """One Parquet shard, the vocabulary manifest (and `extra_metadata`, as JSON) in its key-value metadata."""
    meta = {MANIFEST_METADATA_KEY: json.dumps(vocab_manifest, sort_keys=True).encode()}
    meta |= {k: json.dumps(v, sort_keys=True).encode() for k, v in (extra_metadata or {}).items()}
    table = table.replace_schema_metadata(meta)

    def write(tmp: Path) -> None:
        pq.write_table(table, tmp, row_group_size=max(1, row_group_rows), compression=compression,
                       use_dictionary=["source", "kind", "task", "language", "split", "tts_voice"])

    atomic_write(path, write)


def write_wds_shard(table: pa.Table, path: Path) -> None:
    """The same samples as a WebDataset tar: <key>.json (every column but input_ids) and <key>.npy.

    Written with the standard library's tarfile (the format is a plain tar whose members are grouped by
    key): webdataset's own TarWriter would import torch (~3 s in every Ray worker that writes a shard).
    PAX headers allow long keys; mtime 0, fixed owner and mode make the bytes reproducible."""
    meta_cols = [c for c in table.column_names if c != "input_ids"]
    metas = table.select(meta_cols).to_pylist()
    ids = table.column("input_ids")

    def member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uname, info.gname = len(payload), 0, 0o644, "ttt", "ttt"
        tar.addfile(info, io.BytesIO(payload))

    def write(tmp: Path) -> None:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for i, meta in enumerate(metas):
                key = wds_key(meta["sample_id"])
                tokens = io.BytesIO()
                np.save(tokens, ids[i].values.to_numpy().astype(np.int32), allow_pickle=False)
                member(tar, f"{key}.json",
                       json.dumps(meta, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
                member(tar, f"{key}.npy", tokens.getvalue())

    atomic_write(path, write)


def write_quarantine_part(table: pa.Table, path: Path, schema: pa.Schema) -> None:
    """Quarantine rows of one part, without identical copies, sorted for stable bytes."""
    table = table.select(schema.names).cast(schema)
    table = table.group_by(schema.names, use_threads=False).aggregate([]).select(schema.names).sort_by(
        [(name, "ascending") for name in ("source", "record_id", "locator", "stage", "error", "detail")])
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


__all__ = [
    "dedup", "expand_copies", "num_parts", "part_of", "write_parquet_shard", "write_quarantine_part",
    "write_wds_shard",
]
