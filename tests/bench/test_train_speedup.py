"""bench/train_speedup.py: its "before" side still composes into valid train settings (a renamed key would make
the benchmark compare against nothing), and it refuses to run without shards. The run itself is the benchmark
(minutes of training per side); its numbers are in bench/RESULTS.md."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ttt_model.training.settings import parse_settings

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("train_speedup", ROOT / "bench" / "train_speedup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_before_side_is_the_old_preset_in_valid_settings() -> None:
    bench = _bench()
    with initialize_config_dir(config_dir=str(ROOT / "workflows" / "conf"), version_base=None):
        before = compose("config", overrides=["codec=s3", *bench.BEFORE])
        now = compose("config", overrides=["codec=s3"])
    old = parse_settings(OmegaConf.to_container(before.train, resolve=True))
    new = parse_settings(OmegaConf.to_container(now.train, resolve=True))
    assert (old.world_size, old.scaling.threads_per_worker, old.accumulation, old.max_tokens) == (2, 1, 2, 1024)
    assert old.parallel.mixed_precision is None and not old.parallel.compile and old.row_tokens is None
    assert old.batch.global_size == new.batch.global_size  # the same samples per optimizer step on both sides


def test_missing_shards_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"no shards at .*make run"):
        _bench().main(["--shards", str(tmp_path / "none"), "--out", str(tmp_path / "out.json")])
