"""Is one system better than another on the same held-out items? Paired bootstrap over the items both answered.

The paper's claim is an ordering (TtT > AR > NAR on spoken QA and ASR). Two scores whose intervals overlap say
nothing about the ordering by themselves; what does is the interval of their *difference* when both systems are
resampled on the same items (each item is one draw of the test distribution for both). So every comparison here
aligns two runs' item tables on `item_id`, scores each item the way `pipelines/eval/jobs.py summarize` does
(corpus-level WER/CER from per-utterance edit counts, accuracy from per-item judgments), and reports the
difference with its paired percentile-bootstrap 95 % interval (`metrics.compare_to_control`, the same resampler
the controls use). A verdict names a winner only when that interval excludes 0.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.eval.items import INPUT_ERROR
from pipelines.eval.judges import VALID
from pipelines.eval.scoring import compare_to_control, scoring_for, utterance_counts

# Pairs in the order the paper argues them: the hybrid against each baseline, then the baselines.
PAPER_PAIRS = (("TtT", "AR baseline"), ("TtT", "NAR baseline"), ("AR baseline", "NAR baseline"))


@dataclass(frozen=True)
class ItemScores:
    """Per-item values of one set of one run: `values[i]` belongs to `item_ids[i]`.

    Error-rate sets hold [S, D, I, H] edit counts per utterance (corpus rate = edits / reference tokens);
    accuracy sets hold one 0/1 (or judge score) column.
    """

    item_ids: tuple[str, ...]
    values: np.ndarray
    lower_is_better: bool
    metric: str


def _rate(counts: np.ndarray) -> np.ndarray:
    errors = counts[..., 0] + counts[..., 1] + counts[..., 2]
    refs = counts[..., 0] + counts[..., 1] + counts[..., 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        return errors.sum(axis=1) / refs.sum(axis=1)


def _mean(values: np.ndarray) -> np.ndarray:
    return values[..., 0].mean(axis=1)


def _first_reference(row: Mapping[str, Any]) -> str:
    refs = json.loads(row.get("references_json") or "[]")
    return refs[0] if refs else ""


def _error_rate_scores(rows: Sequence[Mapping[str, Any]], hypothesis: Callable[[Mapping[str, Any]], str | None],
                       ) -> ItemScores:
    kept = [(r, h) for r in rows if r["status"] != INPUT_ERROR and (h := hypothesis(r)) is not None]
    languages = Counter(r["language"] or "en" for r in rows).most_common(1)
    scoring = scoring_for(languages[0][0] if languages else "en")
    refs = [scoring.normalize(_first_reference(r)) for r, _ in kept]
    hyps = [scoring.normalize(h) for _, h in kept]
    return ItemScores(tuple(r["item_id"] for r, _ in kept), utterance_counts(refs, hyps, scoring.unit), True,
                      scoring.metric)


def item_scores(items: pa.Table) -> dict[str, ItemScores]:
    """Per-item scores of one run's item table, keyed like the Table-1 columns (pipelines/eval/table.py):
    `asr/<set>`, `tts/<set>`, `audio_qa/<subset>/speech|text`. Items `summarize` leaves out are left out here
    too (input errors; TTS items without a transcript; QA items without a valid judgment)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in sorted(items.to_pylist(), key=lambda r: r["item_id"]):
        groups.setdefault((row["task"], row["subset"]), []).append(row)
    out: dict[str, ItemScores] = {}
    for (task, subset), rows in sorted(groups.items()):
        if task == "asr":
            out[f"asr/{subset}"] = _error_rate_scores(rows, lambda r: r.get("answer_text") or "")
        elif task == "tts":
            out[f"tts/{subset}"] = _error_rate_scores(
                rows, lambda r: None if r.get("asr_error") else r.get("speech_transcript") or "")
        elif task == "audio_qa":
            for kind in ("speech", "text"):
                judged = [r for r in rows if r.get(f"{kind}_verdict") in VALID and r.get(f"{kind}_score") is not None]
                out[f"audio_qa/{subset}/{kind}"] = ItemScores(
                    tuple(r["item_id"] for r in judged),
                    np.asarray([[float(r[f"{kind}_score"])] for r in judged], dtype=np.float64).reshape(-1, 1),
                    False, str(rows[0].get("metric") or "accuracy"))
    return out


def compare_pair(a: ItemScores, b: ItemScores, bootstrap: int, seed: int = 0,
                 confidence: float = 0.95) -> dict[str, Any]:
    """a vs b on the items both have: scores, the difference a - b with its paired bootstrap interval, and the
    verdict ("a better", "b better" or "no difference" when the interval holds 0)."""
    b_index = {item: i for i, item in enumerate(b.item_ids)}
    shared = [(i, b_index[item]) for i, item in enumerate(a.item_ids) if item in b_index]
    statistic = _rate if a.lower_is_better else _mean
    if not shared:
        return {"n": 0, "metric": a.metric, "lower_is_better": a.lower_is_better, "verdict": "no shared items"}
    ia, ib = (np.asarray(x) for x in zip(*shared, strict=True))
    c = compare_to_control(a.values[ia], b.values[ib], statistic, a.lower_is_better, bootstrap, confidence, seed)
    out = {"n": c["n"], "metric": a.metric, "lower_is_better": a.lower_is_better, "a": c["score"], "b": c["control"],
           "a_ci": c.get("score_ci"), "b_ci": c.get("control_ci"), "diff": None, "diff_ci": c.get("diff_ci"),
           "verdict": "no difference"}
    if c["score"] is None or c["control"] is None or not np.isfinite([c["score"], c["control"]]).all():
        out["verdict"] = "undefined (no reference tokens)"
        return out
    out["diff"] = c["score"] - c["control"]
    ci = c.get("diff_ci")
    if ci is None:
        out["verdict"] = "no interval (bootstrap off)"
    elif ci[1] < 0 or ci[0] > 0:
        a_lower = ci[1] < 0
        out["verdict"] = "a better" if a_lower == a.lower_is_better else "b better"
    return out


def compare_systems(runs: Mapping[str, pa.Table], pairs: Sequence[tuple[str, str]] = PAPER_PAIRS,
                    bootstrap: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Every listed pair of systems present in `runs` (system label -> item table), on every set both have.
    Returns one record per (pair, set): {a, b (system labels), set, n, metric, score_a, score_b, diff, diff_ci,
    verdict, winner}."""
    scores = {name: item_scores(table) for name, table in runs.items()}
    out: list[dict[str, Any]] = []
    for a, b in pairs:
        if a not in scores or b not in scores:
            continue
        for key in sorted(set(scores[a]) & set(scores[b])):
            c = compare_pair(scores[a][key], scores[b][key], bootstrap, seed)
            winner = {"a better": a, "b better": b}.get(c["verdict"], "")
            out.append({"a": a, "b": b, "set": key, "n": c["n"], "metric": c["metric"],
                        "lower_is_better": c["lower_is_better"], "score_a": c.get("a"), "score_b": c.get("b"),
                        "a_ci": c.get("a_ci"), "b_ci": c.get("b_ci"), "diff": c.get("diff"),
                        "diff_ci": c.get("diff_ci"), "verdict": c["verdict"], "winner": winner})
    return out


def compare_runs(results: Sequence[Mapping[str, Any]], label: Callable[[str], str], bootstrap: int = 1000,
                 seed: int = 0, pairs: Sequence[tuple[str, str]] = PAPER_PAIRS) -> list[dict[str, Any]]:
    """`compare_systems` over evaluated runs (results.json contents, with `items_dir`), each named by
    `label(system)` (the table's row names). A system evaluated under several sampler settings is left out:
    which of its rows stands for it would be an arbitrary choice."""
    by_system: dict[str, list[Mapping[str, Any]]] = {}
    for r in results:
        by_system.setdefault(label(str(r.get("system", ""))), []).append(r)
    wanted = {name for pair in pairs for name in pair}
    runs = {name: pq.read_table(rs[0]["items_dir"]) for name, rs in by_system.items()
            if name in wanted and len(rs) == 1 and rs[0].get("items_dir")}
    return compare_systems(runs, pairs, bootstrap, seed)


def _scaled(value: float | None, scale: float) -> str:
    return "–" if value is None else f"{value * scale:.1f}"


def _interval(ci: Sequence[float] | None, scale: float) -> str:
    return "" if not ci else f" [{ci[0] * scale:.1f}, {ci[1] * scale:.1f}]"


def comparison_rows(comparisons: Sequence[Mapping[str, Any]]) -> list[tuple[str, ...]]:
    """Display rows: (A vs B, set, n, A [CI], B [CI], A - B [CI], verdict). Error rates in % (QA judges already
    score 0-100)."""
    rows = []
    for c in comparisons:
        scale = 100.0 if c["lower_is_better"] else 1.0
        verdict = f"{c['winner']} better" if c["winner"] else c["verdict"]
        rows.append((f"{c['a']} vs {c['b']}", f"{c['set']} ({c['metric']})", str(c["n"]),
                     _scaled(c["score_a"], scale) + _interval(c.get("a_ci"), scale),
                     _scaled(c["score_b"], scale) + _interval(c.get("b_ci"), scale),
                     ("–" if c["diff"] is None else f"{c['diff'] * scale:+.1f}") + _interval(c.get("diff_ci"), scale),
                     verdict))
    return rows


COMPARISON_HEADER = ("systems", "set", "n", "A [95 % CI]", "B [95 % CI]", "A − B [95 % CI]", "verdict")


def comparisons_markdown(comparisons: Sequence[Mapping[str, Any]]) -> str:
    """GitHub Markdown table of `comparison_rows`."""
    lines = ["| " + " | ".join(COMPARISON_HEADER) + " |", "|" + "---|" * len(COMPARISON_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in comparison_rows(comparisons)]
    return "\n".join(lines)
