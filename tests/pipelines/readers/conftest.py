"""Fixtures shared by the corpus-reader tests: where the corpus fixtures live and a read-everything helper."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from pipelines.readers import common, get_reader
from pipelines.records import RAW_ROW_SCHEMA, SourceConfig

CORPORA = Path(__file__).resolve().parents[2] / "fixtures" / "corpora"

ReadAll = Callable[..., list[dict[str, Any]]]


def read_source(kind: str, path: Path | str, **config: Any) -> list[dict[str, Any]]:
    """validate -> units -> read every unit, as the job does; rows must fit the raw-row schema."""
    source = SourceConfig.from_mapping({"kind": kind, "path": str(path), **config})
    reader = get_reader(kind)
    reader.validate(source)
    rows = [row for unit in reader.units(source) for row in reader.read(source, unit)]
    pa.Table.from_pylist(rows, schema=RAW_ROW_SCHEMA)  # raises when a row does not fit the schema
    return rows


def fate(row: dict[str, Any]) -> str:
    """'ok', 'drop:<reason>' or 'error' — the three fates the job gives a row."""
    if row["error"]:
        return "error"
    return f"drop:{row['drop_reason']}" if row["drop_reason"] else "ok"


def row_meta(row: dict[str, Any]) -> dict[str, Any]:
    return json.loads(row["meta_json"]) if row["meta_json"] else {}


@pytest.fixture
def corpora() -> Path:
    return CORPORA


@pytest.fixture
def read_all() -> ReadAll:
    """read_all(kind, path, **source_config) -> rows (see read_source)."""
    return read_source


@pytest.fixture
def fates() -> Callable[[list[dict[str, Any]]], list[tuple[str, str]]]:
    """rows -> [(record_id, fate)] in row order: the compact picture most tests assert exactly."""
    return lambda rows: [(r["record_id"], fate(r)) for r in rows]


@pytest.fixture
def meta() -> Callable[[dict[str, Any]], dict[str, Any]]:
    return row_meta


class CountingReader:
    """A binary file wrapper that records how much a parser has read, and in what request sizes."""

    def __init__(self, path: Path) -> None:
        self._f = path.open("rb")
        self.total = 0
        self.sizes: list[int] = []

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.total += len(data)
        self.sizes.append(n)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def __enter__(self) -> CountingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


@pytest.fixture
def counted_opens(monkeypatch: pytest.MonkeyPatch) -> list[CountingReader]:
    """Route the readers' manifest/array opens through CountingReader; returns the opened files in order."""
    opened: list[CountingReader] = []

    def open_counting(path: Path) -> CountingReader:
        opened.append(CountingReader(path))
        return opened[-1]

    monkeypatch.setattr(common, "open_binary", open_counting)
    return opened
