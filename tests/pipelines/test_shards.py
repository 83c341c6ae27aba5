from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds

from pipelines.shards import expand_copies, num_parts, part_of, write_parquet_shard, write_wds_shard
from pipelines.tokenize_stages import STAGED_SCHEMA, record_key
from tokenization.codecs.base import CodecIdentity
from tokenization.sequence import Part, Turn, build_chat, spans_to_pylist
from tokenization.shard_format import METADATA_COLUMNS, SHARD_SCHEMA, read_vocab_manifest, sample_id_of_key, wds_key
from tokenization.text import load_text_tokenizer
from tokenization.vocab import UnifiedVocab

VOCAB = UnifiedVocab(load_text_tokenizer(), CodecIdentity("test", "1", 25.0, 512, 16000, 16000, "h"))


def staged(rows: list[tuple[str, int, str]]) -> pa.Table:
    """Staged ok rows from (record_id, copies, locator)."""
    out = []
    for rid, copies, locator in rows:
        seq = build_chat(VOCAB, [Turn("user", [Part.audio([len(rid), 3])]), Turn("assistant", [Part(text=rid)])])
        out.append({
            "record_id": rid, "record_key": record_key(rid), "copies": copies, "source": rid.split("/")[0],
            "kind": "librispeech", "task": "asr", "language": "en", "split": "train", "locator": locator,
            "speaker": "", "status": "ok", "stage": "", "error": "", "detail": "", "drop_reason": "",
            "n_tokens": len(seq.input_ids), "n_text_tokens": seq.n_text_tokens, "n_audio_tokens": seq.n_audio_tokens,
            "audio_seconds": 1.5, "input_seconds": 1.5, "speech_seconds": 0.0, "orig_sample_rate": 16000,
            "orig_channels": 1, "resampled": False, "downmixed": False, "audio_windows": 1, "tts_voice": "",
            "text": rid, "spans": spans_to_pylist(seq.spans), "input_ids": seq.input_ids.tolist(),
        })
    return pa.Table.from_pylist(out, schema=STAGED_SCHEMA)


def test_expand_copies_names_repeats_and_sorts_by_sample_id() -> None:
    table, dups = expand_copies(staged([("b/2", 1, "x"), ("a/1", 3, "y"), ("c/3", 0, "z")]))
    assert table.schema == SHARD_SCHEMA
    assert table.column("sample_id").to_pylist() == ["a/1", "a/1#r1", "a/1#r2", "b/2"]
    assert table.column("copy").to_pylist() == [0, 1, 2, 0]
    assert table.column("record_id").to_pylist() == ["a/1", "a/1", "a/1", "b/2"]
    assert dups == {}


def test_expand_copies_drops_duplicate_ids_deterministically() -> None:
    rows = [("a/1", 1, "file2:7"), ("a/1", 1, "file1:3"), ("b/1", 1, "f")]
    first, dups = expand_copies(staged(rows))
    again, _ = expand_copies(staged(list(reversed(rows))))
    assert dups == {"a": 1}
    assert first.column("locator").to_pylist() == ["file1:3", "f"]  # smallest locator kept, whatever the order
    assert first.equals(again)


def test_identical_copies_are_dropped_silently() -> None:
    rows = [("a/1", 1, "f:1"), ("a/1", 1, "f:1"), ("a/1", 1, "f:2"), ("b/1", 2, "g"), ("b/1", 2, "g")]
    table, dups = expand_copies(staged(rows))
    assert table.column("sample_id").to_pylist() == ["a/1", "b/1", "b/1#r1"]
    assert dups == {"a": 1}  # only the row from another place in the corpus is a duplicate


def test_quarantine_part_is_sorted_and_free_of_copies(tmp_path: Path) -> None:
    from pipelines.quarantine import QUARANTINE_SCHEMA
    from pipelines.shards import write_quarantine_part

    row = {"source": "s", "record_id": "s/2", "kind": "k", "task": "asr", "locator": "l", "stage": "decode",
           "error": "nan_audio", "detail": "d"}
    table = pa.Table.from_pylist([row, {**row, "record_id": "s/1"}, row], schema=QUARANTINE_SCHEMA)
    write_quarantine_part(table, tmp_path / "q.parquet", QUARANTINE_SCHEMA)
    assert pq.read_table(tmp_path / "q.parquet").column("record_id").to_pylist() == ["s/1", "s/2"]


def test_part_of_is_stable_in_range_and_offset_safe() -> None:
    keys = pa.array([record_key(f"s/{i}") for i in range(2000)], pa.binary(16))
    parts = part_of(keys, 7)
    assert parts.min() >= 0 and parts.max() < 7
    assert np.array_equal(part_of(pa.chunked_array([keys[:500], keys[500:]]), 7), parts)
    assert np.array_equal(part_of(keys.slice(300, 50), 7), parts[300:350])
    counts = np.bincount(parts, minlength=7)
    assert counts.min() > 200  # hash spreads records evenly
    assert num_parts(0, 10) == 1 and num_parts(10, 10) == 1 and num_parts(11, 10) == 2


def test_parquet_shard_is_byte_identical_and_carries_the_manifest(tmp_path: Path) -> None:
    table, _ = expand_copies(staged([(f"s/{i:03d}", 1 + i % 2, f"l{i}") for i in range(40)]))
    manifest = VOCAB.manifest()
    write_parquet_shard(table, tmp_path / "a.parquet", manifest, row_group_rows=16,
                        extra_metadata={b"ttt.shard_stats": {"duplicates": {}}})
    time.sleep(1.1)  # a timestamp anywhere in the file would now differ
    write_parquet_shard(table, tmp_path / "b.parquet", manifest, row_group_rows=16,
                        extra_metadata={b"ttt.shard_stats": {"duplicates": {}}})
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert read_vocab_manifest(tmp_path / "a.parquet") == manifest
    meta = pq.ParquetFile(tmp_path / "a.parquet").metadata
    assert meta.num_row_groups == -(-table.num_rows // 16)
    assert pq.read_table(tmp_path / "a.parquet").equals(table)
    assert [c.name for c in pq.read_schema(tmp_path / "a.parquet")][-1] == "input_ids"


def test_metadata_columns_read_without_token_payload(tmp_path: Path) -> None:
    table, _ = expand_copies(staged([(f"s/{i:03d}", 1, "l") for i in range(30)]))
    write_parquet_shard(table, tmp_path / "a.parquet", VOCAB.manifest(), row_group_rows=8)
    meta = pq.read_table(tmp_path / "a.parquet", columns=METADATA_COLUMNS)
    assert "input_ids" not in meta.column_names and meta.num_rows == 30


def test_webdataset_shard_round_trips_and_has_fixed_mtimes(tmp_path: Path) -> None:
    table, _ = expand_copies(staged([("s/a.b", 2, "l"), ("s/x%y", 1, "m")]))
    write_wds_shard(table, tmp_path / "a.tar")
    time.sleep(1.1)
    write_wds_shard(table, tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tar:
        assert {m.mtime for m in tar.getmembers()} == {0}
    samples = list(wds.WebDataset(str(tmp_path / "a.tar"), shardshuffle=False))
    assert [sample_id_of_key(s["__key__"]) for s in samples] == table.column("sample_id").to_pylist()
    for sample, row in zip(samples, table.to_pylist(), strict=True):
        meta = json.loads(sample["json"])
        assert meta["sample_id"] == row["sample_id"] and meta["spans"] == row["spans"]
        tokens = np.load(io.BytesIO(sample["npy"]))
        assert tokens.dtype == np.int32 and tokens.tolist() == row["input_ids"]


def test_wds_keys_are_reversible_and_dot_free() -> None:
    for sid in ("librispeech/84-121123-0000", "cv/common_voice_en_1.mp3#r2", "a%2Eb/c", "中文/1"):
        key = wds_key(sid)
        assert "." not in key and "/" not in key and sample_id_of_key(key) == sid
