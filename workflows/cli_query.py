"""`ttt query "SQL"`: DuckDB over the shards, with the views `samples`, `spans` and `quarantine`
(pipelines/duck.py). Prints a table, or writes the result with --csv / --parquet.

    ttt query "SELECT task, count(*) AS n, sum(n_tokens) AS tokens FROM samples GROUP BY task"
    ttt query "SELECT * FROM quarantine" --csv quarantine.csv --shards /nfs/ttt/run1/shards
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

CONF_DIR = Path(__file__).resolve().parent / "conf"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "query", help="run SQL over the shards (views: samples, spans, quarantine)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sql", help="one SQL statement over the views samples, spans, quarantine")
    p.add_argument("--shards", metavar="DIR", help="shard directory (default: paths.shards of the Hydra config)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--csv", metavar="OUT", help="write the result as CSV instead of printing it")
    out.add_argument("--parquet", metavar="OUT", help="write the result as Parquet instead of printing it")
    p.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")
    p.add_argument("--max-rows", type=int, default=40, help="rows to print (default 40)")
    p.set_defaults(func=run)


def default_shards_dir(overrides: list[str] | None = None) -> Path:
    """`paths.shards` of the composed project config (the same default every workflow uses)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="config", overrides=overrides or [])
    return Path(str(cfg.paths.shards))


def run(args: argparse.Namespace) -> int:
    import duckdb

    from pipelines.duck import connect, sql_literal

    shards = Path(args.shards) if args.shards else default_shards_dir()
    try:
        con = connect(shards, threads=args.threads)
    except FileNotFoundError as e:
        print(f"ttt query: {e}", file=sys.stderr)
        return 2
    sql = args.sql.strip().rstrip(";")
    try:
        if args.csv or args.parquet:
            out, fmt = (args.csv, "csv, HEADER") if args.csv else (args.parquet, "parquet")
            # COPY streams the result to the file (no size limit) and returns the row count
            (rows,) = con.execute(f"COPY ({sql}) TO {sql_literal(out)} (FORMAT {fmt})").fetchall()[0]
            print(f"wrote {rows} rows to {out}")
        else:
            rel = con.sql(sql)
            if rel is not None:  # statements such as SET return no relation
                rel.show(max_rows=args.max_rows, max_width=10_000)
    except duckdb.Error as e:
        print(f"ttt query: {e}", file=sys.stderr)
        return 1
    finally:
        con.close()
    return 0
