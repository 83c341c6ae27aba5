from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import duck
from pipelines.quarantine import QUARANTINE_SCHEMA
from pipelines.shards import write_parquet_shard, write_quarantine_part
from tokenization.sequence import Span, spans_to_pylist
from tokenization.shard_format import SHARD_SCHEMA

TASKS = ("asr", "tts", "audio_chat")


def shard_rows(n: int, start: int, tokens: int = 3000) -> pa.Table:
    rng = np.random.default_rng(start)
    rows = []
    for i in range(start, start + n):
        task = TASKS[i % 3]
        cut = 10 + i % 7
        spans = [Span("text", 0, cut, "user", False, turn=0), Span("audio", cut, tokens - 5, "assistant", True,
                                                                   is_final_in_turn=True, turn=1),
                 Span("text", tokens - 5, tokens, "assistant", True, turn=1)]
        rows.append({
            "sample_id": f"src{i % 2}/{i:05d}", "record_id": f"src{i % 2}/{i:05d}", "copy": 0, "source": f"src{i % 2}",
            "kind": "librispeech", "task": task, "language": "en", "split": "train", "locator": f"f{i}.flac",
            "speaker": "", "n_tokens": tokens, "n_text_tokens": cut + 5, "n_audio_tokens": tokens - 5 - cut,
            "audio_seconds": 2.0 + i % 3, "input_seconds": 2.0, "speech_seconds": i % 3, "orig_sample_rate": 16000,
            "orig_channels": 1, "resampled": False, "downmixed": False, "audio_windows": 1, "tts_voice": "",
            "text": f"utterance {i}", "spans": spans_to_pylist(spans),
            "input_ids": rng.integers(0, 150_000, tokens).astype(np.int32).tolist(),
        })
    return pa.Table.from_pylist(rows, schema=SHARD_SCHEMA).sort_by("sample_id")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    for k in range(2):
        write_parquet_shard(shard_rows(150, 150 * k), root / "parquet" / f"part-{k:05d}-of-00002.parquet",
                            {"format": 1}, row_group_rows=32)
    bad = pa.table({"source": ["src0", "src1", "src1"], "record_id": ["src0/x", "src1/y", "src1/z"],
                    "kind": ["librispeech"] * 3, "task": ["asr"] * 3, "locator": ["a", "b", "c"],
                    "stage": ["decode", "decode", "read"], "error": ["corrupt_audio", "nan_audio", "reader_error"],
                    "detail": ["x", "y", "z"]}, schema=QUARANTINE_SCHEMA)
    write_quarantine_part(bad, root / "quarantine" / "part-00000-of-00001.parquet", QUARANTINE_SCHEMA)
    return root


def test_views_answer_per_task_totals(shards: Path) -> None:
    out = duck.query("SELECT task, count(*) AS n, sum(n_tokens) AS tokens, sum(audio_seconds) / 3600 AS hours "
                     "FROM samples GROUP BY task ORDER BY task", shards).to_pylist()
    assert [r["task"] for r in out] == sorted(TASKS)
    assert sum(r["n"] for r in out) == 300 and all(r["tokens"] == 100 * 3000 for r in out)


def test_spans_view_has_one_row_per_span(shards: Path) -> None:
    with duck.connect(shards) as con:
        cols = [d[0] for d in con.sql("SELECT * FROM spans LIMIT 1").description]
        assert tuple(cols) == duck.SPAN_COLUMNS
        n, total_len = con.sql("SELECT count(*), sum(len) FROM spans").fetchall()[0]
        assert n == 3 * 300 and total_len == 300 * 3000  # spans partition every sample
        finals = con.sql("SELECT count(*) FROM spans WHERE kind = 'audio' AND is_final_in_turn AND is_target "
                         "AND role = 'assistant' AND turn = 1").fetchall()[0][0]
        assert finals == 300


def test_quarantine_view_groups_reasons(shards: Path) -> None:
    rows = duck.query("SELECT stage, error, count(*) AS n FROM quarantine GROUP BY ALL ORDER BY ALL",
                      shards).to_pylist()
    assert rows == [{"stage": "decode", "error": "corrupt_audio", "n": 1},
                    {"stage": "decode", "error": "nan_audio", "n": 1},
                    {"stage": "read", "error": "reader_error", "n": 1}]


@pytest.mark.parametrize("sql", [
    "SELECT task, count(*), sum(n_tokens), sum(audio_seconds) FROM samples GROUP BY task",
    "SELECT kind, count(*), avg(len) FROM spans GROUP BY kind",
    "SELECT * EXCLUDE (input_ids) FROM samples WHERE sample_id = 'src1/00123'",
])
def test_metadata_queries_do_not_read_input_ids(shards: Path, sql: str, tmp_path: Path) -> None:
    metas = [pq.ParquetFile(f).metadata for f in sorted((shards / "parquet").glob("*.parquet"))]
    token_bytes = sum(col.total_compressed_size for m in metas for g in range(m.num_row_groups)
                      for col in (m.row_group(g).column(i) for i in range(m.num_columns))
                      if col.path_in_schema.startswith("input_ids."))
    with duck.connect(shards, threads=2) as con:
        stats = duck.profile(con, sql, tmp_path / "profile.json")
        full = duck.profile(con, "SELECT sum(len(input_ids)) FROM samples", tmp_path / "full.json")
    assert "input_ids" not in stats["scanned_columns"]
    assert stats["bytes_read"] < token_bytes / 20  # nowhere near the token payload
    assert "input_ids" in full["scanned_columns"] and full["bytes_read"] >= token_bytes  # the check can fail


def test_sample_lookup_by_id(shards: Path) -> None:
    (row,) = duck.query("SELECT sample_id, task, text FROM samples WHERE sample_id = 'src1/00123'",
                        shards).to_pylist()
    assert row == {"sample_id": "src1/00123", "task": TASKS[123 % 3], "text": "utterance 123"}


def test_missing_shards_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenize"):
        duck.connect(tmp_path)
