"""Issue #17 end to end: the reference implementation's own data, as a fresh clone gets it (reference-shaped JSON
with GLM-4-Voice codes inline + its data_config with relative paths), tokenized on a local Ray with the declared
codec (no weights: no speech-synthesis or codec actors), exported back to identical records, and trained on
for two steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir

from pipelines import duck
from tests.pipelines.reference_samples import CHATS, DOC_EN, DOC_ZH, write_reference_data
from workflows import cli
from workflows import tokenize_data as tokenize_workflow

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "workflows" / "conf"
GOOD = {"asr_tts": [CHATS["asr"]], "audio_chat": [CHATS["audio_chat"]], "sec_aac_asc_task": [CHATS["aac"]],
        "text_chat": [CHATS["text_chat"]], "interleaved_data_zh": [DOC_ZH], "interleaved_data_en": [DOC_EN]}
TINY_MODEL = ["model.config.hidden_size=32", "model.config.intermediate_size=64", "model.config.num_hidden_layers=1",
              "model.config.num_attention_heads=2", "model.config.num_key_value_heads=1"]


def compose_cfg(*overrides: str) -> Any:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("config", overrides=list(overrides))


def as_written(record: dict[str, Any]) -> dict[str, Any]:
    """A reference record as the export writes it: messages keep role and content (the reference's trainer
    reads nothing else; `text_content` is not carried by shards)."""
    if "text" in record:
        return record
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in record["messages"]]}


@pytest.fixture(scope="module")
def tokenized(ray_local: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import ray.data

    root = tmp_path_factory.mktemp("reference_run")
    config = write_reference_data(root / "TtT")
    stages: list[str] = []
    original = ray.data.Dataset.map_batches

    def spy(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        stages.append(getattr(fn, "__name__", repr(fn)))
        return original(self, fn, *args, **kwargs)

    cfg = compose_cfg(f"paths.root={root}", "data=reference", f"data.sources_file={config}",
                      "codec=glm4voice_declared", "data.shards.rows_per_shard=4", "data.job.rows_per_block=2")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ray.data.Dataset, "map_batches", spy)
        report = tokenize_workflow.run(cfg)
    return {"root": root, "shards": root / "shards", "report": report, "stages": stages}


def test_reference_data_tokenizes_without_weights_tts_or_codec_actors(tokenized: dict[str, Any]) -> None:
    stages = tokenized["stages"]
    assert stages[:4] == ["read_units", "decode_audio", "without_codes", "build_rows"]
    assert "Synthesize" not in stages and "Encode" not in stages
    manifest = tokenized["report"].manifest
    assert manifest["layout"] == "reference" and manifest["audio_offset"] == 151685
    assert manifest["codec"] == {"name": "glm4voice", "version": "", "token_rate": 12.5, "codebook_size": 16384,
                                 "sample_rate": 16000, "output_sample_rate": 22050, "params_hash": "declared"}
    counts = manifest["counts"]["sources"]
    assert {name: (c["read"], c["written_records"], c["quarantined"]) for name, c in counts.items()} == {
        "asr_tts": (1, 1, 0), "audio_chat": (2, 1, 1), "sec_aac_asc_task": (1, 1, 0), "text_chat": (1, 1, 0),
        "interleaved_data_zh": (1, 1, 0), "interleaved_data_en": (2, 1, 1)}
    tasks = duck.query("SELECT source, task FROM samples ORDER BY source", tokenized["shards"]).to_pylist()
    assert {r["source"]: r["task"] for r in tasks} == {
        "asr_tts": "asr", "audio_chat": "audio_chat", "sec_aac_asc_task": "aac", "text_chat": "text_chat",
        "interleaved_data_zh": "interleaved", "interleaved_data_en": "interleaved"}
    quarantine = duck.query("SELECT source, stage, error, detail FROM quarantine ORDER BY source",
                            tokenized["shards"]).to_pylist()
    assert [(r["source"], r["stage"], r["error"]) for r in quarantine] == [
        ("audio_chat", "build", "build_failed"), ("interleaved_data_en", "build", "build_failed")]
    assert "unknown special token '<|begin_of_speech|>'" in quarantine[0]["detail"]
    assert "<|audio_16384|> at character 25 is out of range" in quarantine[1]["detail"]


def test_export_gives_the_reference_records_back_identical(tokenized: dict[str, Any], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "export"
    assert cli.main(["reference", "export", "--shards", str(tokenized["shards"]), "--out", str(out)]) == 0
    assert "wrote 6 samples" in capsys.readouterr().out
    for source, records in GOOD.items():
        assert json.loads((out / f"{source}.json").read_text()) == [as_written(r) for r in records], source
    data_config = json.loads((out / "data_config.json").read_text())
    assert {Path(e["path"]).stem: e["data_type"] for e in data_config} == {
        source: "PT" if source.startswith("interleaved") else "IT" for source in GOOD}
    assert all(e["sample_ratio"] == 1 and Path(e["path"]).is_absolute() for e in data_config)
    # a DuckDB selection of the shards
    picked = tmp_path / "asr"
    assert cli.main(["reference", "export", "--shards", str(tokenized["shards"]), "--out", str(picked),
                     "--where", "task = 'asr'"]) == 0
    assert sorted(p.name for p in picked.iterdir()) == ["asr_tts.json", "data_config.json"]
    assert cli.main(["reference", "export", "--shards", str(tokenized["shards"]), "--out", str(picked),
                     "--where", "no_such_column = 1"]) == 2
    assert "no_such_column" in capsys.readouterr().err


def test_two_training_steps_on_the_reference_shards(tokenized: dict[str, Any]) -> None:
    from workflows.train import run

    root = tokenized["root"]
    cfg = compose_cfg(f"paths.root={root}", "data=reference", "codec=glm4voice_declared", *TINY_MODEL,
                      "train.max_steps=2", "train.max_tokens=512", "train.batch.global_size=2",
                      "train.batch.micro_size=2", "train.validation.fraction=0", "train.checkpoint.every_steps=2",
                      "train.logging.report_every_steps=1", "train.scaling.threads_per_worker=1")
    final = run(cfg)
    assert final["total_steps"] == 2 and final["metrics"]["step"] == 2
    manifest = json.loads((Path(final["model"]) / "vocab_manifest.json").read_text())
    assert manifest["layout"] == "reference" and manifest["codec"]["params_hash"] == "declared"
    assert pq.read_metadata(next((tokenized["shards"] / "parquet").glob("*.parquet"))).num_rows > 0
