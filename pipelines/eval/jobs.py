"""Evaluation sweeps on Ray Data: checkpoints x sampler settings -> per-item Parquet -> one Table-1 table.

For every run of the grid (one checkpoint under one sampler setting):

    items (Audio-QA questions, ASR utterances, TTS texts; pipelines/eval/items.py)
      -> GenerateStage   (actor pool, GPUs in production)  answer text + speech WAV per item
      -> TranscribeStage (actor pool)                      ASR transcript of the generated speech
      -> JudgeStage      (actor pool)                      Audio-QA speech and text answers judged
      -> {paths.eval}/<run_id>/items/*.parquet             every item's outputs, status and errors
    summarize() on the driver -> {paths.eval}/<run_id>/results.json
Then all runs -> {paths.eval}/table.json + table.md (pipelines/eval/table.py), which the report reads.

Scores: Audio-QA per subset as the mean over valid judgments of the speech answers (S) and of the text
answers (T); ASR as corpus-level WER/CER of the model's transcripts (a failed generation is an empty
hypothesis: all deletions); TTS as corpus-level WER of the ASR transcripts of the model's speech against the
input text. Items with broken inputs are counted and left out.

A run whose results.json carries the same fingerprint (checkpoint files, sampler, tasks, ASR models, judge)
is not evaluated again unless `force` is set, so a grid can be extended or resumed run by run.

Each run is decoded the way its checkpoint was trained: a sampler `decode: auto` is resolved on the driver to
the objective mode the checkpoint records (objective.json), or, for checkpoints without a record, to the mode
the grid's `system` names (ar_baseline -> ar, nar_baseline -> nar, anything else -> ttt). The resolved mode is
part of the run's sampler (so of its fingerprint and of the table rows) and is written as `decode` in
results.json.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.console import CONSOLE
from pipelines.eval.compare import compare_runs
from pipelines.eval.items import GENERATION_ERROR, INPUT_ERROR, TASKS, load_items
from pipelines.eval.judges import VALID, Judgment, aggregate, build_judge
from pipelines.eval.scoring import accuracy_vs_control, derangement, error_rate, error_rate_vs_control
from pipelines.eval.table import OBJECTIVE_SYSTEMS, SYSTEM_MODES, build_table, system_label, table_markdown
from pipelines.ray_runtime import ensure_ray
from ttt_common.config_tools import config_digest, reject_unknown_keys
from ttt_common.files import atomic_write_text
from ttt_model.core.checkpoint_layout import MANIFEST_FILE, OBJECTIVE_FILE, load_objective
from ttt_model.decoding.sampler_config import DECODE_MODES

REPO_ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)

RESULTS_FILE, ITEMS_DIR, AUDIO_DIR = "results.json", "items", "audio"
TABLE_JSON, TABLE_MD = "table.json", "table.md"


class EvalConfigError(ValueError):
    """A configuration mistake; the message says what to fix."""


@dataclass(frozen=True)
class StageResources:
    """Actor pool of one stage. `pool_size`: actors; `batch_size`: items per call."""

    pool_size: int = 1
    batch_size: int = 4
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    @staticmethod
    def from_mapping(m: Mapping[str, Any] | None, extra: Sequence[str] = ()) -> StageResources:
        values = dict(m or {})
        known = {"pool_size", "batch_size", "num_cpus", "num_gpus", *extra}
        reject_unknown_keys(values, known, "eval stage config", EvalConfigError)
        return StageResources(**{k: values[k] for k in ("pool_size", "batch_size", "num_cpus", "num_gpus")
                                 if k in values})


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid."""

    run_id: str
    system: str
    checkpoint: Path
    sampler: dict[str, Any]


# ------------------------------------------------------------------------------------------------ grid

def resolve_checkpoint(path: str | Path) -> Path:
    """A model directory (with vocab_manifest.json) from a path to one, or to any directory above such
    directories (a Ray Train storage path `<name>/checkpoint_*/model`): then the most recently written one.
    Hidden directories (atomic-write temporaries) are never picked."""
    p = Path(path).expanduser().absolute()
    if (p / MANIFEST_FILE).is_file():
        return p
    found = [m.parent for m in p.rglob(MANIFEST_FILE)
             if not any(part.startswith(".") for part in m.relative_to(p).parts)]
    if not found:
        raise FileNotFoundError(f"no checkpoint under {p}: expected {MANIFEST_FILE} in it or in a directory below "
                                "(train one first: python workflows/train.py)")
    return max(found, key=lambda d: ((d / MANIFEST_FILE).stat().st_mtime, str(d)))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-").lower()


def _flat(m: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in m.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return out


def sampler_slug(overrides: Mapping[str, Any]) -> str:
    """A short, readable run-id part for a sampler override, e.g. {steps_per_block: 4} -> "s4"."""
    short = {"steps_per_block": "s", "block_length": "b", "threshold": "t", "max_span": "m",
             "max_new_tokens": "n", "backend": ""}
    parts = [f"{short.get(k, k)}{v}" for k, v in sorted(_flat(overrides).items())]
    return _slug("_".join(parts)) or "default"


def build_grid(cfg: Mapping[str, Any]) -> list[RunSpec]:
    """Checkpoints x sampler overrides (each merged over the `sampler` group)."""
    grid = cfg["eval"].get("grid") or {}
    checkpoints = grid.get("checkpoints") or []
    if not checkpoints:
        raise EvalConfigError("eval.grid.checkpoints is empty: list {path, system} entries (system: an objective "
                              "name such as ttt / ar_baseline, or a free label)")
    samplers = grid.get("samplers") or [{}]
    base = dict(cfg.get("sampler") or {})
    specs = []
    for entry in checkpoints:
        entry = {"path": entry} if isinstance(entry, str) else dict(entry)
        unknown = set(entry) - {"path", "system", "name"}
        if unknown or "path" not in entry:
            raise EvalConfigError(f"eval.grid.checkpoints entry {entry}: needs `path` (optional `system`, `name`)")
        path = resolve_checkpoint(entry["path"])
        system = str(entry.get("system") or Path(entry["path"]).name)
        name = str(entry.get("name") or system)
        for overrides in samplers:
            merged = _deep_merge(base, dict(overrides or {}))
            merged["decode"] = resolve_decode(merged, path, system)
            specs.append(RunSpec(f"{_slug(name)}__{sampler_slug(overrides or {})}", system, path, merged))
    ids = [s.run_id for s in specs]
    if len(set(ids)) != len(ids):
        raise EvalConfigError(f"eval grid has duplicate runs {sorted(i for i in ids if ids.count(i) > 1)}: give "
                              "checkpoints distinct `name`s")
    return specs


def resolve_decode(sampler: Mapping[str, Any], checkpoint: Path, system: str) -> str:
    """The decoder of one run: the sampler's explicit `decode`, else (`auto`, the default) the objective mode the
    checkpoint records, else the mode of the objective the `system` name denotes (ttt for free labels)."""
    decode = str(sampler.get("decode") or "auto")
    if decode not in DECODE_MODES:
        raise EvalConfigError(f"sampler decode must be one of {DECODE_MODES}, got {decode!r}")
    if decode != "auto":
        return decode
    record = load_objective(checkpoint)
    if record is not None:
        mode = str(record.get("mode") or "")
        if mode not in DECODE_MODES[1:]:
            raise EvalConfigError(f"{checkpoint / OBJECTIVE_FILE} records objective mode {mode!r}; known modes are "
                                  f"{DECODE_MODES[1:]}")
        named = SYSTEM_MODES.get(system, "ttt")
        if mode != named and system in OBJECTIVE_SYSTEMS:
            log.warning("system %r names a %s objective but %s was trained with mode %r; decoding with %r",
                        system, named, checkpoint, mode, mode)
        return mode
    return SYSTEM_MODES.get(system, "ttt")


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def fingerprint(spec: RunSpec, eval_cfg: Mapping[str, Any]) -> str:
    """What makes a run's results valid: checkpoint files (name, size, mtime), sampler, tasks, ASR, judge."""
    files = sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in spec.checkpoint.iterdir()
                   if f.is_file())
    payload = {"checkpoint": str(spec.checkpoint), "files": files, "sampler": spec.sampler,
               **{k: eval_cfg.get(k) for k in ("tasks", "asr_models", "judge", "bootstrap", "seed")}}
    return config_digest(payload, 16)


# ------------------------------------------------------------------------------------------- summarize

def _judgments(rows: Sequence[Mapping[str, Any]], kind: str) -> list[Judgment]:
    return [Judgment(r[f"{kind}_verdict"], r[f"{kind}_score"], r.get("judge") or "") for r in rows
            if r.get(f"{kind}_verdict")]


def _language(rows: Sequence[Mapping[str, Any]]) -> str:
    return Counter(r["language"] or "en" for r in rows).most_common(1)[0][0]


def _counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    return {"n_items": len(rows), "n_input_error": sum(r["status"] == INPUT_ERROR for r in rows),
            "n_generation_error": sum(r["status"] == GENERATION_ERROR for r in rows)}


def _reference(row: Mapping[str, Any]) -> str:
    refs = json.loads(row["references_json"] or "[]")
    return refs[0] if refs else ""


def _qa_control(rows: Sequence[Mapping[str, Any]], kind: str, bootstrap: int, seed: int) -> dict[str, Any]:
    """Accuracy vs control over the items judged validly both ways (the control is the same answer judged
    against another item's references)."""
    pairs = [(r[f"{kind}_score"], r[f"{kind}_control_score"]) for r in rows
             if r.get(f"{kind}_verdict") in VALID and r.get(f"{kind}_control_verdict") in VALID
             and r.get(f"{kind}_score") is not None and r.get(f"{kind}_control_score") is not None]
    return accuracy_vs_control([p[0] for p in pairs], [p[1] for p in pairs], bootstrap=bootstrap, seed=seed)


def summarize(items: pa.Table, bootstrap: int = 0, seed: int = 0) -> dict[str, Any]:
    """Per-task scores of one run from its item table (pure: the same table always gives the same numbers)."""
    rows = sorted(items.to_pylist(), key=lambda r: r["item_id"])
    by_task: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in rows:
        by_task.setdefault(r["task"], {}).setdefault(r["subset"], []).append(r)
    out: dict[str, Any] = {"audio_qa": {}, "asr": {}, "tts": {}}
    for subset, group in sorted(by_task.get("audio_qa", {}).items()):
        speech, text = _judgments(group, "speech"), _judgments(group, "text")
        out["audio_qa"][subset] = {"speech": {**aggregate(speech), "control": _qa_control(group, "speech", bootstrap,
                                                                                           seed)},
                                   "text": {**aggregate(text), "control": _qa_control(group, "text", bootstrap, seed)},
                                   "metric": group[0]["metric"] or "accuracy", **_counts(group)}
    for subset, group in sorted(by_task.get("asr", {}).items()):
        scored = [r for r in group if r["status"] != INPUT_ERROR]
        refs, hyps = [_reference(r) for r in scored], [r.get("answer_text") or "" for r in scored]
        rate = error_rate(refs, hyps, _language(group), bootstrap=bootstrap, seed=seed)
        out["asr"][subset] = {**rate.as_dict(), "language": _language(group), **_counts(group),
                              "control": error_rate_vs_control(refs, hyps, _language(group), bootstrap=bootstrap,
                                                               seed=seed)}
    for subset, group in sorted(by_task.get("tts", {}).items()):
        scored = [r for r in group if r["status"] != INPUT_ERROR and not r.get("asr_error")]
        refs, hyps = [_reference(r) for r in scored], [r.get("speech_transcript") or "" for r in scored]
        rate = error_rate(refs, hyps, _language(group), bootstrap=bootstrap, seed=seed)
        asr_models = sorted({r["asr_model"] for r in scored if r.get("asr_model")})
        out["tts"][subset] = {**rate.as_dict(), "language": _language(group), "asr_models": asr_models,
                              "n_no_transcript": sum(bool(r.get("asr_error")) for r in group), **_counts(group),
                              "top_code_share": _mean_of(r.get("top_code_share") for r in scored),
                              "control": error_rate_vs_control(refs, hyps, _language(group), bootstrap=bootstrap,
                                                               seed=seed)}
    generated = [r for r in rows if r["status"] not in (INPUT_ERROR, GENERATION_ERROR)]
    gen_s = sum(r.get("gen_seconds") or 0.0 for r in generated)
    tokens = sum(r.get("n_audio_tokens") or 0 for r in generated)
    out["generation"] = {
        "items": len(rows), "generated": len(generated), "seconds": gen_s, "audio_tokens": tokens,
        "audio_tokens_per_s": tokens / gen_s if gen_s else None,
        "audio_seconds": sum(r.get("audio_seconds") or 0.0 for r in generated),
        "finish_reasons": dict(sorted(Counter(r.get("finish_reason") or "" for r in generated).items())),
    }
    return out


def _mean_of(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are present, None when none is (e.g. answers without speech)."""
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


# -------------------------------------------------------------------------------------------- pipeline

def _blocks(table: pa.Table, rows_per_block: int) -> list[pa.Table]:
    """Small explicit blocks, so an actor pool gets work in parallel even for a few dozen items."""
    step = max(1, rows_per_block)
    return [table.slice(i, step) for i in range(0, table.num_rows, step)] or [table]


def run_pipeline(items: pa.Table, spec: RunSpec, eval_cfg: Mapping[str, Any], codec_factory: Callable[[], Any],
                 run_dir: Path, text_tokenizer: str) -> pa.Table:
    """The three stages over one run's items; writes and returns the item table."""
    import ray.data
    from ray.data import ActorPoolStrategy

    from pipelines.eval.stages import GenerateStage, JudgeStage, TranscribeStage

    stages = eval_cfg.get("stages") or {}
    gen_cfg = dict(stages.get("generate") or {})
    gen = StageResources.from_mapping(gen_cfg, extra=("device", "dtype", "torch_threads"))
    asr = StageResources.from_mapping(stages.get("transcribe"))
    jud = StageResources.from_mapping(stages.get("judge"))
    tasks = set(items.column("task").to_pylist())
    n = items.num_rows
    items = items.append_column("run_id", pa.array([spec.run_id] * n, pa.string())).append_column(
        "system", pa.array([system_label(spec.system)] * n, pa.string()))
    ds = ray.data.from_arrow(_blocks(items, gen.batch_size))
    ds = ds.map_batches(
        GenerateStage, batch_format="pyarrow", batch_size=gen.batch_size, num_cpus=gen.num_cpus,
        num_gpus=gen.num_gpus, compute=ActorPoolStrategy(size=gen.pool_size),
        fn_constructor_kwargs={"checkpoint": str(spec.checkpoint), "codec_factory": codec_factory,
                               "sampler": spec.sampler, "audio_dir": str(run_dir / AUDIO_DIR),
                               "device": gen_cfg.get("device", "cpu"), "dtype": gen_cfg.get("dtype", "auto"),
                               "text_tokenizer": text_tokenizer, "torch_threads": gen_cfg.get("torch_threads")})
    if tasks & {"audio_qa", "tts"}:
        ds = ds.map_batches(TranscribeStage, batch_format="pyarrow", batch_size=asr.batch_size,
                            num_cpus=asr.num_cpus, num_gpus=asr.num_gpus, compute=ActorPoolStrategy(size=asr.pool_size),
                            fn_constructor_kwargs={"asr_models": dict(eval_cfg.get("asr_models") or {})})
    if "audio_qa" in tasks:
        ds = ds.map_batches(JudgeStage, batch_format="pyarrow", batch_size=jud.batch_size, num_cpus=jud.num_cpus,
                            num_gpus=jud.num_gpus, compute=ActorPoolStrategy(size=jud.pool_size),
                            fn_constructor_kwargs={"judge": dict(eval_cfg.get("judge") or {"kind": "rule"})})
    items_dir = run_dir / ITEMS_DIR
    shutil.rmtree(items_dir, ignore_errors=True)
    ds.write_parquet(str(items_dir))
    return pq.read_table(items_dir)


def load_eval_items(eval_cfg: Mapping[str, Any]) -> tuple[pa.Table, dict[str, int]]:
    """Every configured task's items in one table (tasks without sources are skipped)."""
    tables, dropped = [], {}
    for task, task_cfg in (eval_cfg.get("tasks") or {}).items():
        if task not in TASKS:
            raise EvalConfigError(f"eval.tasks.{task}: unknown task (known: {', '.join(TASKS)})")
        if not task_cfg or not task_cfg.get("sources"):
            continue
        table, d = load_items(task, task_cfg["sources"], task_cfg.get("max_items"))
        tables.append(table)
        dropped.update({f"{task}/{k}": v for k, v in d.items()})
    if not tables or sum(t.num_rows for t in tables) == 0:
        raise EvalConfigError("no evaluation items: configure eval.tasks.{audio_qa,asr,tts}.sources (and run "
                              "python workflows/prepare_data.py for the embedded sets)")
    return with_control_references(pa.concat_tables(tables), int(eval_cfg.get("seed", 0))), dropped


def with_control_references(items: pa.Table, seed: int) -> pa.Table:
    """Add `control_references_json`: each item gets the references of another item of its (task, subset)
    (metrics.derangement, in item-id order), so the judge can score every answer against a wrong reference
    too (the control; pipelines/eval/scoring.py). A set of one item has no control ("[]")."""
    rows = items.select(["item_id", "task", "subset", "references_json"]).to_pylist()
    groups: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((r["task"], r["subset"]), []).append(i)
    control = ["[]"] * len(rows)
    for members in groups.values():
        if len(members) < 2:
            continue
        members = sorted(members, key=lambda i: rows[i]["item_id"])
        for i, j in zip(members, derangement(len(members), seed), strict=True):
            control[i] = rows[members[j]]["references_json"] or "[]"
    return items.append_column("control_references_json", pa.array(control, pa.string()))


def evaluate_run(spec: RunSpec, cfg: Mapping[str, Any], items: pa.Table, codec_factory: Callable[[], Any],
                 eval_dir: Path, force: bool = False) -> dict[str, Any]:
    """One grid cell: pipeline + summary -> results.json (skipped when up to date)."""
    eval_cfg = cfg["eval"]
    run_dir = eval_dir / spec.run_id
    fp = fingerprint(spec, eval_cfg)
    results_path = run_dir / RESULTS_FILE
    if not force and results_path.is_file():
        previous = json.loads(results_path.read_text())
        if previous.get("fingerprint") == fp:
            print(f"evaluate: {spec.run_id} is up to date ({results_path})")
            return previous
    t0 = time.perf_counter()
    text_tokenizer = str((cfg.get("data") or {}).get("text_tokenizer") or "bundled:qwen")
    table = run_pipeline(items, spec, eval_cfg, codec_factory, run_dir, text_tokenizer)
    results = {
        "run_id": spec.run_id, "system": spec.system, "checkpoint": str(spec.checkpoint), "sampler": spec.sampler,
        "decode": spec.sampler["decode"],
        "fingerprint": fp, "judge": build_judge(dict(eval_cfg.get("judge") or {"kind": "rule"})).name,
        "asr_models": {k: (v or {}).get("model") for k, v in (eval_cfg.get("asr_models") or {}).items()},
        **summarize(table, int(eval_cfg.get("bootstrap", 0)), int(eval_cfg.get("seed", 0))),
        "wall_seconds": time.perf_counter() - t0, "items_dir": str(run_dir / ITEMS_DIR),
    }
    atomic_write_text(results_path, json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
    return results


def default_codec_factory(codec_cfg: Mapping[str, Any]) -> Callable[[], Any]:
    from tokenization.codecs import build_codec

    return functools.partial(build_codec, dict(codec_cfg))


def run_evaluation(cfg: Mapping[str, Any], codec_factory: Callable[[], Any] | None = None) -> dict[str, Any]:
    """The whole sweep for a composed root config (plain dict): every grid run, then table.json + table.md.

    `codec_factory` builds the codec inside the generate actors (default: `build_codec(cfg.codec)`)."""
    if not cfg.get("eval"):
        raise EvalConfigError("no eval config: compose an eval group (eval=embedded or eval=production)")
    eval_dir = Path(cfg["paths"]["eval"]).expanduser().absolute()
    specs = build_grid(cfg)
    items, dropped = load_eval_items(cfg["eval"])
    factory = codec_factory or default_codec_factory(cfg.get("codec") or {})
    ray_cfg = cfg["eval"].get("ray") or {}
    started = ensure_ray(ray_cfg.get("address"), int(ray_cfg.get("num_cpus", 4)),
                         float(ray_cfg.get("object_store_gb", 1.0)))
    try:
        results = [evaluate_run(s, cfg, items, factory, eval_dir, bool(cfg.get("force", False))) for s in specs]
    finally:
        if started:
            import ray

            ray.shutdown()
    table = build_table(results)
    table["comparisons"] = compare_runs(results, system_label, int(cfg["eval"].get("bootstrap", 0)),
                                        int(cfg["eval"].get("seed", 0)))
    table["meta"] = {"judge": ", ".join(sorted({r["judge"] for r in results})),
                     "asr_models": json.dumps(results[0]["asr_models"], sort_keys=True) if results else "",
                     "items": items.num_rows, "dropped_by_readers": sum(dropped.values())}
    eval_dir.mkdir(parents=True, exist_ok=True)
    (eval_dir / TABLE_JSON).write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    (eval_dir / TABLE_MD).write_text(table_markdown(table) + "\n")
    for r in results:
        log.info("evaluate: %s [%s] -> %s", system_label(r["system"]), r["run_id"],
                 eval_dir / r["run_id"] / RESULTS_FILE)
    log.info("evaluate: table -> %s", eval_dir / TABLE_MD, extra=CONSOLE)
    print(table_markdown(table))  # the stage's result, on stdout (and in the run's log file)
    return table


__all__ = ["EvalConfigError", "RunSpec", "StageResources", "build_grid", "evaluate_run", "fingerprint",
           "load_eval_items", "resolve_checkpoint", "resolve_decode", "run_evaluation", "run_pipeline", "sampler_slug",
           "summarize"]
