"""The report reads result files only, renders the same blocks as Markdown and HTML, plots training curves, shapes
the evaluation like the paper's Table 1, and degrades to "not available" sections when inputs are missing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.eval.report import Link, Para, Table, build_report, read_metrics, render_html, render_markdown
from pipelines.eval.table import build_table, table_markdown
from tokenization.audio import write_audio
from tokenization.sequence import SPAN_ARROW_TYPE


def result(system: str, run_id: str, llama_s: float, asr_rate: float | None, steps: int = 10) -> dict:
    return {
        "run_id": run_id, "system": system, "checkpoint": f"ckpt/{system}", "sampler": {"steps_per_block": steps,
                                                                                         "block_length": 32},
        "audio_qa": {"llama_questions": {"speech": {"score": llama_s, "n": 4}, "text": {"score": 50.0, "n": 4}},
                     "alpaca_eval": {"speech": {"score": None}, "text": {"score": 61.0}}},
        "asr": {} if asr_rate is None else {"aishell1_test": {"metric": "cer", "rate": asr_rate}},
        "tts": {"tts_en": {"metric": "wer", "rate": 0.25}},
    }


def test_table_rows_in_paper_order_and_values() -> None:
    table = build_table([result("ttt_no_sst", "r4", 10.2, 0.2), result("ttt", "r3", 34.68, 0.1365),
                         result("ar_baseline", "r1", 10.0, None), result("my_variant", "r9", 1.0, None)])
    assert [r["label"] for r in table["rows"]] == ["AR baseline", "TtT", "TtT w/o SST", "my_variant"]
    keys = [c["key"] for c in table["columns"]]
    assert keys == ["audio_qa/llama_questions/speech", "audio_qa/llama_questions/text", "audio_qa/alpaca_eval/speech",
                    "audio_qa/alpaca_eval/text", "asr/aishell1_test", "tts/tts_en"]
    ttt = table["rows"][1]["values"]
    assert ttt["asr/aishell1_test"] == pytest.approx(13.65) and ttt["audio_qa/alpaca_eval/speech"] is None
    assert table["rows"][0]["values"]["asr/aishell1_test"] is None
    md = table_markdown(table)
    assert "| TtT | 34.68 | 50.00 | – | 61.00 | 13.65 | 25.00 |" in md
    assert "ASR: aishell1_test CER" in md.splitlines()[0]


def test_table_labels_sampler_settings_when_a_system_has_several() -> None:
    table = build_table([result("ttt", "a", 1.0, None, steps=10), result("ttt", "b", 2.0, None, steps=4)])
    assert [r["label"] for r in table["rows"]] == ["TtT (steps 10, block 32)", "TtT (steps 4, block 32)"]


def test_renderers_escape_and_link() -> None:
    blocks = [Para("a < b"), Table(("x|y", "audio"), (("1|2", Link("play", "../eval/a b.wav")),))]
    md = render_markdown(blocks)
    assert "x\\|y" in md and "[play](../eval/a b.wav)" in md
    page = render_html(blocks, "t")
    assert "a &lt; b" in page and '<a href="../eval/a b.wav">play</a>' in page


def test_read_metrics_skips_broken_lines(tmp_path: Path) -> None:
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"step": 1, "loss": {"ar": 2.0}, "note": "x"}\n{"step": 2, "loss": \n[1, 2]\n\n{"step": 3}\n')
    records, bad = read_metrics(f)
    assert records == [{"step": 1.0, "loss/ar": 2.0}, {"step": 3.0}] and bad == 2


def make_run(root: Path) -> Path:
    """A run directory with every input the report reads, the way the jobs write them."""
    shards = root / "shards"
    (shards / "parquet").mkdir(parents=True)
    (shards / "quarantine").mkdir()
    pq.write_table(pa.table({
        "sample_id": ["a", "b", "c"], "task": ["asr", "asr", "tts"], "source": ["ls"] * 3,
        "n_tokens": pa.array([100, 300, 50], pa.int32()), "n_audio_tokens": pa.array([80, 250, 40], pa.int32()),
        "spans": pa.array([[], [], []], pa.list_(SPAN_ARROW_TYPE)),
    }), shards / "parquet" / "part-00000-of-00001.parquet")
    quarantine = pa.table({"source": pa.array([], pa.string())})
    pq.write_table(quarantine, shards / "quarantine" / "part-00000-of-00001.parquet")
    (shards / "manifest.json").write_text(json.dumps({
        "codec": {"name": "embedded", "version": "1", "codebook_size": 512, "token_rate": 25.0},
        "vocab_size": 152210, "layout": "compact",
        "counts": {"total": {"written_samples": 3, "tokens": 450, "audio_hours": 0.01, "quarantined": 1},
                   "tasks": {"asr": {"samples": 2, "tokens": 400, "audio_hours": 0.008}},
                   "sources": {"ls": {"read": 4, "written_records": 3, "written_samples": 3, "quarantined": 1,
                                      "dropped": {}, "audio_hours": 0.01, "tokens": 450}}}}))
    train = root / "train" / "ttt-small"
    train.mkdir(parents=True)
    val = {10: {"val/tts/diffusion": 7.9, "val/tts/diffusion_control": 8.0},
           20: {"val/tts/diffusion": 6.25, "val/tts/diffusion_control": 7.5, "val/asr/ar": 2.0}}
    lines = [json.dumps({"step": s, "loss": {"ar": 3.0 / s, "diffusion": 5.0 / s}, "tokens_per_s": 900.0 + s,
                         **val.get(s, {})}) for s in range(1, 21)]
    (train / "metrics.jsonl").write_text("\n".join([*lines, '{"step": 21, "lo']) + "\n")
    ev = root / "eval"
    ev.mkdir()
    table = build_table([result("ttt", "r1", 34.68, 0.1365), result("ar_baseline", "r0", 10.0, 0.5494)])
    (ev / "table.json").write_text(json.dumps(table))
    wav = ev / "r1" / "audio" / "llama_questions" / "0.wav"
    write_audio(wav, np.zeros(1600, np.float32), 16000)
    (ev / "r1" / "items").mkdir(parents=True)
    pq.write_table(pa.table({
        "run_id": ["r1"] * 3, "task": ["audio_qa", "audio_qa", "asr"],
        "item_id": ["llama_questions/0", "llama_questions/1", "ls/0"],
        "subset": ["llama_questions", "llama_questions", "ls"],
        "question": ["What is the capital of France?", "Unreadable question?", "an asr item"],
        "references_json": ['["Paris"]', '["x"]', '["hello"]'], "answer_text": ["Paris.", "", "hello"],
        "speech_transcript": ["Paris", "", None], "speech_verdict": ["correct", "", None],
        "text_verdict": ["correct", "", None], "audio_path": [str(wav), "", None],
        "audio_in_path": [str(wav), "", str(wav)], "status": ["ok", "input_error", "ok"],
    }), ev / "r1" / "items" / "part-0.parquet")
    (ev / "r1" / "results.json").write_text(json.dumps({
        "audio_qa": {"llama_questions": {"n_items": 2, "n_input_error": 1, "n_generation_error": 0,
                                         "speech": {"n_valid": 1, "n_invalid": 0, "n_error": 1},
                                         "text": {"n_valid": 1, "n_invalid": 0, "n_error": 1}}},
        "asr": {"aishell1_test": {"n_items": 30, "n_input_error": 0, "n_generation_error": 2, "substitutions": 10,
                                  "deletions": 5, "insertions": 1, "ci_low": 0.11, "ci_high": 0.16}},
        "tts": {"ls_tts": {"n_items": 0, "top_code_share": 0.931}}}))
    bench = root / "bench"
    bench.mkdir()
    (bench / "inference.json").write_text(json.dumps({
        "name": "inference", "machine": {"cpu": "test"},
        "numbers": {"cache": {"tokens_per_s": {"value": 812.5, "unit": "tokens/s"}}, "speedup": 14.2}}))
    return bench


def test_full_report(tmp_path: Path) -> None:
    bench = make_run(tmp_path)
    paths = {"root": str(tmp_path), "shards": str(tmp_path / "shards"), "eval": str(tmp_path / "eval"),
             "checkpoints": str(tmp_path / "checkpoints"), "report": str(tmp_path / "report")}
    out = build_report(paths, bench_dir=bench)
    md = out.markdown.read_text()
    assert "not available" not in md, md
    assert "| asr | 2 | 400 | 0.008 |" in md  # manifest task counts
    assert "codec embedded 1 (512 codes, 25 codes/s), unified vocabulary of 152210 ids (compact layout)." in md
    assert "| asr | 2 | 200 | 290 | 300 |" in md  # DuckDB quantiles over the shard
    assert md.index("| AR baseline |") < md.index("| TtT |")
    assert "| TtT | 34.68 | 50.00 | – | 61.00 | 13.65 | 25.00 |" in md
    assert "| r1 | audio_qa/llama_questions | 2 | 1 | 0 | 1 / 0 / 1 | 1 / 0 / 1 | – | – |" in md
    assert "| r1 | asr/aishell1_test | 30 | 0 | 2 | – | – | 10 / 5 / 1 | 11.00–16.00 |" in md
    assert "(1 unreadable lines skipped)" in md and "| value | 20 | 0.15 | 0.25 | 920 |" in md
    assert "| cache.tokens_per_s | 812.5 | tokens/s |" in md and "| speedup | 14.2 |  |" in md
    assert "What is the capital of France?" in md and "Unreadable question?" not in md  # failed items are not examples
    assert "### ASR" in md and "| r1 | ls | [audio](../eval/r1/audio/llama_questions/0.wav) | hello | hello |" in md
    assert "### TTS" not in md  # no TTS item was evaluated
    assert "[audio](../eval/r1/audio/llama_questions/0.wav)" in md
    assert (out.markdown.parent / "../eval/r1/audio/llama_questions/0.wav").resolve().is_file()
    assert "commonest code (real speech of the embedded codec ~0.05; near 1 = the span collapsed onto one repeated " \
           "code): ls_tts 0.93." in md
    assert "| tts | diffusion | 6.250 | 7.500 | +1.250 |" in md and "| asr | ar |" not in md  # the last validation
    assert sorted(p.name for p in out.plots) == ["run0_ttt_small_held-out_losses.png", "run0_ttt_small_losses.png",
                                                 "run0_ttt_small_throughput.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in out.plots)
    page = out.html.read_text()
    assert page.count("<table>") == md.count("\n|---") and 'src="plots/run0_ttt_small_losses.png"' in page
    assert '<audio controls preload="none" src="../eval/r1/audio/llama_questions/0.wav"></audio>' in page


def test_report_with_nothing_to_report(tmp_path: Path) -> None:
    out = build_report({"root": str(tmp_path / "empty")}, bench_dir=tmp_path / "nobench")
    md = out.markdown.read_text()
    assert md.count("not available") == 6
    assert "Sweep" not in md  # no sweep, no section: most runs never sweep
    assert out.plots == () and out.html.is_file()


def test_report_shows_the_sweep_table(tmp_path: Path) -> None:
    sweep_eval = tmp_path / "sweep" / "eval"  # workflows/sweep.py's default <sweep.root>/eval
    sweep_eval.mkdir(parents=True)
    table = build_table([result("ttt_no_sst", "ttt_no_sst__default", 10.2, 0.1858),
                         result("ar_baseline", "ar_baseline__default", 10.0, 0.5494)])
    (sweep_eval / "table.json").write_text(json.dumps(table))
    (sweep_eval / "ar_baseline__default").mkdir()
    (sweep_eval / "ar_baseline__default" / "results.json").write_text(json.dumps({"asr": {"aishell1_test": {
        "n_items": 5, "n_input_error": 0, "n_generation_error": 1, "substitutions": 3, "deletions": 2,
        "insertions": 0}}}))
    md = build_report({"root": str(tmp_path)}, bench_dir=tmp_path / "nobench").markdown.read_text()
    section = md[md.index("## Sweep (Table 1)"):md.index("## Speed")]
    assert f"From {sweep_eval / 'table.json'}" in section
    assert section.index("| AR baseline | 10.00 | 50.00 | – | 61.00 | 54.94 | 25.00 |") < section.index(
        "| TtT w/o SST | 10.20 | 50.00 | – | 61.00 | 18.58 | 25.00 |")
    assert "| ar_baseline__default | asr/aishell1_test | 5 | 0 | 1 | – | – | 3 / 2 / 0 | – |" in section
    assert "Evaluation table not available" in md  # the main run's evaluation is a separate section
    # sweep.root moved elsewhere, and its table unreadable: the section says so instead of failing the report
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (moved / "table.json").write_text('{"rows": [')
    md = build_report({"root": str(tmp_path)}, bench_dir=tmp_path / "nobench", sweep_eval_dir=moved
                      ).markdown.read_text()
    assert f"Sweep table not available: {moved / 'table.json'} (JSONDecodeError)." in md
    assert "TtT w/o SST" not in md


def test_held_out_losses_are_shown_beside_their_prompt_control() -> None:
    from pipelines.eval.report import conditioning_rows

    rows = conditioning_rows({"val/tts/diffusion": 6.25, "val/tts/diffusion_control": 7.5, "val/asr/ar": 2.0,
                              "val/audio_chat/ar": 3.0, "val/audio_chat/ar_control": 2.875, "step": 20.0})
    assert rows == [("audio_chat", "ar", "3.000", "2.875", "-0.125"), ("tts", "diffusion", "6.250", "7.500", "+1.250")]
    assert conditioning_rows({}) == []


def test_learning_rows_show_every_score_beside_its_control() -> None:
    from pipelines.eval.report import control_rows

    asr = {"metric": "wer", "n": 100, "score": 0.42, "control": 0.97, "score_ci": [0.38, 0.46],
           "control_ci": [0.95, 0.99], "diff_ci": [-0.59, -0.51], "beats_control": True}
    qa = {"n": 50, "score": 4.0, "control": 2.0, "score_ci": [0.0, 10.0], "control_ci": [0.0, 6.0],
          "diff_ci": [-4.0, 8.0], "beats_control": False}
    rows = control_rows({"asr": {"ls": {"control": asr}}, "tts": {"ls": {"control": {"n": 0, "score": None}}},
                         "audio_qa": {"trivia_qa": {"speech": {"control": qa}, "text": {}}}})
    assert rows[0] == ("ASR ls (WER)", "100", "42.0 [38.0, 46.0]", "97.0 [95.0, 99.0]", "-55.0 [-59.0, -51.0]",
                       "beats control")
    assert rows[1][-1] == "no items" and rows[2][0] == "Audio-QA trivia_qa (speech answer)"
    assert rows[2][-1] == "does not beat control" and len(rows) == 3
