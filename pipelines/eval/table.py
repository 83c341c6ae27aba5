"""The paper's Table 1 shape, built from per-run result files.

One evaluation run (a checkpoint under one sampler setting) writes `results.json` (pipelines/eval/jobs.py):
    {run_id, system, checkpoint, sampler, audio_qa: {subset: {speech: summary, text: summary, ...}},
     asr: {set: error_rate}, tts: {set: error_rate}, ...}
`build_table` lines such runs up as rows (AR baseline, NAR baseline, TtT, then the ablations, then anything
else) and columns (Audio-QA subsets with speech- and text-answer scores, ASR WER/CER per set, TTS WER per set).
Scores are 0-100, error rates are percentages; a missing cell is None.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pipelines.eval.compare import comparisons_markdown

SYSTEM_ORDER = ("AR baseline", "NAR baseline", "TtT", "TtT w/o BANOM", "TtT w/o PPM", "TtT w/o SST")
SUBSET_ORDER = ("llama_questions", "web_questions", "trivia_qa", "alpaca_eval")
SUBSET_LABELS = {"llama_questions": "LLaMAQ", "web_questions": "WebQ", "trivia_qa": "TriviaQA",
                 "alpaca_eval": "AlpacaEval"}
# Objective config names (workflows/conf/objective) -> the paper's row names.
OBJECTIVE_SYSTEMS = {"ar_baseline": "AR baseline", "nar_baseline": "NAR baseline", "ttt": "TtT",
                     "ttt_no_banom": "TtT w/o BANOM", "ttt_no_ppm": "TtT w/o PPM", "ttt_no_sst": "TtT w/o SST"}
# Objective config names whose training mode (workflows/conf/objective/*.yaml `mode`) is not ttt.
SYSTEM_MODES = {"ar_baseline": "ar", "nar_baseline": "nar"}


def system_label(name: str) -> str:
    """An objective config name or a free label -> the row name used in the table."""
    return OBJECTIVE_SYSTEMS.get(name, name)


def _order_key(values: Sequence[str], value: str) -> tuple[int, str]:
    return (values.index(value), "") if value in values else (len(values), value)


def system_mode(name: str) -> str:
    """The objective mode a system name denotes (ttt for the TtT variants and free labels)."""
    return SYSTEM_MODES.get(name, "ttt")


def _foreign_decode(sampler: Mapping[str, Any], system: str) -> str | None:
    """The run's decoder when it is not the one its system was trained for (runs record the resolved mode)."""
    decode = sampler.get("decode")
    return None if decode in (None, "auto", system_mode(system)) else str(decode)


def sampler_label(sampler: Mapping[str, Any], system: str = "") -> str:
    """A compact sampler description for row labels, e.g. "decode ar, steps 10, block 32, thr 0.9". The decoder is
    named only when it is not the system's own (`system`: the objective config name), as a TtT checkpoint decoded
    autoregressively: two runs that differ only there must not share a label."""
    decode = _foreign_decode(sampler, system)
    parts = [] if decode is None else [f"decode {decode}"]
    if "steps_per_block" in sampler:
        parts.append(f"steps {sampler['steps_per_block']}")
    if "block_length" in sampler:
        parts.append(f"block {sampler['block_length']}")
    if sampler.get("threshold") is not None:
        parts.append(f"thr {sampler['threshold']}")
    return ", ".join(parts)


def _percent(rate: float | None) -> float | None:
    return None if rate is None else 100.0 * rate


def columns_for(results: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Every column that at least one run has, in Table 1 order."""
    subsets = sorted({s for r in results for s in r.get("audio_qa", {})}, key=lambda s: _order_key(SUBSET_ORDER, s))
    asr_sets = sorted({s for r in results for s in r.get("asr", {})})
    tts_sets = sorted({s for r in results for s in r.get("tts", {})})
    cols: list[dict[str, str]] = []
    for s in subsets:
        label = SUBSET_LABELS.get(s, s)
        cols.append({"key": f"audio_qa/{s}/speech", "group": "Audio-QA", "label": f"{label} (S)", "better": "higher"})
        cols.append({"key": f"audio_qa/{s}/text", "group": "Audio-QA", "label": f"{label} (T)", "better": "higher"})
    for s in asr_sets:
        metric = next((r["asr"][s].get("metric", "wer") for r in results if s in r.get("asr", {})), "wer")
        cols.append({"key": f"asr/{s}", "group": "ASR", "label": f"{s} {metric.upper()}", "better": "lower"})
    for s in tts_sets:
        metric = next((r["tts"][s].get("metric", "wer") for r in results if s in r.get("tts", {})), "wer")
        cols.append({"key": f"tts/{s}", "group": "TTS", "label": f"{s} {metric.upper()}", "better": "lower"})
    return cols


def cell(result: Mapping[str, Any], key: str) -> float | None:
    """The value of one column for one run (score 0-100, or error rate in %)."""
    task, rest = key.split("/", 1)
    if task == "audio_qa":
        subset, kind = rest.rsplit("/", 1)
        return (result.get("audio_qa", {}).get(subset, {}).get(kind) or {}).get("score")
    return _percent((result.get(task, {}).get(rest) or {}).get("rate"))


def build_table(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Rows in paper order; a system evaluated under several sampler settings gets one row per setting, each
    labelled with its setting, as is a lone run decoded other than its system was trained."""
    ordered = sorted(results, key=lambda r: (_order_key(SYSTEM_ORDER, system_label(r.get("system", ""))),
                                             str(r.get("run_id", ""))))
    per_system: dict[str, int] = {}
    for r in ordered:
        per_system[system_label(r.get("system", ""))] = per_system.get(system_label(r.get("system", "")), 0) + 1
    cols = columns_for(ordered)
    rows = []
    for r in ordered:
        name, sampler = r.get("system", ""), r.get("sampler", {})
        system = system_label(name)
        alone = per_system[system] == 1 and _foreign_decode(sampler, name) is None
        label = system if alone else f"{system} ({sampler_label(sampler, name)})"
        rows.append({"label": label, "system": system, "run_id": r.get("run_id", ""),
                     "checkpoint": r.get("checkpoint", ""), "sampler": r.get("sampler", {}),
                     "values": {c["key"]: cell(r, c["key"]) for c in cols}})
    return {"columns": cols, "rows": rows}


def format_value(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def table_markdown(table: Mapping[str, Any]) -> str:
    """GitHub Markdown: one header row with group-prefixed labels (Markdown has no merged header cells)."""
    cols = table["columns"]
    header = ["System", *(f"{c['group']}: {c['label']}" for c in cols)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table["rows"]:
        cells = [_escape(row["label"]), *(format_value(row["values"].get(c["key"])) for c in cols)]
        lines.append("| " + " | ".join(cells) + " |")
    if table.get("comparisons"):
        lines += ["", "Paired comparisons on the same held-out items (paired bootstrap; a system is named better "
                  "only when the 95 % interval of the difference excludes 0):", "",
                  comparisons_markdown(table["comparisons"])]
    return "\n".join(lines)


def _escape(text: str) -> str:
    return re.sub(r"([|])", r"\\\1", text)
