"""ShareGPT-style chat data (OpenHermes-2.5 and friends): a JSON array or JSONL of
`{conversations: [{from: system|human|gpt, value, weight}], source, category, id, ...}`.

Many keys are null or absent in OpenHermes: optional ones are tolerated (null id -> positional id,
null metadata left out, empty system prompts skipped; per-turn weights, when any is set, go to meta as
`weights`, one per original turn); the row language is left to the source config (OpenHermes' own
`language` field names programming languages too, so it stays in meta). A conversation without usable turns is an error
row naming its index. Turns may also use `role`/`content` keys. Default task text_chat; a source with
`task: audio_chat` asks the job to synthesise speech for the turns.
One unit = one file; arrays are streamed item by item (OpenHermes is one ~1.7 GB array).
Bad bytes (common.iter_json_records): a JSONL line that is not UTF-8 is one error row; in a JSON array they end
the stream as a syntax error does (earlier samples kept, one error row at the failing index). Samples name no
files (audio is inline codes or synthesised later), so no path needs confining to the source root.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.readers.common import JsonRecord, RowMaker, base_dir, data_files, iter_json_records, scalar_meta
from pipelines.records import SourceConfig

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
         "system": "system"}
SUFFIXES = (".json", ".jsonl")


def to_messages(conversation: Any) -> list[dict[str, str]]:
    """ShareGPT turns -> [{role, content}]; ValueError saying what is wrong with the conversation."""
    if not isinstance(conversation, list) or not conversation:
        raise ValueError("missing or empty 'conversations' list")
    messages: list[dict[str, str]] = []
    for pos, turn in enumerate(conversation):
        if not isinstance(turn, dict):
            raise ValueError(f"turn {pos} is not an object")
        speaker = turn.get("from", turn.get("role"))
        content = turn.get("value", turn.get("content"))
        role = ROLES.get(str(speaker).strip().lower()) if speaker is not None else None
        if role is None:
            raise ValueError(f"turn {pos}: unknown speaker {speaker!r} (known: {sorted(ROLES)})")
        if role == "system" and not content:
            continue
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"turn {pos} ({role}): empty or non-string content")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("no assistant turn")
    return messages


class ShareGptReader:
    kind = "sharegpt"
    default_task = "text_chat"

    def validate(self, source: SourceConfig) -> None:
        _, files = data_files(source, SUFFIXES)
        if not files:
            raise ValueError(f"sharegpt source {source.source_name!r}: no .json/.jsonl files under {source.path}")

    def units(self, source: SourceConfig) -> list[str]:
        return data_files(source, SUFFIXES)[1]

    def read(self, source: SourceConfig, unit: str) -> Iterator[dict[str, Any]]:
        path = base_dir(source) / unit
        rows = RowMaker(source, self.kind, self.default_task)
        stem = Path(unit).with_suffix("").as_posix()
        for rec in iter_json_records(path):
            yield self._row(rows, stem, rec)

    def _row(self, rows: RowMaker, stem: str, rec: JsonRecord) -> dict[str, Any]:
        value = rec.value
        sample_id = value.get("id") if isinstance(value, dict) else None
        local_id = str(sample_id) if sample_id not in (None, "") else f"{stem}/{rec.index}"
        if rec.error:
            return rows.error(local_id, rec.locator, f"sample {rec.index}: {rec.error}")
        if not isinstance(value, dict):
            return rows.error(local_id, rec.locator, f"sample {rec.index}: not a JSON object")
        meta = {"index": rec.index, **scalar_meta(value, skip=("conversations", "id"))}
        weights = [t.get("weight") for t in value.get("conversations") or [] if isinstance(t, dict)]
        if any(w is not None for w in weights):
            meta["weights"] = weights
        try:
            messages = to_messages(value.get("conversations"))
        except ValueError as e:
            return rows.error(local_id, rec.locator, f"sample {rec.index}: {e}", meta=meta)
        return rows.row(local_id, rec.locator, messages=messages, meta=meta)
