from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.quarantine import QUARANTINE_SCHEMA
from pipelines.shards import write_parquet_shard, write_quarantine_part
from tokenization.sequence import Span, spans_to_pylist
from tokenization.shard_format import SHARD_SCHEMA
from workflows import cli_query


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    rows = [{f.name: None for f in SHARD_SCHEMA} | {
        "sample_id": f"s/{i}", "record_id": f"s/{i}", "copy": 0, "source": "s", "task": ("asr", "tts")[i % 2],
        "n_tokens": 10 + i, "audio_seconds": 1.0, "text": f"t{i}",
        "spans": spans_to_pylist([Span("text", 0, 4, "user", False), Span("audio", 4, 10 + i, "assistant", True,
                                                                          True, 1)]),
        "input_ids": list(range(10 + i))} for i in range(6)]
    write_parquet_shard(pa.Table.from_pylist(rows, schema=SHARD_SCHEMA),
                        root / "parquet" / "part-00000-of-00001.parquet", {"format": 1}, row_group_rows=4)
    bad = pa.Table.from_pylist([{"source": "s", "record_id": "s/x", "kind": "lhotse", "task": "asr", "locator": "l",
                                 "stage": "decode", "error": "nan_audio", "detail": "d"}], schema=QUARANTINE_SCHEMA)
    write_quarantine_part(bad, root / "quarantine" / "part-00000-of-00001.parquet", QUARANTINE_SCHEMA)
    return root


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ttt")
    cli_query.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["query", *argv])
    return args.func(args)


def test_prints_a_table(shards: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("SELECT task, count(*) AS n, sum(n_tokens) AS tokens FROM samples GROUP BY task ORDER BY task",
               "--shards", str(shards)) == 0
    out = capsys.readouterr().out
    assert "asr" in out and "tts" in out and str(10 + 12 + 14) in out and str(11 + 13 + 15) in out


def test_writes_csv_and_parquet(shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sql = "SELECT kind, count(*) AS n, sum(len) AS tokens FROM spans GROUP BY kind ORDER BY kind"
    assert run(sql, "--shards", str(shards), "--csv", str(tmp_path / "o.csv")) == 0
    assert (tmp_path / "o.csv").read_text().splitlines() == ["kind,n,tokens", f"audio,6,{sum(6 + i for i in range(6))}",
                                                             "text,6,24"]
    assert run("SELECT * FROM quarantine", "--shards", str(shards), "--parquet", str(tmp_path / "q.parquet")) == 0
    assert pq.read_table(tmp_path / "q.parquet").column("error").to_pylist() == ["nan_audio"]
    assert "wrote 1 rows" in capsys.readouterr().out


def test_errors_are_reported_not_raised(shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("SELECT nope FROM samples", "--shards", str(shards)) == 1
    assert "nope" in capsys.readouterr().err
    assert run("SELECT 1", "--shards", str(tmp_path / "missing")) == 2
    assert "no Parquet files" in capsys.readouterr().err


def test_default_shard_dir_comes_from_the_config() -> None:
    assert cli_query.default_shards_dir() == Path("runs/local/shards")
    assert cli_query.default_shards_dir(["paths.root=/data/run1"]) == Path("/data/run1/shards")
