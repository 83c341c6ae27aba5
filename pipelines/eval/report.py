"""The run report: Markdown + static HTML (+ PNG plots) built from result files only, never from printed text.

Inputs, each optional (a missing one gives a section that says "not available" and where it looked):
    data        {paths.shards}/manifest.json (counts per task and source, vocabulary identity) and DuckDB over the
                shards (sequence-length quantiles per task)
    training    metrics*.jsonl under {paths.root}/train and {paths.checkpoints} (the trainer's per-step records);
                every numeric field with "loss" in its name is plotted, and tokens/s
    evaluation  {paths.eval}/table.json (pipelines/eval/table.py) and the per-item Parquet files for examples
    sweep       <sweep.root>/eval/table.json of workflows/sweep.py, the Table-1 sweep (a section only when it exists)
    speed       runs/bench/*.json (name, config, machine, numbers with units)
Outputs: {paths.report}/report.md, report.html and plots/*.png.

Both renderings come from one small block list (headings, paragraphs, tables, images), so the Markdown and the
HTML always say the same thing.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.eval.compare import COMPARISON_HEADER, comparison_rows
from pipelines.eval.table import format_value

ITEMS_DIR = "items"  # pipelines/eval/jobs.py writes each run's per-item Parquet to {paths.eval}/<run_id>/items/

NOT_AVAILABLE = "not available"
LOSS_HINT = "loss"
THROUGHPUT_KEYS = ("tokens_per_s", "tokens_per_sec", "tok_per_s", "throughput_tokens_per_s")
STEP_KEYS = ("step", "global_step", "optimizer_step")
VALIDATION_PREFIX = "val/"  # held-out loss per task (ttt_model/training/validation.py)
CONTROL_SUFFIX = "_control"  # the same held-out targets after another sample's prompt


# ---------------------------------------------------------------------------------------------- blocks

@dataclass(frozen=True)
class Link:
    text: str
    href: str


@dataclass(frozen=True)
class Audio:
    """A playable audio file: an <audio> player in HTML, a link in Markdown."""

    href: str
    text: str = "audio"


Cell = str | Link | Audio


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]


@dataclass(frozen=True)
class Image:
    path: str  # relative to the report directory
    alt: str


Block = Heading | Para | Table | Image


def _md_cell(c: Cell) -> str:
    text = f"[{c.text}]({c.href})" if isinstance(c, Link | Audio) else c
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Iterable[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append("#" * b.level + " " + b.text)
        elif isinstance(b, Para):
            out.append(b.text)
        elif isinstance(b, Table):
            out.append("\n".join(["| " + " | ".join(_md_cell(h) for h in b.header) + " |",
                                  "|" + "---|" * len(b.header),
                                  *("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows)]))
        else:
            out.append(f"![{b.alt}]({b.path})")
    return "\n\n".join(out) + "\n"


def _html_cell(c: Cell) -> str:
    if isinstance(c, Link):
        return f'<a href="{html.escape(c.href, quote=True)}">{html.escape(c.text)}</a>'
    if isinstance(c, Audio):
        return f'<audio controls preload="none" src="{html.escape(c.href, quote=True)}"></audio>'
    return html.escape(c)


def render_html(blocks: Iterable[Block], title: str) -> str:
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            body.append(f"<p>{html.escape(b.text)}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        else:
            body.append(f'<p><img src="{html.escape(b.path, quote=True)}" alt="{html.escape(b.alt)}"></p>')
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def load_json(path: Path, what: str) -> tuple[Any, Para | None]:
    """(the parsed file, None), or (None, a paragraph saying `what` is not available and why): a report is built
    from whatever result files exist, so a missing or unreadable one becomes a note, never a crash."""
    try:
        return json.loads(path.read_text()), None
    except (OSError, ValueError) as e:
        return None, Para(f"{what} {NOT_AVAILABLE}: {path} ({e.__class__.__name__}).")


# ------------------------------------------------------------------------------------------------ data

def data_section(shards_dir: Path) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Data")]
    manifest_path = shards_dir / "manifest.json"
    manifest, missing = load_json(manifest_path, "Shard summary")
    if missing:
        return [*blocks, missing]
    counts = manifest.get("counts", {})
    total = counts.get("total", {})
    codec = manifest.get("codec", {}) if isinstance(manifest.get("codec"), Mapping) else {}
    facts = [f"{total.get('written_samples', '–')} samples", f"{total.get('tokens', '–')} tokens",
             f"{_fmt(total.get('audio_hours'))} h of audio", f"{total.get('quarantined', '–')} quarantined"]
    if codec:
        facts.append(f"codec {codec.get('name', '?')} {codec.get('version', '')} ({codec.get('codebook_size', '?')} "
                     f"codes, {_fmt(codec.get('token_rate'))} codes/s)")
    if manifest.get("vocab_size"):
        facts.append(f"unified vocabulary of {manifest['vocab_size']} ids ({manifest.get('layout', '?')} layout)")
    blocks.append(Para(f"From {manifest_path}: " + ", ".join(facts) + "."))
    tasks = counts.get("tasks", {})
    if tasks:
        blocks.append(Table(("task", "samples", "tokens", "audio h"),
                            tuple((t, _fmt(v.get("samples")), _fmt(v.get("tokens")), _fmt(v.get("audio_hours")))
                                  for t, v in sorted(tasks.items()))))
    sources = counts.get("sources", {})
    if sources:
        blocks.append(Table(("source", "read", "records", "samples", "quarantined", "dropped", "audio h", "tokens"),
                            tuple((s, _fmt(c.get("read")), _fmt(c.get("written_records")),
                                   _fmt(c.get("written_samples")), _fmt(c.get("quarantined")),
                                   _fmt(sum((c.get("dropped") or {}).values())), _fmt(c.get("audio_hours")),
                                   _fmt(c.get("tokens"))) for s, c in sorted(sources.items()))))
    blocks.extend(_length_quantiles(shards_dir))
    return blocks


def _length_quantiles(shards_dir: Path) -> list[Block]:
    """Sequence lengths per task from the shards (DuckDB reads only the metadata columns)."""
    try:
        from pipelines.duck import connect

        with connect(shards_dir, threads=1) as con:
            rows = con.sql("SELECT task, count(*), quantile_cont(n_tokens, 0.5), quantile_cont(n_tokens, 0.95), "
                           "max(n_tokens), sum(n_audio_tokens) / sum(n_tokens) FROM samples GROUP BY task "
                           "ORDER BY task").fetchall()
    except Exception as e:  # any shard problem only costs this table, never the report
        return [Para(f"Sequence lengths {NOT_AVAILABLE}: {e.__class__.__name__}: {str(e)[:160]}")]
    return [Para("Sequence lengths (tokens) per task, from the Parquet shards:"),
            Table(("task", "samples", "p50", "p95", "max", "audio share"),
                  tuple((t, _fmt(n), _fmt(float(p50)), _fmt(float(p95)), _fmt(mx), f"{100 * float(share or 0):.1f}%")
                        for t, n, p50, p95, mx, share in rows))]


# -------------------------------------------------------------------------------------------- training

def find_metric_files(dirs: Sequence[Path]) -> list[Path]:
    """Every metrics*.jsonl under the given directories (missing directories are fine)."""
    found: set[Path] = set()
    for d in dirs:
        if d.is_dir():
            found.update(p for p in d.rglob("metrics*.jsonl") if p.is_file())
    return sorted(found)


def read_metrics(path: Path) -> tuple[list[dict[str, float]], int]:
    """Numeric fields of every JSON object line; (records, number of unreadable lines). A line being
    written while we read, or a stray non-JSON line, is skipped and counted rather than fatal."""
    records: list[dict[str, float]] = []
    bad = 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if not isinstance(obj, dict):
            bad += 1
            continue
        nums = {k: float(v) for k, v in _flatten(obj).items()
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))}
        if nums:
            records.append(nums)
    return records, bad


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def _step_of(record: Mapping[str, float], index: int) -> float:
    return next((record[k] for k in STEP_KEYS if k in record), float(index))


def _series(steps: Sequence[float], records: Sequence[Mapping[str, float]], key: str
            ) -> tuple[list[float], list[float]]:
    """(steps, values) of the records that have `key` (fields may appear only every N steps)."""
    pairs = [(s, r[key]) for s, r in zip(steps, records, strict=True) if key in r]
    return [s for s, _ in pairs], [v for _, v in pairs]


def _plot(path: Path, title: str, ylabel: str, series: Mapping[str, tuple[list[float], list[float]]],
          log_y: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    colours: dict[str, Any] = {}
    for name, (xs, ys) in series.items():
        base = name.removesuffix(CONTROL_SUFFIX)  # a control shares its loss's colour, dashed
        line, = ax.plot(xs, ys, label=name, linewidth=1.2, color=colours.get(base),
                        linestyle="--" if name.endswith(CONTROL_SUFFIX) else "-")
        colours.setdefault(base, line.get_color())
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if log_y and all(y > 0 for _, ys in series.values() for y in ys):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def training_section(metric_dirs: Sequence[Path], plots_dir: Path, report_dir: Path) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Training")]
    files = find_metric_files(metric_dirs)
    if not files:
        where = ", ".join(str(d) for d in metric_dirs)
        return [*blocks, Para(f"Training curves {NOT_AVAILABLE}: no metrics*.jsonl under {where}.")]
    for index, path in enumerate(files):
        records, bad = read_metrics(path)
        run = path.parent.name or path.stem
        blocks.append(Heading(3, f"Run {run}"))
        note = f" ({bad} unreadable lines skipped)" if bad else ""
        if not records:
            blocks.append(Para(f"{path}: no numeric records{note}."))
            continue
        blocks.append(Para(f"{len(records)} records from {path}{note}."))
        steps = [_step_of(r, i) for i, r in enumerate(records)]
        keys = sorted({k for r in records for k in r})
        loss_keys = [k for k in keys if LOSS_HINT in k.lower()]
        val_keys = [k for k in keys if k.startswith(VALIDATION_PREFIX)]
        speed_keys = [k for k in keys if k.split("/")[-1] in THROUGHPUT_KEYS]
        slug = f"run{index}_" + "".join(c if c.isalnum() else "_" for c in run)
        for kind, chosen, ylabel, log_y in (("losses", loss_keys, "loss", True),
                                            ("held-out losses", val_keys, "loss per target (held out)", True),
                                            ("throughput", speed_keys, "tokens / s", False)):
            if not chosen and kind == "held-out losses":
                continue  # validation off (train.validation)
            if not chosen:
                blocks.append(Para(f"{kind}: {NOT_AVAILABLE} (no such fields in {path.name})."))
                continue
            series = {k: _series(steps, records, k) for k in chosen}
            png = plots_dir / f"{slug}_{kind.replace(' ', '_')}.png"
            _plot(png, f"{run}: {kind}", ylabel, series, log_y)
            blocks.append(Image(os.path.relpath(png, report_dir), f"{run} {kind}"))
        gaps = conditioning_rows(next((r for r in reversed(records) if any(k in r for k in val_keys)), {}))
        if gaps:
            blocks.append(Para("Held-out loss at the last validation step with each sample's own prompt and with "
                               "another held-out sample's prompt (the same targets and noise; "
                               "ttt_model/training/validation.py). A model that ignores its input has a gap of 0."))
            blocks.append(Table(("task", "loss", "own prompt", "another sample's prompt", "gap"), gaps))
        last = records[-1]
        shown = [k for k in (*STEP_KEYS, *loss_keys, *speed_keys) if k in last]
        blocks.append(Table(("last record", *shown), (("value", *(_fmt(last[k]) for k in shown)),)))
    return blocks


def conditioning_rows(record: Mapping[str, float]) -> list[tuple[Cell, ...]]:
    """(task, loss, own prompt, another sample's prompt, gap) for every held-out loss with a control in one
    metrics record (val/<task>/<term> and val/<task>/<term>_control)."""
    rows: list[tuple[Cell, ...]] = []
    for key in sorted(record):
        control = record.get(key + CONTROL_SUFFIX)
        if key.startswith(VALIDATION_PREFIX) and control is not None:
            task, term = key[len(VALIDATION_PREFIX):].rsplit("/", 1)
            own = record[key]
            rows.append((task, term, f"{own:.3f}", f"{control:.3f}", f"{control - own:+.3f}"))
    return rows


# ------------------------------------------------------------------------------------------ evaluation

def _interval(ci: Sequence[float] | None, scale: float) -> str:
    return f"[{ci[0] * scale:.1f}, {ci[1] * scale:.1f}]" if ci else "-"


def control_rows(results: Mapping[str, Any]) -> list[tuple[Cell, ...]]:
    """(set, n, score [95 % CI], control [95 % CI], score - control [95 % CI], verdict) for every score of one
    evaluated run that has a control (pipelines/eval/scoring.py compare_to_control). WER/CER in percent;
    QA scores as the judge gives them (accuracy in percent)."""
    found: list[tuple[str, float, Mapping[str, Any]]] = []
    for task in ("asr", "tts"):
        for subset, res in sorted((results.get(task) or {}).items()):
            if isinstance(res, Mapping) and res.get("control"):
                found.append((f"{task.upper()} {subset} ({res['control'].get('metric', 'wer').upper()})", 100.0,
                              res["control"]))
    for subset, res in sorted((results.get("audio_qa") or {}).items()):
        for kind in ("speech", "text"):
            control = ((res or {}).get(kind) or {}).get("control")
            if control:
                found.append((f"Audio-QA {subset} ({kind} answer)", 1.0, control))
    rows = []
    for name, scale, c in found:
        if c.get("score") is None:
            rows.append((name, str(c.get("n", 0)), "-", "-", "-", "no items"))
            continue
        verdict = "beats control" if c.get("beats_control") else "does not beat control"
        rows.append((name, str(c["n"]), f"{c['score'] * scale:.1f} {_interval(c.get('score_ci'), scale)}",
                     f"{c['control'] * scale:.1f} {_interval(c.get('control_ci'), scale)}",
                     f"{(c['score'] - c['control']) * scale:+.1f} {_interval(c.get('diff_ci'), scale)}", verdict))
    return rows


def learning_section(eval_dir: Path, level: int = 2,
                     title: str = "Learning: held-out scores beside their controls") -> list[Block]:
    """Does the model learn? Every held-out score beside its control (the same outputs scored against other
    items' references), with 95 % bootstrap intervals; one table per evaluated run."""
    blocks: list[Block] = [Heading(level, title)]
    files = sorted(eval_dir.glob("*/results.json")) if eval_dir.is_dir() else []
    if not files:
        return [*blocks, Para(f"Scores {NOT_AVAILABLE}: no results.json under {eval_dir}.")]
    blocks.append(Para("Control: the same answers scored against the references of other items of the set (a "
                       "seeded derangement). A model that ignores its input scores like its control. Verdict "
                       "'beats control' only when the score's 95 % interval lies entirely on the better side of "
                       "the control's (lower for WER/CER, higher for accuracy). Intervals: paired bootstrap over "
                       "items."))
    for path in files:
        results, missing = load_json(path, "Evaluation results")
        if missing:
            blocks.append(missing)
            continue
        rows = control_rows(results)
        blocks.append(Heading(level + 1, f"{results.get('system', '?')} ({results.get('run_id', path.parent.name)})"))
        blocks.append(Table(("set", "n", "score [95 % CI]", "control [95 % CI]", "score - control [95 % CI]",
                             "verdict"), tuple(rows)) if rows else Para("No score with a control in this run."))
        shares = [f"{subset} {r['top_code_share']:.2f}" for subset, r in sorted((results.get("tts") or {}).items())
                  if r.get("top_code_share") is not None]
        if shares:
            blocks.append(Para("TTS answers, mean share of a span taken by its commonest code (real speech of the "
                               "embedded codec ~0.05; near 1 = the span collapsed onto one repeated code): "
                               + ", ".join(shares) + "."))
    return blocks


def evaluation_section(eval_dir: Path) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Evaluation (paper Table 1 shape)")]
    table_path = eval_dir / "table.json"
    table, missing = load_json(table_path, "Evaluation table")
    if missing:
        return [*blocks, missing]
    return [*blocks, *table_blocks(eval_dir, table)]


def sweep_section(sweep_eval_dir: Path) -> list[Block]:
    """The Table-1 sweep of workflows/sweep.py (every objective variant trained and evaluated the same way), when
    this run has one; no section otherwise, because most runs never sweep."""
    table_path = sweep_eval_dir / "table.json"
    if not table_path.exists():
        return []
    blocks: list[Block] = [Heading(2, "Sweep (Table 1)")]
    table, missing = load_json(table_path, "Sweep table")
    if missing:
        return [*blocks, missing]
    blocks.append(Para(f"From {table_path}: each objective variant trained on this run's shards with the same "
                       "settings (python workflows/sweep.py), then evaluated on the same items."))
    return [*blocks, *table_blocks(sweep_eval_dir, table),
            *learning_section(sweep_eval_dir, 3, "Each variant beside its controls")]


def table_blocks(eval_dir: Path, table: Mapping[str, Any]) -> list[Block]:
    """One evaluation table (pipelines/eval/table.py) with its metadata, run details and per-run counts."""
    blocks: list[Block] = []
    cols = table.get("columns", [])
    rows = table.get("rows", [])
    blocks.append(Para("Audio-QA: (S) scores the transcribed speech answer, (T) the text answer; accuracy in %, "
                       "AlpacaEval as the judge's 1-10 rating x 10. ASR/TTS: corpus-level error rates in % "
                       "(lower is better). – = not evaluated."))
    blocks.append(Table(("System", *(f"{c['group']}: {c['label']}" for c in cols)),
                        tuple((r["label"], *(format_value(r["values"].get(c["key"])) for c in cols)) for r in rows)))
    if table.get("comparisons"):
        blocks.append(Para("Paired comparisons of systems on the same held-out items: the 95 % interval of the "
                           "difference comes from resampling items for both systems at once; a system is named "
                           "better only when that interval excludes 0 (pipelines/eval/compare.py)."))
        blocks.append(Table(COMPARISON_HEADER, tuple(comparison_rows(table["comparisons"]))))
    meta = table.get("meta", {})
    if meta:
        blocks.append(Para("; ".join(f"{k}: {_fmt(v)}" for k, v in sorted(meta.items()))))
    details = [(r["label"], r.get("run_id", ""), r.get("checkpoint", ""), json.dumps(r.get("sampler", {}),
                                                                                      sort_keys=True))
               for r in rows]
    if details:
        blocks.append(Table(("System", "run", "checkpoint", "sampler"), tuple(details)))
    counts = _count_rows(eval_dir, [r.get("run_id", "") for r in rows])
    if counts:
        blocks.append(Para("What each number rests on (from each run's results.json): items, broken inputs (left out), "
                           "failed generations (counted as empty answers), judgments (valid; invalid = the judge's "
                           "output did not parse; not judged = judge unreachable, no transcript, or a subset the "
                           "judge cannot score), and edit counts with the bootstrap 95% interval of the error rate."))
        blocks.append(Table(("run", "set", "items", "input errors", "generation errors",
                             "speech valid / invalid / not judged", "text valid / invalid / not judged", "S / D / I",
                             "95% CI"), tuple(counts)))
    return blocks


def _count_rows(eval_dir: Path, run_ids: Sequence[str]) -> list[tuple[Cell, ...]]:
    out: list[tuple[Cell, ...]] = []
    for run_id in run_ids:
        try:
            results = json.loads((eval_dir / run_id / "results.json").read_text())
        except (OSError, ValueError):
            continue
        for subset, r in sorted(results.get("audio_qa", {}).items()):
            judged = [f"{r[k].get('n_valid', 0)} / {r[k].get('n_invalid', 0)} / "
                      f"{r[k].get('n_error', 0) + r[k].get('n_unsupported', 0)}" for k in ("speech", "text")]
            out.append((run_id, f"audio_qa/{subset}", _fmt(r.get("n_items")), _fmt(r.get("n_input_error")),
                        _fmt(r.get("n_generation_error")), *judged, "–", "–"))
        for task in ("asr", "tts"):
            for subset, r in sorted(results.get(task, {}).items()):
                ci = (f"{100 * r['ci_low']:.2f}–{100 * r['ci_high']:.2f}" if r.get("ci_low") is not None
                      and r.get("ci_high") is not None else "–")
                out.append((run_id, f"{task}/{subset}", _fmt(r.get("n_items")), _fmt(r.get("n_input_error")),
                            _fmt(r.get("n_generation_error")), "–", "–",
                            f"{r.get('substitutions')} / {r.get('deletions')} / {r.get('insertions')}", ci))
    return out


_EXAMPLE_QUERIES = {
    # (heading, SQL columns, header): what a reader needs to judge one answer by eye and by ear
    "audio_qa": ("Spoken QA", "run_id, subset, audio_in_path, question, references_json, answer_text, "
                 "speech_transcript, speech_verdict || ' / ' || text_verdict, audio_path",
                 ("run", "subset", "question audio", "question", "references", "text answer", "speech transcript",
                  "speech / text verdict", "answer audio")),
    "asr": ("ASR", "run_id, subset, audio_in_path, references_json, answer_text",
            ("run", "set", "input audio", "reference", "model transcript")),
    "tts": ("TTS", "run_id, subset, question, speech_transcript, audio_path",
            ("run", "set", "text", "Whisper transcript of the speech", "model speech")),
}


def _audio_cell(path: str | None, report_dir: Path) -> Cell:
    return Audio(os.path.relpath(path, report_dir)) if path else "–"


def examples_section(eval_dir: Path, report_dir: Path, n: int) -> list[Block]:
    """A few evaluated items per task (spoken QA, ASR, TTS) with their inputs, outputs and judgments, and the
    audio on both sides as players in the HTML page (links in Markdown): listening is how a user judges speech."""
    blocks: list[Block] = [Heading(2, "Examples")]
    files = sorted(eval_dir.glob(f"*/{ITEMS_DIR}/*.parquet"))
    if not files:
        return [*blocks, Para(f"Examples {NOT_AVAILABLE}: no evaluated items under {eval_dir}.")]
    from pipelines.duck import sql_literal

    glob = sql_literal(eval_dir / "*" / ITEMS_DIR / "*.parquet")
    for task, (title, columns, header) in _EXAMPLE_QUERIES.items():
        try:
            import duckdb

            with duckdb.connect() as con:
                rows = con.sql(f"SELECT {columns} FROM read_parquet({glob}, union_by_name=true) "
                               f"WHERE task = {sql_literal(task)} AND status = 'ok' "
                               f"ORDER BY run_id, subset, item_id LIMIT {int(n)}").fetchall()
        except Exception as e:  # a schema from another version of the job: skip the examples, keep the report
            blocks.append(Para(f"{title} examples {NOT_AVAILABLE}: {e.__class__.__name__}: {str(e)[:160]}"))
            continue
        if not rows:
            continue
        blocks.append(Heading(3, title))
        blocks.append(Table(header, tuple(_example_row(task, row, report_dir) for row in rows)))
    return blocks


def _example_row(task: str, row: tuple[Any, ...], report_dir: Path) -> tuple[Cell, ...]:
    def refs(value: str | None) -> str:
        return ", ".join(json.loads(value or "[]"))[:120]

    if task == "audio_qa":
        run_id, subset, audio_in, question, references, text, transcript, verdicts, audio = row
        return (run_id, subset, _audio_cell(audio_in, report_dir), question or "", refs(references), text or "",
                transcript or "", verdicts or "", _audio_cell(audio, report_dir))
    if task == "asr":
        run_id, subset, audio_in, references, text = row
        return run_id, subset, _audio_cell(audio_in, report_dir), refs(references), text or ""
    run_id, subset, text, transcript, audio = row
    return run_id, subset, text or "", transcript or "", _audio_cell(audio, report_dir)


# ----------------------------------------------------------------------------------------------- speed

def _numeric_leaves(obj: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(path, value, unit) for every number; `{value, unit}` objects and `<name>_<unit>` keys both give units."""
    out: list[tuple[str, Any, str]] = []
    if isinstance(obj, Mapping):
        if "value" in obj and isinstance(obj["value"], int | float) and not isinstance(obj["value"], bool):
            return [(prefix, obj["value"], str(obj.get("unit", "")))]
        for k, v in obj.items():
            out.extend(_numeric_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list) and len(obj) <= 16:
        for i, v in enumerate(obj):
            out.extend(_numeric_leaves(v, f"{prefix}[{i}]"))
    elif isinstance(obj, int | float) and not isinstance(obj, bool):
        out.append((prefix, obj, ""))
    return out


def bench_section(bench_dir: Path) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Speed (benchmarks)")]
    files = sorted(bench_dir.glob("*.json")) if bench_dir.is_dir() else []
    if not files:
        return [*blocks, Para(f"Benchmark numbers {NOT_AVAILABLE}: no *.json under {bench_dir}.")]
    for path in files:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            blocks.append(Para(f"{path.name}: unreadable ({e.__class__.__name__})."))
            continue
        name = doc.get("name", path.stem) if isinstance(doc, Mapping) else path.stem
        blocks.append(Heading(3, f"{name} ({path.name})"))
        if isinstance(doc, Mapping) and doc.get("machine"):
            machine = doc["machine"]
            blocks.append(Para("machine: " + (json.dumps(machine, sort_keys=True) if isinstance(machine, Mapping)
                                              else str(machine))))
        section = doc.get("numbers", doc) if isinstance(doc, Mapping) else doc
        leaves = _numeric_leaves(section)
        if leaves:
            blocks.append(Table(("measure", "value", "unit"), tuple((k, _fmt(v), u) for k, v, u in leaves)))
        else:
            blocks.append(Para("no numbers in this file."))
    return blocks


# ------------------------------------------------------------------------------------------------ main

@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    plots: tuple[Path, ...]


def build_report(paths: Mapping[str, Any], bench_dir: str | Path = "runs/bench", n_examples: int = 5,
                 title: str = "TtT run report", sweep_eval_dir: str | Path | None = None) -> ReportFiles:
    """Write report.md, report.html and plots under `paths.report` from the result files under `paths`
    (the composed `paths` config group: root, shards, checkpoints, eval, report). `sweep_eval_dir`: the eval
    directory of workflows/sweep.py (`<sweep.root>/eval`; default `<paths.root>/sweep/eval`, sweep.root's default)."""
    root = Path(paths["root"])
    report_dir = Path(paths.get("report") or root / "report")
    plots_dir = report_dir / "plots"
    metric_dirs = [root / "train", Path(paths.get("checkpoints") or root / "checkpoints")]
    eval_dir = Path(paths.get("eval") or root / "eval")
    if plots_dir.is_dir():  # plots of runs that no longer exist must not linger in the report directory
        for old in plots_dir.glob("*.png"):
            old.unlink()
    blocks: list[Block] = [Heading(1, title), Para(f"Built from the result files under {root}.")]
    blocks += data_section(Path(paths.get("shards") or root / "shards"))
    blocks += training_section(metric_dirs, plots_dir, report_dir)
    blocks += learning_section(eval_dir)
    blocks += evaluation_section(eval_dir)
    blocks += sweep_section(Path(sweep_eval_dir) if sweep_eval_dir is not None else root / "sweep" / "eval")
    blocks += bench_section(Path(bench_dir))
    blocks += examples_section(eval_dir, report_dir, n_examples)
    report_dir.mkdir(parents=True, exist_ok=True)
    md, page = report_dir / "report.md", report_dir / "report.html"
    md.write_text(render_markdown(blocks))
    page.write_text(render_html(blocks, title))
    plots = tuple(sorted(plots_dir.glob("*.png"))) if plots_dir.is_dir() else ()
    return ReportFiles(md, page, plots)
