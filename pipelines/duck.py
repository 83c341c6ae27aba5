"""DuckDB views over the shards: stats, selection and audits without loading token arrays.

Views (on one connection):
    samples     every shard row (all columns, `input_ids` included)
    spans       one row per span: sample_id, task, source, kind, start, end, len, role, is_target,
                is_final_in_turn, turn
    quarantine  rows the tokenize job could not use: source, record_id, kind, task, locator, stage, error, detail

DuckDB pushes projections into the Parquet scan, so a query over metadata columns (or over `spans`)
never reads `input_ids`. Its Parquet *prefetching* would defeat that for nested columns: it reads ahead
whole row-group ranges (measured: ~1 MB per row group, token arrays included, for a `spans` scan), so
prefetching is switched off; it exists to hide object-store latency, which local and NFS shards do not
have.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from tokenization.shard_format import PARQUET_DIR, QUARANTINE_DIR

SPAN_COLUMNS = ("sample_id", "task", "source", "kind", "start", "end", "len", "role", "is_target",
                "is_final_in_turn", "turn")


def sql_literal(value: Path | str) -> str:
    """`value` (a path, a glob, any text) as a SQL string literal: single-quoted, inner quotes doubled."""
    return "'" + str(value).replace("'", "''") + "'"


def _glob(shards_dir: Path, sub: str) -> str:
    files = sorted((shards_dir / sub).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no Parquet files under {shards_dir / sub} (run `python workflows/tokenize_data.py` "
                                "or point --shards / paths.shards at a finished run)")
    return sql_literal(shards_dir / sub / "*.parquet")


def connect(shards_dir: str | Path, threads: int | None = None,
            database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A connection with the `samples`, `spans` and `quarantine` views over `shards_dir`."""
    root = Path(shards_dir)
    con = duckdb.connect(database)
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    con.execute("SET disable_parquet_prefetching = true")
    con.execute(f"CREATE VIEW samples AS SELECT * FROM read_parquet({_glob(root, PARQUET_DIR)})")
    con.execute("""
        CREATE VIEW spans AS
        SELECT sample_id, task, source, s.kind AS kind, s.start AS start, s."end" AS "end",
               s."end" - s.start AS len, s.role AS role, s.is_target AS is_target,
               s.is_final_in_turn AS is_final_in_turn, s.turn AS turn
        FROM (SELECT sample_id, task, source, unnest(spans) AS s FROM samples)
    """)
    con.execute(f"CREATE VIEW quarantine AS SELECT * FROM read_parquet({_glob(root, QUARANTINE_DIR)})")
    return con


def query(sql: str, shards_dir: str | Path, threads: int | None = None) -> pa.Table:
    """Run one SQL statement against the views; the result as an Arrow table."""
    with connect(shards_dir, threads) as con:
        return con.sql(sql).to_arrow_table()


def profile(con: duckdb.DuckDBPyConnection, sql: str, profile_path: str | Path) -> dict[str, Any]:
    """Run `sql` with DuckDB's JSON profiler: bytes read, wall time and the columns each scan projected
    (used by the tests and the shard benchmark to prove `input_ids` is not read)."""
    con.execute("SET enable_profiling = 'json'")
    con.execute(f"SET profiling_output = {sql_literal(profile_path)}")
    try:
        rows = con.sql(sql).fetchall()
    finally:
        con.execute("PRAGMA disable_profiling")
    report = json.loads(Path(profile_path).read_text())
    return {
        "rows": len(rows),
        "bytes_read": int(report.get("io", {}).get("total_bytes_read", 0)),
        "seconds": float(report.get("query", {}).get("total_time", 0.0)),
        "scanned_columns": sorted(_scanned_columns(report)),
    }


def _scanned_columns(node: Mapping[str, Any]) -> set[str]:
    """Columns projected by every Parquet scan in a DuckDB profile tree."""
    found: set[str] = set()
    for child in node.get("operator", []) or node.get("children", []):
        info = child.get("extra_info") or {}
        if child.get("type") == "TABLE_SCAN":
            projections = info.get("Projections", [])
            found.update([projections] if isinstance(projections, str) else projections)
        found |= _scanned_columns(child)
    return found


__all__ = ["SPAN_COLUMNS", "connect", "profile", "query", "sql_literal"]
