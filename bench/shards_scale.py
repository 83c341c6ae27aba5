"""Benchmark: DuckDB queries over shard metadata at the paper's scale (6,321,321 samples).

Builds realistic shard *metadata* with numpy/pyarrow, vectorised (the shard schema minus `input_ids`;
no audio): a task mix like the paper's, token counts per task, span tables with text/audio alternation,
roles, targets, final spans and turns. Written as Parquet shards with the tokenize job's writer
settings, then the README's typical queries run through `pipelines.duck` (the same views `ttt query`
uses) with a fixed thread count; each reports wall time (median of repeats) and bytes read.
Goal: the per-task summary under 2 s on 2 cores.

    python bench/shards_scale.py                      # -> runs/bench/shards_scale.json
    python bench/shards_scale.py --rows 630000 --threads 2 --out /tmp/s.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import duck
from pipelines.quarantine import QUARANTINE_SCHEMA
from tokenization.sequence import SPAN_ARROW_TYPE
from tokenization.shard_format import SHARD_SCHEMA, shard_name

PAPER_ROWS = 6_321_321
# task -> (share of samples, median tokens, spans per sample (min, max), source names)
TASK_MIX: dict[str, tuple[float, int, tuple[int, int], tuple[str, ...]]] = {
    "asr": (0.30, 180, (4, 5), ("librispeech", "gigaspeech", "wenetspeech", "aishell2", "commonvoice")),
    "tts": (0.20, 260, (4, 5), ("librispeech", "gigaspeech", "wenetspeech", "aishell2")),
    "audio_chat": (0.20, 700, (7, 21), ("voiceassistant", "openhermes_tts")),
    "text_chat": (0.15, 450, (4, 12), ("openhermes",)),
    "interleaved": (0.10, 900, (9, 25), ("documents",)),
    "aac": (0.02, 220, (4, 5), ("audiocaps",)),
    "sec": (0.015, 190, (4, 5), ("emotion",)),
    "asc": (0.015, 200, (4, 5), ("scenes",)),
}
METADATA_SCHEMA = pa.schema([f for f in SHARD_SCHEMA if f.name != "input_ids"])

QUERIES = {
    "per_task_summary": "SELECT task, count(*) AS samples, sum(n_tokens) AS tokens, "
                        "sum(n_audio_tokens) AS audio_tokens, sum(audio_seconds) / 3600 AS audio_hours "
                        "FROM samples GROUP BY task ORDER BY task",
    "per_source_summary": "SELECT source, task, count(*) AS samples, sum(n_tokens) AS tokens, "
                          "sum(audio_seconds) / 3600 AS audio_hours FROM samples GROUP BY ALL ORDER BY ALL",
    "audio_span_length_histogram": "SELECT least(len // 32, 20) * 32 AS bucket, count(*) AS spans FROM spans "
                                   "WHERE kind = 'audio' GROUP BY ALL ORDER BY ALL",
    "final_span_lengths_per_task": "SELECT task, count(*) AS spans, avg(len) AS mean_len, "
                                   "quantile_cont(len, 0.9) AS p90 FROM spans WHERE is_final_in_turn GROUP BY task",
    "find_sample_by_id": "SELECT * FROM samples WHERE sample_id = '{sample_id}'",
    "quarantine_reasons": "SELECT stage, error, count(*) AS n FROM quarantine GROUP BY ALL ORDER BY n DESC",
}


def _spans(rng: np.random.Generator, n_spans: np.ndarray, tokens: np.ndarray, task_idx: np.ndarray,
           task_names: list[str]) -> pa.Array:
    """Span tables: text/audio alternation (text first), lengths splitting each sample's tokens, user turn
    then assistant turns, the last audio span of a sample final. Fully vectorised over all spans."""
    total = int(n_spans.sum())
    row_of = np.repeat(np.arange(len(n_spans)), n_spans)
    first = np.concatenate([[0], np.cumsum(n_spans)[:-1]])
    pos = np.arange(total) - np.repeat(first, n_spans)
    weight = rng.gamma(2.0, 1.0, total)
    weight_sum = np.bincount(row_of, weight)
    length = np.maximum(1, np.floor(weight / weight_sum[row_of] * tokens[row_of])).astype(np.int64)
    ends = np.cumsum(length)
    starts = ends - length
    starts -= np.repeat(starts[first], n_spans)
    ends = starts + length
    is_audio = (pos % 2 == 1) & (task_idx[row_of] != task_names.index("text_chat"))
    last_audio = np.zeros(total, dtype=bool)
    audio_idx = np.flatnonzero(is_audio)
    if len(audio_idx):
        last_of_row = np.full(len(n_spans), -1)
        np.maximum.at(last_of_row, row_of[audio_idx], audio_idx)
        last_audio[last_of_row[last_of_row >= 0]] = True
    turn = np.minimum(pos // 2, 8).astype(np.int16)
    assistant = pos >= 2
    kinds = pa.array(["text", "audio"]).take(pa.array(is_audio.astype(np.int8)))
    roles = pa.array(["user", "assistant"]).take(pa.array(assistant.astype(np.int8)))
    struct = pa.StructArray.from_arrays(
        [kinds, pa.array(starts.astype(np.int32)), pa.array(ends.astype(np.int32)), roles,
         pa.array(assistant), pa.array(last_audio & assistant), pa.array(turn)],
        fields=list(SPAN_ARROW_TYPE))
    offsets = np.concatenate([[0], np.cumsum(n_spans)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), struct)


def make_chunk(rng: np.random.Generator, start: int, n: int) -> pa.Table:
    names = list(TASK_MIX)
    shares = np.array([TASK_MIX[t][0] for t in names])
    task_idx = rng.choice(len(names), size=n, p=shares / shares.sum())
    median = np.array([TASK_MIX[t][1] for t in names])[task_idx]
    tokens = np.clip(rng.lognormal(np.log(median), 0.45), 16, 4096).astype(np.int64)
    lo = np.array([TASK_MIX[t][2][0] for t in names])[task_idx]
    hi = np.array([TASK_MIX[t][2][1] for t in names])[task_idx]
    n_spans = lo + (rng.random(n) * (hi - lo + 1)).astype(np.int64)
    n_spans = np.minimum(n_spans, tokens)
    spans = _spans(rng, n_spans, tokens, task_idx, names)
    flat = spans.flatten()
    audio_len = pc.if_else(pc.equal(flat.field("kind"), "audio"),
                           pc.subtract(flat.field("end"), flat.field("start")), 0)
    row_of = np.repeat(np.arange(n), n_spans)
    audio_tokens = np.bincount(row_of, audio_len.to_numpy(), minlength=n).astype(np.int64)
    source_pick = (rng.random(n) * 5).astype(np.int64)
    source_names = np.array([s for t in names for s in TASK_MIX[t][3]], dtype=object)
    source_base = np.cumsum([0] + [len(TASK_MIX[t][3]) for t in names])[:-1]
    source_count = np.array([len(TASK_MIX[t][3]) for t in names])
    source_idx = source_base[task_idx] + source_pick % source_count[task_idx]
    source_arr = pa.array(source_names).take(pa.array(source_idx))
    ids = pa.array(np.arange(start, start + n)).cast(pa.string())
    sample_id = pc.binary_join_element_wise(source_arr, pc.utf8_lpad(ids, 9, "0"), "/")
    audio_seconds = audio_tokens / 12.5
    table = {
        "sample_id": sample_id, "record_id": sample_id, "copy": pa.array(np.zeros(n, np.int16)),
        "source": source_arr, "kind": source_arr, "task": pa.array(names).take(pa.array(task_idx)),
        "language": pa.array(["en", "zh"]).take(pa.array((rng.random(n) < 0.4).astype(np.int8))),
        "split": pa.array(np.full(n, "train", dtype=object)), "locator": sample_id,
        "speaker": pa.array(np.full(n, "", dtype=object)),
        "n_tokens": pa.array(tokens.astype(np.int32)),
        "n_text_tokens": pa.array((tokens - audio_tokens).astype(np.int32)),
        "n_audio_tokens": pa.array(audio_tokens.astype(np.int32)), "audio_seconds": pa.array(audio_seconds),
        "input_seconds": pa.array(audio_seconds), "speech_seconds": pa.array(np.zeros(n)),
        "orig_sample_rate": pa.array(np.full(n, 16000, np.int32)), "orig_channels": pa.array(np.ones(n, np.int16)),
        "resampled": pa.array(np.zeros(n, bool)), "downmixed": pa.array(np.zeros(n, bool)),
        "audio_windows": pa.array(np.ones(n, np.int16)), "tts_voice": pa.array(np.full(n, "", dtype=object)),
        "text": pc.binary_join_element_wise(pa.array(np.full(n, "reference text of", dtype=object)), ids, " "),
        "spans": spans,
    }
    return pa.table(table, schema=METADATA_SCHEMA).sort_by("sample_id")


def build(data_dir: Path, rows: int, rows_per_file: int, row_group_rows: int, seed: int) -> dict[str, Any]:
    """Write the metadata shards (skipped when a previous run wrote the same configuration)."""
    stamp = {"rows": rows, "rows_per_file": rows_per_file, "row_group_rows": row_group_rows, "seed": seed,
             "format": 1}
    marker = data_dir / "bench_config.json"
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return {"generated": False, "seconds": 0.0}
    t0 = time.perf_counter()
    for sub in ("parquet", "quarantine"):
        (data_dir / sub).mkdir(parents=True, exist_ok=True)
        for f in (data_dir / sub).glob("*.parquet"):
            f.unlink()
    n_files = -(-rows // rows_per_file)
    for k in range(n_files):
        rng = np.random.default_rng([seed, k])
        n = min(rows_per_file, rows - k * rows_per_file)
        chunk = make_chunk(rng, k * rows_per_file, n)
        pq.write_table(chunk, data_dir / "parquet" / shard_name(k, n_files, ".parquet"), row_group_size=row_group_rows,
                       compression="zstd", use_dictionary=["source", "kind", "task", "language", "split", "tts_voice"])
    rng = np.random.default_rng(seed)
    nq = max(1, rows // 1000)
    stages = np.array(["read", "decode", "decode", "tts", "encode", "build"], dtype=object)
    errors = np.array(["reader_error", "corrupt_audio", "nan_audio", "tts_failed", "encode_failed", "build_failed"],
                      dtype=object)
    pick = rng.integers(0, len(stages), nq)
    quarantine = pa.table({
        "source": pa.array(np.full(nq, "librispeech", dtype=object)),
        "record_id": pa.array([f"q/{i}" for i in range(nq)]),
        "kind": pa.array(np.full(nq, "librispeech", dtype=object)), "task": pa.array(np.full(nq, "asr", dtype=object)),
        "locator": pa.array([f"f{i}" for i in range(nq)]), "stage": pa.array(stages[pick]),
        "error": pa.array(errors[pick]), "detail": pa.array(np.full(nq, "synthetic", dtype=object)),
    }, schema=QUARANTINE_SCHEMA)
    pq.write_table(quarantine, data_dir / "quarantine" / shard_name(0, 1, ".parquet"))
    marker.write_text(json.dumps(stamp))
    return {"generated": True, "seconds": round(time.perf_counter() - t0, 2)}


def run_queries(data_dir: Path, threads: int, repeats: int, profile_dir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with duck.connect(data_dir, threads=threads) as con:
        probe = con.sql("SELECT sample_id FROM samples LIMIT 1 OFFSET 12345").fetchall()[0][0]
        for name, template in QUERIES.items():
            sql = template.format(sample_id=probe)
            times, stats = [], {}
            for _ in range(repeats):
                t0 = time.perf_counter()
                stats = duck.profile(con, sql, profile_dir / f"{name}.json")
                times.append(time.perf_counter() - t0)
            results[name] = {"sql": sql, "seconds_median": round(statistics.median(times), 4),
                             "seconds_all": [round(t, 4) for t in times], "bytes_read": stats["bytes_read"],
                             "rows": stats["rows"], "scanned_columns": stats["scanned_columns"]}
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=PAPER_ROWS)
    p.add_argument("--rows-per-file", type=int, default=200_000)
    p.add_argument("--row-group-rows", type=int, default=16_384)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=Path("runs/bench/shards_scale_data"))
    p.add_argument("--out", type=Path, default=Path("runs/bench/shards_scale.json"))
    args = p.parse_args(argv)
    gen = build(args.data_dir, args.rows, args.rows_per_file, args.row_group_rows, args.seed)
    files = sorted((args.data_dir / "parquet").glob("*.parquet"))
    queries = run_queries(args.data_dir, args.threads, args.repeats, args.data_dir)
    result = {
        "name": "shards_scale",
        "config": {"rows": args.rows, "rows_per_file": args.rows_per_file, "row_group_rows": args.row_group_rows,
                   "threads": args.threads, "repeats": args.repeats, "columns": "shard schema minus input_ids"},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1m": round(os.getloadavg()[0], 2)},
        "data": {"files": len(files), "bytes_on_disk": sum(f.stat().st_size for f in files),
                 "spans": duck.query("SELECT count(*) AS n FROM spans", args.data_dir,
                                     threads=args.threads).column("n")[0].as_py(),
                 "generation": gen},
        "queries": queries,
        "goal": {"per_task_summary_seconds_lt": 2.0,
                 "met": queries["per_task_summary"]["seconds_median"] < 2.0},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, q in queries.items():
        print(f"{name:32s} {q['seconds_median']:8.3f} s  {q['bytes_read'] / 1e6:10.1f} MB read  {q['rows']} rows")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
