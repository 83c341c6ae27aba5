"""Atomic file writes: a file that exists under its final name is complete.

Everything is written to a hidden temporary sibling (`.<name>.<random>.tmp`, same directory, so the rename
stays on one filesystem) and renamed onto the final name with `os.replace`; on failure the temporary file is
removed and the final name is left as it was. Temporaries end in `.tmp` and start with `.`, so globs for the
final files (`*.parquet`, `*.json`) never see them and cleanups can find them (`.*.tmp`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s content to; renamed onto `path` when the block exits cleanly,
    removed when it raises. Parent directories are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> None:
    """Run `write(tmp_path)`, then rename onto `path`: readers (and resumed runs) never see partial files."""
    with atomic_path(path) as tmp:
        write(tmp)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
