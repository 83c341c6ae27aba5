"""The reference implementation's (ai4ed/TtT) data, both ways: its data_config as our sources, its chats'
tasks, and shards exported back to its JSON.

The reference releases its training data only as JSON of `{"messages": [{role, content, text_content}]}` or
`{"text": ...}` with GLM-4-Voice codes inline (`<|audio_N|>`), listed by `data_config/data_config_TtT.json`
as `[{"path", "sample_ratio", "data_type": "IT" | "PT"}]`. A team moving to this system starts from exactly
that, and comparing the two systems needs identical data in both directions:

- `sources_from_data_config`: the data_config's entries as `ttt_json` sources (`load_sources` calls it when a
  sources file has that shape). `sample_ratio` becomes the source ratio (our ratio > 1 repeats records, where
  the reference caps at all of them); `data_type` PT (pre-training documents) becomes task `interleaved`, IT
  leaves the task to each record (`reference_task`); relative paths resolve against the config's folder. An
  entry may also carry `name` and `task` (ours), to name the source or fix its task.
- `reference_task`: the task a reference chat was made for, from what the data says (system prompt,
  instruction beside the audio), since its ASR and captioning files are otherwise just audio chats.
- `reference_record` / `export_reference`: shard rows back to the reference's records and files (plus a
  data_config listing them), so data made here feeds the reference's trainer.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np

from tokenization.sequence import Span
from tokenization.vocab import AUDIO_TOKEN_RE, IM_END, IM_START, UnifiedVocab
from ttt_common.files import atomic_path

DATA_TYPES = {"PT": "interleaved", "IT": ""}  # data_type -> source task ("" = each record's own)
_ENTRY_KEYS = {"path", "sample_ratio", "data_type", "name", "task"}
REFERENCE_CODEBOOK = 16384  # the reference tokenizer's <|audio_N|> tokens
DATA_CONFIG_FILE = "data_config.json"

# What the reference's system prompts say (datasets/*.json): "You are an Automatic Speech Recognition (ASR)
# model. ...", "You are an audio-to-audio chat model. ...", "You are a helpful audio model. ...".
_SYSTEM_TASKS = ((re.compile(r"automatic speech recognition|\bASR\b", re.I), "asr"),
                 (re.compile(r"text[- ]to[- ]speech|\bTTS\b", re.I), "tts"))
# The instruction written beside the user's audio in its SEC/AAC/ASC file ("Please generate a caption for the
# given audio.").
_INSTRUCTION_TASKS = ((re.compile(r"\bcaption", re.I), "aac"), (re.compile(r"\bemotion", re.I), "sec"),
                      (re.compile(r"\b(acoustic )?scene\b", re.I), "asc"))
_INLINE = re.compile(r"<\|[A-Za-z0-9_]+\|>")


# ---- data_config -> sources ----------------------------------------------------------------------------

def is_data_config(entries: Any) -> bool:
    """Whether a loaded sources file is the reference's data_config (entries without `kind`, with its keys)."""
    return (isinstance(entries, Sequence) and not isinstance(entries, str) and bool(entries)
            and all(isinstance(e, Mapping) and "kind" not in e for e in entries)
            and any("sample_ratio" in e or "data_type" in e for e in entries))


def sources_from_data_config(entries: Sequence[Mapping[str, Any]], base: Path) -> list[dict[str, Any]]:
    """data_config entries -> `ttt_json` source mappings; ValueError naming every bad entry."""
    problems: list[str] = []
    sources: list[dict[str, Any]] = []
    names: set[str] = set()
    for i, entry in enumerate(entries):
        unknown = sorted(set(entry) - _ENTRY_KEYS)
        data_type = str(entry.get("data_type", "IT")).upper()
        if unknown:
            problems.append(f"[{i}]: unknown keys {unknown} (a data_config entry has {sorted(_ENTRY_KEYS)})")
        if not entry.get("path"):
            problems.append(f"[{i}]: no 'path'")
        if data_type not in DATA_TYPES:
            problems.append(f"[{i}]: data_type {entry.get('data_type')!r} is not one of {sorted(DATA_TYPES)}")
        try:
            ratio = float(entry.get("sample_ratio", 1.0))
        except (TypeError, ValueError):
            problems.append(f"[{i}]: sample_ratio {entry.get('sample_ratio')!r} is not a number")
            ratio = 1.0
        if unknown or not entry.get("path") or data_type not in DATA_TYPES:
            continue
        path = Path(str(entry["path"])).expanduser()
        path = Path(os.path.normpath(path if path.is_absolute() else base / path))
        name = str(entry.get("name") or _unique(re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem) or "ttt_json", names))
        names.add(name)
        sources.append({"kind": "ttt_json", "path": str(path), "name": name, "ratio": ratio,
                        "task": str(entry.get("task") or DATA_TYPES[data_type])})
    if problems:
        raise ValueError("not a valid data_config: " + "; ".join(problems))
    return sources


def _unique(stem: str, taken: set[str]) -> str:
    name, k = stem, 2
    while name in taken:
        name, k = f"{stem}_{k}", k + 1
    return name


# ---- tasks ---------------------------------------------------------------------------------------------

def reference_task(messages: Iterable[Mapping[str, Any]]) -> str:
    """The task of a reference chat, from what it says. Without audio codes it is text_chat. With them: its
    system prompt names ASR or TTS, else a user turn's instruction beside its audio names a caption (aac), an
    emotion (sec) or a scene (asc), else it is audio_chat."""
    messages = list(messages)
    if not any(AUDIO_TOKEN_RE.search(str(m.get("content", ""))) for m in messages):
        return "text_chat"
    system = " ".join(str(m.get("content", "")) for m in messages if m.get("role") == "system")
    for pattern, task in _SYSTEM_TASKS:
        if pattern.search(system):
            return task
    for m in messages:
        content = str(m.get("content", ""))
        if m.get("role") != "user" or not AUDIO_TOKEN_RE.search(content):
            continue
        instruction = _INLINE.sub(" ", content)
        for pattern, task in _INSTRUCTION_TASKS:
            if pattern.search(instruction):
                return task
    return "audio_chat"


# ---- shards -> reference records -----------------------------------------------------------------------

def reference_record(vocab: UnifiedVocab, input_ids: Sequence[int] | np.ndarray, spans: Sequence[Span]
                     ) -> dict[str, Any]:
    """One shard sample -> the reference's record: `{"text"}` for a document (without the `<|endoftext|>` our
    builder ends it with; the reference adds none), else `{"messages": [{role, content}]}` with each turn's
    content between its `<|im_start|>role\\n` header and `<|im_end|>\\n`. Audio is written inline as
    `<|audio_N|>` between the span markers, exactly as the reference's files hold it."""
    ids = np.asarray(input_ids, dtype=np.int64)
    if not spans:
        raise ValueError("sample has no span table")
    if all(s.role == "document" for s in spans):
        if len(ids) and ids[-1] == vocab.pad_id:
            ids = ids[:-1]
        return {"text": vocab.to_mixed_string(ids)}
    messages = []
    for turn, group in groupby(spans, key=lambda s: s.turn):
        turn_spans = list(group)
        role = turn_spans[0].role
        text = vocab.to_mixed_string(ids[turn_spans[0].start:turn_spans[-1].end])
        head, tail = f"{IM_START}{role}\n", f"{IM_END}\n"
        if not (text.startswith(head) and text.endswith(tail)) or len(text) < len(head) + len(tail):
            raise ValueError(f"turn {turn} ({role}) is not a complete chat turn: {text[:80]!r}...")
        messages.append({"role": role, "content": text[len(head):-len(tail)]})
    return {"messages": messages}


def export_reference(shards_dir: str | Path, out_dir: str | Path, where: str = "",
                     text_tokenizer: str = "bundled:qwen", batch_rows: int = 256) -> dict[str, Any]:
    """Shards (all samples, or those a DuckDB predicate over the `samples` view selects) -> one reference JSON
    file per source under `out_dir`, plus `data_config.json` listing them for the reference's trainer
    (`--data_path`). Samples keep the shards' order, and every copy of an up-sampled record is written, so
    the reference trains on exactly the samples ours does. Returns {source: samples written}.

    Files are written beside their final names and renamed at the end (`ttt_common.files.atomic_path`), so an
    interrupted export leaves no half-written file under a final name."""
    from pipelines.duck import connect
    from tokenization.codecs.base import CodecIdentity
    from tokenization.sequence import spans_from_pylist
    from tokenization.shard_format import MANIFEST_FILE
    from tokenization.vocab import check_compatible, read_manifest
    from tokenization.vocab_factory import make_vocab, manifest_subset

    shards, out = Path(shards_dir), Path(out_dir)
    manifest = read_manifest(shards / MANIFEST_FILE)
    vocab = make_vocab(text_tokenizer, CodecIdentity(**manifest["codec"]), str(manifest["layout"]),
                       manifest_subset(manifest))
    check_compatible(vocab.manifest(), manifest, what=f"shards {shards} (with tokenizer {text_tokenizer})")
    if vocab.codebook_size > REFERENCE_CODEBOOK:
        raise ValueError(f"codec {vocab.codec.name} has {vocab.codebook_size} codes; the reference's tokenizer "
                         f"knows <|audio_0|> .. <|audio_{REFERENCE_CODEBOOK - 1}|> only")
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    names: dict[str, str] = {}  # source -> file name (sanitised, unique)
    counts: dict[str, int] = {}
    documents_only: dict[str, bool] = {}
    sql = "SELECT source, spans, input_ids FROM samples" + (f" WHERE {where}" if where.strip() else "")
    # each file is closed, then renamed into place, when the stack unwinds without an error (else removed)
    with connect(shards) as con, contextlib.ExitStack() as stack:
        for batch in con.sql(sql).to_arrow_reader(batch_rows):
            for row in batch.to_pylist():
                record = reference_record(vocab, row["input_ids"], spans_from_pylist(row["spans"]))
                source = row["source"]
                if source not in files:
                    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", source).strip("._") or "source"
                    names[source] = _unique(stem, {Path(n).stem for n in names.values()}) + ".json"
                    tmp = stack.enter_context(atomic_path(out / names[source]))
                    files[source] = stack.enter_context(tmp.open("w", encoding="utf-8"))
                    files[source].write("[\n")
                else:
                    files[source].write(",\n")
                files[source].write(json.dumps(record, ensure_ascii=False))
                counts[source] = counts.get(source, 0) + 1
                documents_only[source] = documents_only.get(source, True) and "text" in record
        for f in files.values():
            f.write("\n]\n")
    data_config = [{"path": str((out / names[source]).absolute()), "sample_ratio": 1,
                    "data_type": "PT" if documents_only[source] else "IT"} for source in sorted(files)]
    (out / DATA_CONFIG_FILE).write_text(json.dumps(data_config, indent=4) + "\n")
    return counts



__all__ = ["DATA_CONFIG_FILE", "DATA_TYPES", "export_reference", "is_data_config", "reference_record",
           "reference_task", "sources_from_data_config"]
