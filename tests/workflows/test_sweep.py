"""`workflows/sweep.py`: every variant is the root config composed again with `objective=<variant>` (so the
ablations really are TtT minus one strategy), with its own run name and paths; configuration mistakes stop the
sweep before anything trains (exit status 2); and a two-variant sweep trains both on tiny shards, evaluates both
into one Table-1 table under the sweep's own eval directory, and does not retrain finished variants.

The end-to-end sweep uses the byte-level tokenizer and tone codec of tests/ttt_model/test_generate.py (a vocabulary
of ~800 ids, so a tiny model trains and decodes in seconds) and the shard writer of tests/workflows/test_train.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir

from pipelines.eval.report import build_report
from tests.ttt_model.test_generate import ToneCodec, save_byte_tokenizer
from tests.workflows.test_train import TINY_MODEL, write_shards
from tokenization.vocab_factory import make_vocab
from ttt_model.train_config import TrainConfigError
from ttt_model.train_plan import plan_run
from workflows.sweep import SweepConfigError, finished_run, plan_variants, run, without_objective

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "workflows" / "conf"
FIXTURES = ROOT / "tests" / "fixtures" / "corpora"
# (mode, banom, ppm, sst) of each objective option, as paper Table 1 defines the rows
EXPECTED = {"ar_baseline": ("ar", False, False, False), "nar_baseline": ("nar", False, False, False),
            "ttt": ("ttt", True, True, True), "ttt_no_banom": ("ttt", False, True, True),
            "ttt_no_ppm": ("ttt", True, False, True), "ttt_no_sst": ("ttt", True, True, False)}


def compose_cfg(overrides: list[str]) -> Any:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("config", overrides=overrides)


def test_each_variant_is_composed_with_its_objective_and_its_own_run(tmp_path: Path) -> None:
    # the run's own objective choice is replaced per variant; key overrides of the group apply to every variant
    overrides = [f"paths.root={tmp_path}", "codec=s3", "objective=ttt_no_sst", "objective.p_mix=0.5",
                 "sweep.train.max_steps=7"]
    settings, variants = plan_variants(compose_cfg(overrides), overrides)
    assert [v.name for v in variants] == list(EXPECTED)  # sweep=embedded: all six, in Table-1 order
    for v in variants:
        obj, train = v.config["objective"], v.config["train"]
        assert (obj["mode"], obj["banom"], obj["ppm"], obj["sst"]) == EXPECTED[v.name], v.name
        assert obj["p_mix"] == 0.5 and obj["p_trunc"] == 0.5  # the rest of `ttt` comes through the defaults list
        assert train["name"] == f"sweep-{v.name}" and train["max_steps"] == 7
        assert train["checkpoint"]["storage_path"] == str(tmp_path.absolute() / "sweep" / "checkpoints")
        assert train["logging"]["dir"] == str(tmp_path.absolute() / "sweep" / "train" / f"sweep-{v.name}")
        assert train["batch"]["global_size"] == 16  # everything else is the train group's
    assert len({v.config["train"]["logging"]["dir"] for v in variants}) == len(variants)
    assert settings.root == tmp_path.absolute() / "sweep" and settings.data_stages == ("prepare", "tokenize")
    assert without_objective(["+objective=ar_baseline", "~objective", "objective.eps=0.01", "seed=3"]) == [
        "objective.eps=0.01", "seed=3"]


@pytest.mark.parametrize(("override", "message"), [
    ("sweep.variants=[ttt,ttt_no_everything]", "unknown variants ['ttt_no_everything']"),
    ("sweep.variants=[ttt,ttt]", "lists a variant twice"),
    ("sweep.variants=[]", "sweep.variants is empty"),
    ("sweep.data_stages=[prepare,train]", "unknown stages ['train']"),
    ("+sweep.steps=3", "sweep: unknown keys ['steps']"),
    ("sweep.root=null", "sweep.root is not set"),
    ("+sweep.eval.grid={samplers: []}", "the sweep builds the grid itself"),
    ("+sweep.eval.task={}", "keys ['task'] are not in the eval group"),
    ("sweep.samplers=[{steps: 4}]", "sweep.samplers[0]: unknown sampler keys ['steps']"),
    ("sweep.samplers=[{text: {temp: 0.5}}]", "unknown sampler keys ['text.temp']"),
])
def test_sweep_config_mistakes(tmp_path: Path, override: str, message: str) -> None:
    overrides = [f"paths.root={tmp_path}", "codec=s3", override]
    with pytest.raises(SweepConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        plan_variants(compose_cfg(overrides), overrides)


def test_a_train_setting_mistake_is_found_before_anything_runs(tmp_path: Path) -> None:
    overrides = [f"paths.root={tmp_path}", "codec=s3", "+sweep.train.max_step=3"]
    with pytest.raises(TrainConfigError, match="max_step"):
        plan_variants(compose_cfg(overrides), overrides)


def test_command_line_stops_on_an_unknown_variant_with_exit_status_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "workflows/sweep.py", f"paths.root={tmp_path}", "codec=s3",
                           "sweep.variants=[ar_baseline,ttt_without_anything]"], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("sweep: sweep.variants: unknown variants")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "raw").exists()  # nothing started


def e2e_overrides(root: Path, tokenizer: str) -> list[str]:
    ls = (f"{{name: ls_test, kind: librispeech, language: en, path: '{FIXTURES / 'librispeech' / 'LibriSpeech'}', "
          "subsets: [test-clean]}")
    # One training worker: the sweep does not care how a variant trains (tests/workflows/test_train.py covers two
    # FSDP2 ranks), and each worker process costs seconds of imports on 2 cores.
    return [f"paths.root={root}", "codec=s3", f"data.text_tokenizer={tokenizer}", *TINY_MODEL,
            "train.max_tokens=128", "train.batch.global_size=4", "train.batch.micro_size=1",
            "train.scaling.num_workers=1",
            "train.checkpoint.every_steps=2", "train.logging.report_every_steps=2", "train.logging.tensorboard=false",
            "sweep.variants=[ttt,ar_baseline]", "sweep.data_stages=[]", "sweep.train.max_steps=2",
            "sweep.eval.tasks.asr.max_items=2",
            "sweep.samplers=[{max_new_tokens: 16, block_length: 4, steps_per_block: 2, max_span: 8}]",
            # ASR only: the generate stage alone (Audio-QA and TTS add the transcribe and judge actor pools)
            "eval.tasks.audio_qa.sources=[]", f"eval.tasks.asr.sources=[{ls}]", "eval.tasks.tts.sources=[]",
            "eval.bootstrap=0", "eval.stages.generate.torch_threads=1"]


def test_two_variant_sweep_end_to_end(ray_local: Any, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tokenizer = save_byte_tokenizer(tmp_path / "tokenizer")
    write_shards(tmp_path / "shards", make_vocab(tokenizer, ToneCodec().identity, "compact"), 8)
    overrides = e2e_overrides(tmp_path, tokenizer)
    cfg = compose_cfg(overrides)

    out = run(cfg, overrides, codec_factory=ToneCodec)
    sweep = tmp_path.absolute() / "sweep"
    assert out["table_md"] == str(sweep / "eval" / "table.md") and Path(out["table_md"]).is_file()
    table = json.loads(Path(out["table_json"]).read_text())
    assert [r["label"] for r in table["rows"]] == ["AR baseline", "TtT"]  # paper order, not training order
    assert [c["key"] for c in table["columns"]] == ["asr/ls_test"]
    for row in table["rows"]:
        system = {"AR baseline": "ar_baseline", "TtT": "ttt"}[row["label"]]
        final = out["variants"][system]
        assert final["total_steps"] == 2 and final["metrics"]["step"] == 2
        assert row["checkpoint"] == final["model"]
        assert Path(final["model"]).is_relative_to(sweep / "checkpoints" / f"sweep-{system}")
        assert (Path(final["model"]) / "model.safetensors").is_file()
        assert json.loads((sweep / "train" / f"sweep-{system}" / "final.json").read_text()) == final
        assert row["values"]["asr/ls_test"] is not None  # both variants really transcribed the test utterances
    assert not (tmp_path / "eval").exists() and not (tmp_path / "checkpoints").exists()  # the main run's dirs
    md = build_report({"root": str(tmp_path)}, bench_dir=tmp_path / "nobench").markdown.read_text()
    assert "## Sweep (Table 1)" in md and "| AR baseline | 100.00 |" in md
    capsys.readouterr()

    # again: both variants are finished and evaluated, so nothing trains and nothing is re-evaluated
    metrics = {s: (sweep / "train" / f"sweep-{s}" / "metrics.jsonl").read_bytes() for s in ("ttt", "ar_baseline")}
    again = run(cfg, overrides, codec_factory=ToneCodec)
    printed = capsys.readouterr().out
    assert again["variants"] == out["variants"] and again["table"]["rows"] == table["rows"]
    assert printed.count(" is finished (") == 2 and printed.count("is up to date") == 2 and "training" not in printed
    assert all((sweep / "train" / f"sweep-{s}" / "metrics.jsonl").read_bytes() == m for s, m in metrics.items())
    # a longer schedule makes the same runs unfinished: they would resume, not be skipped
    longer = [*overrides, "train.epochs=2", "sweep.train.max_steps=4"]
    _, variants = plan_variants(compose_cfg(longer), longer)
    assert [finished_run(plan_run(v.config)) for v in variants] == [None, None]
