"""The eval config groups compose with the root config, every section validates against the code that consumes
it, and `python workflows/evaluate.py` fails with a clear message (exit 2) on a configuration mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipelines.eval.asr import AsrConfig
from pipelines.eval.jobs import StageResources
from pipelines.eval.judges import LlmJudge, RuleJudge, build_judge
from pipelines.records import SourceConfig

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "workflows" / "conf"


def group(name: str, option: str) -> str:
    """`name=option`, or `+name=option` while the root config's defaults list has no such group yet."""
    listed = any(OmegaConf.is_dict(d) and name in d for d in OmegaConf.load(CONF / "config.yaml").defaults)
    return f"{name}={option}" if listed else f"+{name}={option}"


def overrides(root: Path, option: str) -> list[str]:
    # Composition never loads the codec (the generate actors do), so any codec group does; s3 keeps these tests
    # independent of the embedded codec's fitted files.
    return [f"paths.root={root}", "codec=s3", group("eval", option), group("sampler", "default")]


def composed(root: Path, option: str) -> dict[str, Any]:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=overrides(root, option))
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("option", ["embedded", "production"])
def test_eval_groups_compose_and_validate(tmp_path: Path, option: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTT_JUDGE_BASE_URL", "http://judge.internal:9000/v1")
    cfg = composed(tmp_path, option)
    ev = cfg["eval"]
    for task in ("audio_qa", "asr", "tts"):
        for source in ev["tasks"][task]["sources"]:
            SourceConfig.from_mapping(source)
    for lang, asr in ev["asr_models"].items():
        if asr is not None:
            assert AsrConfig.from_mapping(asr).language == lang
    StageResources.from_mapping(ev["stages"]["generate"], extra=("device", "dtype", "torch_threads"))
    StageResources.from_mapping(ev["stages"]["transcribe"])
    StageResources.from_mapping(ev["stages"]["judge"])
    judge = build_judge(ev["judge"])
    assert isinstance(judge, RuleJudge if option == "embedded" else LlmJudge)
    if option == "embedded":
        assert ev["grid"]["checkpoints"][0]["path"] == str(tmp_path / "checkpoints")
        assert ev["tasks"]["audio_qa"]["sources"][0]["path"] == str(tmp_path / "raw" / "spoken_qa" / "eval")
    else:
        assert judge.client.cfg.base_url == "http://judge.internal:9000/v1"
        assert [c["system"] for c in ev["grid"]["checkpoints"]] == [
            "ar_baseline", "nar_baseline", "ttt", "ttt_no_banom", "ttt_no_ppm", "ttt_no_sst"]


def test_evaluate_reports_a_missing_checkpoint(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "workflows/evaluate.py", *overrides(tmp_path, "embedded")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"no checkpoint under {tmp_path / 'checkpoints'}" in proc.stderr
