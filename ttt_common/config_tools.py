"""Config helpers: refuse unknown keys, and digest a config into a run fingerprint."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any


def reject_unknown_keys(cfg: Mapping[str, Any], known: Iterable[str], where: str, error: type[Exception] = ValueError,
                        *, what: str = "keys", ignore: Iterable[str] = (), list_known: bool = True) -> None:
    """Raise `error` when `cfg` has keys outside `known` (and `ignore`): a misspelt option must fail, not be
    silently ignored. The message is `<where>: unknown <what> [...] (allowed: [...])`; `where` may be "" (no
    prefix), and `list_known=False` leaves out the allowed keys (for very long lists)."""
    known = set(known)
    unknown = sorted(set(cfg) - known - set(ignore), key=str)
    if unknown:
        prefix = f"{where}: " if where else ""
        allowed = f" (allowed: {sorted(known, key=str)})" if list_known else ""
        raise error(f"{prefix}unknown {what} {unknown}{allowed}")


def config_digest(payload: Any, length: int | None = None) -> str:
    """The sha256 hex digest of `payload` as canonical JSON (keys sorted, non-JSON values as str()), cut to
    `length` characters when given. Stored with outputs as their fingerprint: a rerun with the same digest
    may reuse them, so the encoding must never change (existing runs would all be rebuilt)."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return digest[:length] if length is not None else digest
