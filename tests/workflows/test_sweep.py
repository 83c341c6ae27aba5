"""`workflows/sweep.py`: every variant is the root config composed again with `objective=<variant>` (so the
ablations really are TtT minus one strategy), with its own run name and paths; configuration mistakes stop the
sweep before anything trains (exit status 2); and a two-variant sweep trains both on tiny shards, evaluates both
into one Table-1 table under the sweep's own eval directory, and does not retrain finished variants.
Mistakes the sweep could only notice late are refused up front: command-line overrides it would replace, sampler
settings, missing evaluation sources, a checkpoint trained with another objective, a URI or (on a cluster) a relative
sweep.root.

The end-to-end sweep uses the byte-level tokenizer and tone codec of tests/ttt_model/test_generate.py (a vocabulary
of ~800 ids, so a tiny model trains and decodes in seconds) and the shard writer of tests/workflows/test_train.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipelines.eval.report import build_report
from tests.ttt_model.test_generate import ToneCodec, save_byte_tokenizer
from tests.workflows.test_train import TINY_MODEL, write_shards
from tokenization.vocab_factory import make_vocab
from ttt_model.core.checkpoint_layout import OBJECTIVE_FILE
from ttt_model.training.plan import plan_run
from ttt_model.training.settings import TrainConfigError
from workflows.sweep import SweepConfigError, plan_variants, run, without_objective
from workflows.train import finished_run

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


def test_the_embedded_sweep_gives_every_variant_the_main_runs_budget() -> None:
    cfg = compose_cfg(["codec=s3"])
    assert cfg.sweep.train.max_steps == cfg.train.max_steps  # Table 1 at make run's budget, one per system


def test_each_variant_is_composed_with_its_objective_and_its_own_run(tmp_path: Path) -> None:
    # the run's own objective choice is replaced per variant; key overrides of the group apply to every variant
    overrides = [f"paths.root={tmp_path}", "codec=s3", "objective=ttt_no_sst", "objective.p_mix=0.5",
                 "sweep.train.max_steps=7", "train.batch.micro_size=2", "eval.tasks.asr.sources=[]",
                 "sweep.variants=[ar_baseline,nar_baseline,ttt,ttt_no_banom,ttt_no_ppm,ttt_no_sst]"]
    settings, variants = plan_variants(compose_cfg(overrides), overrides)
    assert [v.name for v in variants] == list(EXPECTED)  # all six, in Table-1 order
    for v in variants:
        obj, train = v.config["objective"], v.config["train"]
        assert (obj["mode"], obj["banom"], obj["ppm"], obj["sst"]) == EXPECTED[v.name], v.name
        assert obj["p_mix"] == 0.5 and obj["p_trunc"] == 0.5  # the rest of `ttt` comes through the defaults list
        assert train["name"] == f"sweep-{v.name}" and train["max_steps"] == 7
        assert train["checkpoint"]["storage_path"] == str(tmp_path.absolute() / "sweep" / "checkpoints")
        assert train["logging"]["dir"] == str(tmp_path.absolute() / "sweep" / "train" / f"sweep-{v.name}")
        assert train["batch"]["global_size"] == 16  # everything else is the train group's
        assert train["batch"]["micro_size"] == 2  # train/eval keys the sweep does not set are the command line's
        assert v.config["eval"]["tasks"]["asr"]["sources"] == []
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
    ("sweep.samplers=[{decode: foo}]", "sweep.samplers[0]: sampler decode must be one of ('auto', "),
    ("sweep.samplers=[{threshold: 2}]", "sweep.samplers[0]: sampler threshold must be in (0, 1]"),
    ("sweep.samplers=[{},{}]", "sweep.samplers: settings ['default'] are listed more than once"),
    ("sweep.samplers=[{max_new_tokens: 9},{max_new_tokens: 9}]", "settings ['n9'] are listed more than once"),
    # command-line keys that sweep=embedded's sweep.train / sweep.eval / sweep.samplers would silently replace
    ("train.max_steps=7", "train.max_steps is overridden by sweep.train.max_steps: set sweep.train.max_steps instead"),
    ("eval.tasks.asr.max_items=2", "eval.tasks.asr.max_items is overridden by sweep.eval.tasks.asr.max_items: set "),
    ("eval.tasks.asr={sources: [], max_items: 2}", "eval.tasks.asr is overridden by sweep.eval.tasks.asr.max_items"),
    ("sampler.max_new_tokens=64", "sampler.max_new_tokens is overridden by sweep.samplers[0].max_new_tokens"),
    ("train.checkpoint.storage_path=/elsewhere", "train.checkpoint.storage_path: the sweep sets train.name, "),
    ("sweep.root=s3://bucket/x", "sweep.root s3://bucket/x: a URI is not supported"),
])
def test_sweep_config_mistakes(tmp_path: Path, override: str, message: str) -> None:
    overrides = [f"paths.root={tmp_path}", "codec=s3", override]
    with pytest.raises(SweepConfigError, match=re.escape(message)):
        plan_variants(compose_cfg(overrides), overrides)


@pytest.mark.parametrize("cluster", ["ray_address=ray://head:10001", "RAY_ADDRESS"])
def test_a_relative_root_is_refused_only_on_a_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      cluster: str) -> None:
    # under `ray job submit` a relative path resolves inside the job's temporary copy of the working dir
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)
    overrides = ["paths.root=runs/relative-root", "codec=s3", "sweep.variants=[ttt]"]
    settings, _ = plan_variants(compose_cfg(overrides), overrides)
    assert settings.root == Path("runs/relative-root/sweep").absolute()  # a local run: relative to the cwd
    if cluster == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", "auto")
    else:
        overrides.append(cluster)
    with pytest.raises(SweepConfigError, match=re.escape("sweep.root runs/relative-root/sweep is relative but ")):
        plan_variants(compose_cfg(overrides), overrides)


def test_missing_evaluation_sources_stop_the_sweep_before_training(tmp_path: Path) -> None:
    # without a prepare stage the embedded evaluation sets under paths.raw must exist already
    overrides = [f"paths.root={tmp_path}", "codec=s3", "sweep.data_stages=[tokenize]"]
    with pytest.raises(SweepConfigError, match=re.escape("eval.tasks.audio_qa.sources[0]: ")) as err:
        plan_variants(compose_cfg(overrides), overrides)
    assert str(tmp_path / "raw") in str(err.value)
    none = [*overrides, "eval.tasks.audio_qa.sources=[]", "eval.tasks.asr.sources=[]", "eval.tasks.tts.sources=[]"]
    with pytest.raises(SweepConfigError, match="no evaluation sources"):
        plan_variants(compose_cfg(none), none)


def test_a_checkpoint_trained_with_another_objective_is_refused(tmp_path: Path) -> None:
    overrides = [f"paths.root={tmp_path}", "codec=s3", "sweep.variants=[ttt]"]
    _, [variant] = plan_variants(compose_cfg(overrides), overrides)
    run_dir = tmp_path / "sweep" / "checkpoints" / "sweep-ttt"
    for step, p_mix in ((2, 0.1), (4, 0.3)):  # only the latest checkpoint counts: the one a rerun continues from
        (run_dir / f"checkpoint_{step:08d}" / "model").mkdir(parents=True)
        objective = {**variant.config["objective"], "p_mix": p_mix}
        (run_dir / f"checkpoint_{step:08d}" / "model" / OBJECTIVE_FILE).write_text(json.dumps(objective))
    plan_variants(compose_cfg(overrides), overrides)  # trained with the objective composed now: resumed or reused
    changed = [*overrides, "objective.p_mix=0.5"]
    with pytest.raises(SweepConfigError, match=re.escape(f"differs in ['p_mix']): delete {run_dir} to train it")):
        plan_variants(compose_cfg(changed), changed)
    # a record written before a key existed: trained with its default, so the same objective as composed now
    older = {k: v for k, v in variant.config["objective"].items() if k not in ("audio_attention", "audio_block")}
    (run_dir / "checkpoint_00000004" / "model" / OBJECTIVE_FILE).write_text(json.dumps(older))
    plan_variants(compose_cfg(overrides), overrides)
    block_causal = [*overrides, "objective.audio_attention=block_causal"]
    with pytest.raises(SweepConfigError, match=re.escape("differs in ['audio_attention']")):
        plan_variants(compose_cfg(block_causal), block_causal)


def test_a_train_setting_mistake_is_found_before_anything_runs(tmp_path: Path) -> None:
    overrides = [f"paths.root={tmp_path}", "codec=s3", "+sweep.train.max_step=3"]
    with pytest.raises(TrainConfigError, match="max_step"):
        plan_variants(compose_cfg(overrides), overrides)


def test_a_training_mistake_in_run_names_its_variant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # run() takes a plain mapping too: the data stages still get the attribute access they use (cfg.paths.raw)
    prepared = []
    monkeypatch.setattr("workflows.prepare_data.prepare_from_config",
                        lambda cfg: prepared.append(cfg.paths.raw) or {"corpora": {"sources": []}})
    monkeypatch.setattr("pipelines.ray_runtime.ensure_ray", lambda **_: False)  # nothing here needs Ray
    overrides = [*eval_overrides(), f"paths.root={tmp_path}", "codec=s3", "sweep.variants=[nar_baseline]",
                 "sweep.data_stages=[prepare]"]
    plain = OmegaConf.to_container(compose_cfg(overrides), resolve=True)
    with pytest.raises(TrainConfigError, match=f"^nar_baseline: no shards at {re.escape(str(tmp_path / 'shards'))}"):
        run(plain, overrides)  # the shards are missing: a mistake in every variant, named by the first one
    assert prepared == [str(tmp_path / "raw")]


def finished_fake(tmp_path: Path) -> SimpleNamespace:
    """A run plan (the fields finished_run reads) whose run finished at step 4 with checkpoints at steps 2 and 4."""
    plan = SimpleNamespace(storage_path=str(tmp_path / "checkpoints"), log_dir=str(tmp_path / "train"),
                           settings=SimpleNamespace(name="sweep-ttt"), total_steps=4)
    for step in (2, 4):
        (tmp_path / "checkpoints" / "sweep-ttt" / f"checkpoint_{step:08d}" / "model").mkdir(parents=True)
    last = tmp_path / "checkpoints" / "sweep-ttt" / "checkpoint_00000004"
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "final.json").write_text(json.dumps({
        "name": "sweep-ttt", "checkpoint": str(last), "model": str(last / "model"), "total_steps": 4,
        "metrics": {"step": 4, "loss": 1.0}, "log_dir": plan.log_dir}))
    return plan


def _newer_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "checkpoints" / "sweep-ttt" / "checkpoint_00000006" / "model").mkdir(parents=True)


@pytest.mark.parametrize("spoil", [
    _newer_checkpoint,  # final.json names a checkpoint that is no longer the latest: the run went on
    lambda root: shutil.rmtree(root / "checkpoints" / "sweep-ttt" / "checkpoint_00000004" / "model"),
    lambda root: (root / "train" / "final.json").write_text('{"name": "sweep-ttt", "checkpoint"'),  # cut short
    lambda root: (root / "train" / "final.json").unlink(),
])
def test_a_run_is_finished_only_when_final_json_names_its_latest_checkpoint(
        tmp_path: Path, spoil: Callable[[Path], Any]) -> None:
    plan = finished_fake(tmp_path)
    assert finished_run(plan)["model"] == str(tmp_path / "checkpoints" / "sweep-ttt" / "checkpoint_00000004" / "model")
    spoil(tmp_path)
    assert finished_run(plan) is None


def test_command_line_stops_on_an_unknown_variant_with_exit_status_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "workflows/sweep.py", f"paths.root={tmp_path}", "codec=s3",
                           "sweep.variants=[ar_baseline,ttt_without_anything]"], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("sweep: sweep.variants: unknown variants")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "raw").exists()  # nothing started


def eval_overrides() -> list[str]:
    """ASR on the LibriSpeech fixture only: the generate stage alone (Audio-QA and TTS add the transcribe and
    judge actor pools)."""
    ls = (f"{{name: ls_test, kind: librispeech, language: en, path: '{FIXTURES / 'librispeech' / 'LibriSpeech'}', "
          "subsets: [test-clean]}")
    return ["eval.tasks.audio_qa.sources=[]", f"eval.tasks.asr.sources=[{ls}]", "eval.tasks.tts.sources=[]"]


def e2e_overrides(root: Path, tokenizer: str) -> list[str]:
    # One training worker: the sweep does not care how a variant trains (tests/workflows/test_train.py covers two
    # FSDP2 ranks), and each worker process costs seconds of imports on 2 cores.
    return [f"paths.root={root}", "codec=s3", f"data.text_tokenizer={tokenizer}", *TINY_MODEL,
            "train.max_tokens=128", "train.batch.global_size=4", "train.batch.micro_size=1",
            "train.scaling.num_workers=1",
            "train.checkpoint.every_steps=2", "train.logging.report_every_steps=2", "train.logging.tensorboard=false",
            "sweep.variants=[ttt,ar_baseline]", "sweep.data_stages=[]", "sweep.train.max_steps=2",
            "sweep.eval.tasks.asr.max_items=2",
            "sweep.samplers=[{max_new_tokens: 16, block_length: 4, steps_per_block: 2, max_span: 8}]",
            *eval_overrides(), "eval.bootstrap=0", "eval.stages.generate.torch_threads=1"]


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
        # both variants really decoded every test utterance, each the way it was trained (a failed generation
        # would score too: an empty hypothesis is WER 100)
        results = json.loads((sweep / "eval" / row["run_id"] / "results.json").read_text())
        assert results["generation"]["generated"] == results["generation"]["items"] == 2
        assert results["asr"]["ls_test"]["n_generation_error"] == 0
        assert results["decode"] == {"ar_baseline": "ar", "ttt": "ttt"}[system]
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
