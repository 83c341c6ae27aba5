"""The reference TtT sample format: JSON array / JSONL of `{"messages": [{role, content}]}` or `{"text": ...}`,
with audio inline as `<|audio_N|>` tokens between span markers (docs/paper-to-code.md).

Samples pass through unchanged: whether every `<|...|>` token exists in the vocabulary is checked by the
job, which owns the vocabulary. Here only the structure is checked (exactly one of messages/text; roles
system/user/assistant; string contents; other keys such as the reference's `text_content` are kept), and the
task guessed: "interleaved" for `text`; for messages what the data says (`reference_format.reference_task`: asr /
tts from the system prompt, aac / sec / asc from the instruction beside the user's audio), else "audio_chat" for
messages that carry audio tokens and "text_chat" for the rest (a configured source task overrides the guess).
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
from pipelines.reference_format import reference_task

ROLES = ("system", "user", "assistant")
SUFFIXES = (".json", ".jsonl")


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """Structural check of a messages list; ValueError naming the first problem."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    for pos, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"message {pos} is not an object")
        if m.get("role") not in ROLES:
            raise ValueError(f"message {pos}: role {m.get('role')!r} not in {ROLES}")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"message {pos} ({m['role']}): content must be a string")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("no assistant message")
    return messages


class TttJsonReader:
    kind = "ttt_json"
    default_task = "text_chat"

    def validate(self, source: SourceConfig) -> None:
        _, files = data_files(source, SUFFIXES)
        if not files:
            raise ValueError(f"ttt_json source {source.source_name!r}: no .json/.jsonl files under {source.path}")

    def units(self, source: SourceConfig) -> list[str]:
        return data_files(source, SUFFIXES)[1]

    def read(self, source: SourceConfig, unit: str) -> Iterator[dict[str, Any]]:
        rows = RowMaker(source, self.kind, self.default_task)
        stem = Path(unit).with_suffix("").as_posix()
        for rec in iter_json_records(base_dir(source) / unit):
            yield self._row(rows, stem, rec)

    def _row(self, rows: RowMaker, stem: str, rec: JsonRecord) -> dict[str, Any]:
        value = rec.value
        sample_id = value.get("id") if isinstance(value, dict) else None
        local_id = str(sample_id) if sample_id not in (None, "") else f"{stem}/{rec.index}"
        if rec.error or not isinstance(value, dict):
            return rows.error(local_id, rec.locator, f"sample {rec.index}: {rec.error or 'not a JSON object'}")
        meta = {"index": rec.index, **scalar_meta(value, skip=("messages", "text", "id"))}
        has_messages, has_text = "messages" in value, "text" in value
        if has_messages == has_text:
            why = "both 'messages' and 'text'" if has_messages else "neither 'messages' nor 'text'"
            return rows.error(local_id, rec.locator, f"sample {rec.index}: {why}", meta=meta)
        if has_text:
            text = value["text"]
            if not isinstance(text, str) or not text.strip():
                return rows.error(local_id, rec.locator, f"sample {rec.index}: 'text' must be a non-empty string",
                                  meta=meta)
            return rows.row(local_id, rec.locator, text=text, task="interleaved", meta=meta)
        try:
            messages = check_messages(value["messages"])
        except ValueError as e:
            return rows.error(local_id, rec.locator, f"sample {rec.index}: {e}", meta=meta)
        return rows.row(local_id, rec.locator, messages=messages, task=reference_task(messages),
                        meta=meta)
