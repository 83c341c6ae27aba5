"""The shared helpers of ttt_common: unknown-key checks, config digests, atomic writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ttt_common.config_tools import config_digest, reject_unknown_keys
from ttt_common.files import atomic_path, atomic_write, atomic_write_text

PAYLOAD = {"b": [1, 2], "a": {"z": Path("/x"), "y": None}}
# sha256 of the canonical JSON, as every stored fingerprint was made: a change here would invalidate them all
DIGEST = "6482347c9985b5155fb42a55011ff061d974615c7053c77d13afcbba78d06234"


def test_config_digest_is_stable() -> None:
    assert config_digest(PAYLOAD) == DIGEST
    assert config_digest(PAYLOAD, 16) == DIGEST[:16]
    assert config_digest(dict(reversed(PAYLOAD.items()))) == DIGEST  # key order does not matter


def test_reject_unknown_keys() -> None:
    reject_unknown_keys({"a": 1}, {"a", "b"}, "cfg")
    with pytest.raises(ValueError, match=r"^cfg: unknown keys \['c', 'd'\] \(allowed: \['a', 'b'\]\)$"):
        reject_unknown_keys({"a": 1, "d": 2, "c": 3}, ("a", "b"), "cfg")
    with pytest.raises(KeyError, match=r"unknown settings \['c'\]"):
        reject_unknown_keys({"c": 1, "kind": "x"}, {"a"}, "", KeyError, what="settings", ignore={"kind"})
    with pytest.raises(ValueError, match=r"^x: unknown keys \['c'\]$"):
        reject_unknown_keys({"c": 1}, {"a"}, "x", list_known=False)


def test_atomic_write_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "x.json"
    atomic_write_text(target, "one")
    atomic_write(target, lambda tmp: tmp.write_bytes(b"two"))
    assert target.read_text() == "two" and [p.name for p in target.parent.iterdir()] == ["x.json"]


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    def boom(tmp: Path) -> None:
        tmp.write_text("partial")
        raise RuntimeError("killed")

    (tmp_path / "kept.parquet").write_text("old")
    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "x.parquet", boom)
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "kept.parquet") as tmp:
        tmp.write_text("new")
        assert tmp.name.startswith(".") and tmp.name.endswith(".tmp")  # hidden from globs, found by cleanups
        raise RuntimeError("killed")
    assert [p.name for p in tmp_path.iterdir()] == ["kept.parquet"] and (tmp_path / "kept.parquet").read_text() == "old"
