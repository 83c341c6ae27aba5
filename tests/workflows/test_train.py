"""`workflows/train.py` end to end on Ray Train with 2 CPU workers (FSDP2 on gloo) at a tiny size.

One uninterrupted baseline run, then the same configuration killed by a real worker-process death with no
retries left (fit fails), then started again from the command line with one retry allowed: it resumes from
the latest checkpoint, loses a worker process once more, Ray replaces the worker group, and the run must
end with exactly the baseline's weights and the baseline's per-step sample order. Plus: both cluster
configs compose and validate, and configuration mistakes fail before any worker starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from ray.train import WorkerGroupError
from safetensors.torch import load_file
from transformers import Qwen2ForCausalLM

from pipelines.shards import write_parquet_shard
from tokenization.codecs.base import CodecIdentity
from tokenization.sequence import SPAN_ARROW_TYPE, Part, Turn, build_chat, build_document, spans_to_pylist
from tokenization.shard_format import MANIFEST_FILE, PARQUET_DIR
from tokenization.text import load_text_tokenizer
from tokenization.vocab import UnifiedVocab, write_manifest
from ttt_model.core.checkpoint_layout import load_objective
from ttt_model.core.model import build_model
from ttt_model.core.model_checkpoint import load_checkpoint, save_checkpoint
from ttt_model.training.settings import TrainConfigError, parse_settings
from ttt_model.training.telemetry import read_jsonl
from workflows.train import run

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "workflows" / "conf"
N_SAMPLES = 12  # 6 per rank: 2 epochs x 3 steps of 2 micro-batches of 1 sample
WORDS = ["the", "cat", "sat", "on", "a", "warm", "mat", "while", "birds", "sang", "songs", "about", "rivers", "and",
         "quiet", "green", "hills"]
TINY_MODEL = ["model.config.hidden_size=64", "model.config.intermediate_size=128", "model.config.num_hidden_layers=2",
              "model.config.num_attention_heads=4", "model.config.num_key_value_heads=2"]


def train_group(option: str) -> str:
    """`train=<option>`, or `+train=<option>` while the root config's defaults list has no train group yet."""
    defaults = OmegaConf.load(CONF / "config.yaml").defaults
    listed = any(OmegaConf.is_dict(d) and "train" in d for d in defaults)
    return f"train={option}" if listed else f"+train={option}"


def overrides(root: Path, *extra: str) -> list[str]:
    # Training never loads the codec (its identity comes from the shards' manifest), so any codec group does;
    # s3 keeps these tests independent of the embedded codec's fitted files.
    # 2 workers (train=cpu has 1): these runs exercise what only several ranks have (FSDP2 sharding over gloo,
    # the data split, a dead rank replaced).
    return [f"paths.root={root}", train_group("cpu"), "codec=s3", *TINY_MODEL, "train.max_tokens=128",
            "train.scaling.num_workers=2", "train.scaling.threads_per_worker=1",
            "train.epochs=2", "train.batch.global_size=4", "train.batch.micro_size=1", "train.checkpoint.every_steps=2",
            "train.checkpoint.keep=2", "train.logging.report_every_steps=2", "train.logging.sample_trace=true", *extra]


def compose_cfg(root: Path, *extra: str) -> Any:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("config", overrides=overrides(root, *extra))


@pytest.fixture(scope="module")
def vocab() -> UnifiedVocab:
    return UnifiedVocab(load_text_tokenizer(), CodecIdentity("test", "1", 25.0, 512, 16000, 16000, "h"))


def make_sample(vocab: UnifiedVocab, i: int, rng: np.random.Generator) -> dict[str, Any]:
    text = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 8))))

    def codes(lo: int, hi: int) -> np.ndarray:
        return rng.integers(0, vocab.codebook_size, int(rng.integers(lo, hi)))

    if i % 3 == 0:
        seq = build_document(vocab, [Part(text=text), Part.audio(codes(8, 20)), Part(text="and"),
                                     Part.audio(codes(5, 15))])
    else:
        seq = build_chat(vocab, [Turn("user", [Part.audio(codes(6, 14))]),
                                 Turn("assistant", [Part(text=text), Part.audio(codes(6, 12)),
                                                    Part.audio(codes(4, 16), final=True)])])
    return {"sample_id": f"src{i % 2}/utt{i:04d}", "task": "interleaved" if i % 3 == 0 else "audio_chat",
            "n_tokens": len(seq.input_ids),
            "spans": spans_to_pylist(seq.spans), "input_ids": seq.input_ids.astype(np.int32)}


def write_shards(shards: Path, vocab: UnifiedVocab, n: int, files: int = 2) -> list[str]:
    """Shards in the tokenize job's layout (parquet/ + manifest.json, the manifest in each file's metadata)."""
    rng = np.random.default_rng(0)
    rows = sorted((make_sample(vocab, i, rng) for i in range(n)), key=lambda r: r["sample_id"])
    schema = pa.schema([("sample_id", pa.string()), ("task", pa.string()), ("n_tokens", pa.int32()),
                        ("spans", pa.list_(SPAN_ARROW_TYPE)),
                        ("input_ids", pa.list_(pa.int32()))])
    names = []
    for k in range(files):
        part = rows[k::files]
        table = pa.table({c: [r[c] for r in part] for c in schema.names}, schema=schema)
        names.append(f"part-{k:05d}-of-{files:05d}.parquet")
        write_parquet_shard(table, shards / PARQUET_DIR / names[-1], vocab.manifest(), row_group_rows=4)
    write_manifest(vocab.manifest(), shards / MANIFEST_FILE, shards={"parquet": names})
    return [r["sample_id"] for r in rows]


def final_weights(final: dict[str, Any]) -> dict[str, torch.Tensor]:
    return load_file(str(Path(final["model"]) / "model.safetensors"))


def traces(log_dir: Path) -> dict[int, list[dict[str, Any]]]:
    return {r: read_jsonl(log_dir / "samples" / f"rank_{r}.jsonl") for r in (0, 1)}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory, vocab: UnifiedVocab) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("train_data")
    ids = write_shards(root / "shards", vocab, N_SAMPLES)
    return root, ids


@pytest.fixture(scope="module")
def baseline(ray_local: Any, data_root: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("baseline")
    os.symlink(data_root[0] / "shards", root / "shards")
    return run(compose_cfg(root))


def test_baseline_run_writes_metrics_checkpoints_and_a_disjoint_deterministic_split(
        baseline: dict[str, Any], data_root: tuple[Path, list[str]], vocab: UnifiedVocab) -> None:
    log_dir = Path(baseline["log_dir"])
    assert baseline["total_steps"] == 6 and baseline["metrics"]["step"] == 6
    records = read_jsonl(log_dir)
    assert [r["step"] for r in records] == list(range(1, 7))
    for r in records:
        assert np.isfinite(r["loss"]) and r["loss"] == pytest.approx(r["loss_ar"] + r["loss_diffusion"])
        assert r["tokens_per_s"] > 0 and 0 <= r["padding_fraction"] < 1 and r["samples"] == 4
        assert {"time/forward", "time/backward", "time/optimizer", "rate/banom", "rate/sst", "grad_norm"} <= set(r)
    assert records[0]["lr"] == 0.0 and records[1]["lr"] == pytest.approx(1e-3)  # 1 warmup step, then cosine down
    assert records[-1]["lr"] < records[2]["lr"]
    assert any((log_dir / "tensorboard").glob("events.out.tfevents.*"))
    # every epoch: the two ranks see disjoint halves of the data, together all of it, each in a new order
    by_rank = traces(log_dir)
    all_ids = set(data_root[1])
    for epoch in (0, 1):
        seen = {r: [i for rec in by_rank[r] if rec["epoch"] == epoch for i in rec["ids"]] for r in (0, 1)}
        assert Counter(seen[0] + seen[1]) == Counter(all_ids)
    for r in (0, 1):
        ep0 = [i for rec in by_rank[r] if rec["epoch"] == 0 for i in rec["ids"]]
        ep1 = [i for rec in by_rank[r] if rec["epoch"] == 1 for i in rec["ids"]]
        assert sorted(ep0) == sorted(ep1) and ep0 != ep1
    # checkpoints: the last `keep` survive; the final one loads with plain transformers and with our manifest check
    ckpts = sorted(p.name for p in Path(baseline["checkpoint"]).parent.glob("checkpoint_0*"))
    assert ckpts == ["checkpoint_00000004", "checkpoint_00000006"]
    model, _ = load_checkpoint(baseline["model"], vocab.manifest())
    plain = Qwen2ForCausalLM.from_pretrained(baseline["model"])
    assert torch.equal(model.get_input_embeddings().weight, plain.get_input_embeddings().weight)
    assert json.loads((log_dir / "final.json").read_text())["model"] == baseline["model"]
    assert load_objective(baseline["model"])["mode"] == "ttt"  # what `decode: auto` reads at evaluation


@pytest.fixture(scope="module")
def resumed(ray_local: Any, baseline: dict[str, Any], data_root: tuple[Path, list[str]],
            tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The baseline's configuration, but rank 1's process exits before steps 3 and 5 (once each)."""
    root = tmp_path_factory.mktemp("resumed")
    os.symlink(data_root[0] / "shards", root / "shards")
    faults = "train.fault_injection.step=3"
    with pytest.raises(WorkerGroupError):
        run(compose_cfg(root, faults, "train.max_failures=0"))
    first = read_jsonl(root / "train" / "ttt-cpu")
    assert [r["step"] for r in first] == [1, 2]
    # started again from the command line (a new driver on the running cluster, as under `ray job submit`):
    # resumes from checkpoint 2; dies before step 5; Ray replaces the worker group, which resumes from step 4
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    proc = subprocess.run([sys.executable, "workflows/train.py", *overrides(root, "train.fault_injection.step=5",
                                                                           "train.max_failures=1")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = json.loads((root / "train" / "ttt-cpu" / "final.json").read_text())
    assert proc.stdout.strip().splitlines()[-1] == final["model"]
    return root, final


def test_a_killed_and_restarted_run_ends_with_the_uninterrupted_weights(
        resumed: tuple[Path, dict[str, Any]], baseline: dict[str, Any]) -> None:
    root, final = resumed
    assert (root / "train" / "ttt-cpu" / ".fault_injected_step_3").exists()
    assert (root / "train" / "ttt-cpu" / ".fault_injected_step_5").exists()
    records = read_jsonl(root / "train" / "ttt-cpu")
    assert [r["step"] for r in records] == list(range(1, 7))  # redone steps replaced, not duplicated
    assert traces(root / "train" / "ttt-cpu") == traces(Path(baseline["log_dir"]))
    ours, reference = final_weights(final), final_weights(baseline)
    assert ours.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(ours[name], reference[name], rtol=0, atol=1e-6, msg=name)
    base_records = read_jsonl(Path(baseline["log_dir"]))
    for a, b in zip(records, base_records, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and a["lr"] == pytest.approx(b["lr"])


def test_both_train_groups_compose_and_validate(tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cpu = compose("config", overrides=[train_group("cpu"), "codec=s3"])
        gpu = compose("config", overrides=[train_group("a100x32"), "codec=s3", "model=qwen2.5-3b"])
    s_cpu = parse_settings(OmegaConf.to_container(cpu.train, resolve=True))
    s_gpu = parse_settings(OmegaConf.to_container(gpu.train, resolve=True))
    assert s_cpu.world_size == 1 and s_cpu.scaling.threads_per_worker == 2 and s_cpu.scaling.backend == "gloo"
    assert s_cpu.scaling.resources_per_worker["CPU"] < 1
    assert s_cpu.parallel.mixed_precision == "bf16" and s_cpu.parallel.compile  # one rank: autocast, compiled layers
    assert s_cpu.row_tokens is not None and s_cpu.row_tokens < s_cpu.max_tokens
    assert s_gpu.row_tokens is None and not s_gpu.parallel.compile
    assert s_gpu.world_size == 32 and s_gpu.scaling.use_gpu and s_gpu.scaling.backend == "nccl"
    assert s_gpu.scaling.resources_per_worker["GPU"] == 1 and s_gpu.parallel.mixed_precision == "bf16"
    assert s_gpu.parallel.activation_checkpointing and s_gpu.batch.global_size == 2048
    assert s_gpu.batch.micro_size * s_gpu.accumulation * s_gpu.world_size == 2048
    assert (s_gpu.optim.lr, s_gpu.optim.betas[1], s_gpu.optim.weight_decay, s_gpu.optim.warmup_ratio) == (
        2e-5, 0.95, 0.01, 0.01)
    assert s_gpu.epochs == 10 and s_gpu.max_tokens == 2048 and s_gpu.ray.address == "auto"


def _run_error(root: Path, *extra: str) -> str:
    with pytest.raises(TrainConfigError) as err:
        run(compose_cfg(root, *extra))
    assert not (root / "checkpoints").exists()  # nothing started
    return str(err.value)


def test_configuration_mistakes_fail_before_any_worker_starts(
        tmp_path: Path, data_root: tuple[Path, list[str]], vocab: UnifiedVocab) -> None:
    assert "manifest.json is missing" in _run_error(tmp_path / "no_shards")
    good = tmp_path / "good"
    good.mkdir()
    os.symlink(data_root[0] / "shards", good / "shards")
    message = _run_error(good, "train.batch.global_size=6", "train.batch.micro_size=2")
    assert "global_size=6 samples is not divisible by micro_size × num_workers = 2 × 2 = 4" in message
    assert "no config.json" in _run_error(good, "model.init=pretrained", f"model.path={tmp_path / 'nowhere'}")
    assert "fewer than one global batch" in _run_error(good, "train.batch.global_size=64")
    message = _run_error(good, "objective.task_weights.tts=2")  # the fixture shards hold no TTS
    assert "task(s) ['tts'] that the shards" in message and "'audio_chat', 'interleaved'" in message
    # a TtT checkpoint made with another vocabulary (another codebook size) as the starting point
    other = UnifiedVocab(load_text_tokenizer(), CodecIdentity("test", "1", 25.0, 256, 16000, 16000, "h"))
    model = build_model({"init": "random", "config": {"hidden_size": 16, "intermediate_size": 32,
                                                      "num_hidden_layers": 1, "num_attention_heads": 2,
                                                      "num_key_value_heads": 1}}, other)
    save_checkpoint(model, other.manifest(), tmp_path / "other_ckpt")
    message = _run_error(good, "model.init=pretrained", f"model.path={tmp_path / 'other_ckpt'}")
    assert "vocabulary manifest of model.path" in message and "codebook_size" in message
    # shards whose manifest.json disagrees with a file's own manifest (two tokenize runs mixed)
    mixed = tmp_path / "mixed"
    write_shards(mixed / "shards", vocab, 4)
    write_manifest(other.manifest(), mixed / "shards" / MANIFEST_FILE, shards={"parquet": []})
    assert "vocabulary manifest of shard part-00000-of-00002.parquet" in _run_error(mixed)


def test_command_line_reports_a_config_error_with_exit_status_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "workflows/train.py", *overrides(tmp_path, "train.batch.micro_size=3")],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert "train: invalid training configuration" in proc.stderr and "not divisible" in proc.stderr
    assert "Traceback" not in proc.stderr
