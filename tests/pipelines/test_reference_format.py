"""The reference implementation's own data (issue #17), without the job: its record shape verbatim through the
reader and the sequence builder in the reference layout, with the declared GLM-4-Voice identity (no weights);
each record's way back to the same inline string; its tasks; its data_config as a sources file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from pipelines.readers import get_reader
from pipelines.records import SourceConfig
from pipelines.reference_format import is_data_config, reference_record, reference_task, sources_from_data_config
from pipelines.tasks import build_sample
from pipelines.tokenize_job import JobConfigError, load_sources, settings_from_config
from pipelines.tokenize_stages import record_of
from tests.pipelines.reference_samples import (
    CAPTION,
    CHATS,
    DOC_EN,
    DOC_ZH,
    OUT_OF_RANGE,
    UNKNOWN_MARKER,
    write_reference_data,
)
from tokenization.codecs import build_codec
from tokenization.sequence import validate_spans
from tokenization.vocab import AUDIO_TOKEN_RE, UnifiedVocab
from tokenization.vocab_factory import make_vocab
from workflows import cli

ROOT = Path(__file__).resolve().parents[2]
DECLARED = yaml.safe_load((ROOT / "workflows/conf/codec/glm4voice_declared.yaml").read_text())


@pytest.fixture(scope="module")
def vocab() -> UnifiedVocab:
    return make_vocab("bundled:qwen", build_codec(DECLARED).identity, "reference")


def reader_rows(tmp_path: Path, records: list[dict[str, Any]], **source: Any) -> list[dict[str, Any]]:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2))
    s = SourceConfig.from_mapping({"kind": "ttt_json", "path": str(path), "name": "ref", **source})
    reader = get_reader("ttt_json")
    return [row for unit in reader.units(s) for row in reader.read(s, unit)]


def build(vocab: UnifiedVocab, row: dict[str, Any]) -> Any:
    return build_sample(vocab, record_of(row, has_audio=False))


@pytest.mark.parametrize("record", [*CHATS.values(), DOC_ZH, DOC_EN], ids=[*CHATS, "doc_zh", "doc_en"])
def test_every_reference_record_builds_and_comes_back_identical(tmp_path: Path, vocab: UnifiedVocab,
                                                                record: dict[str, Any]) -> None:
    (row,) = reader_rows(tmp_path, [record])
    assert not row["error"]
    sample = build(vocab, row)
    seq = sample.sequence
    validate_spans(vocab, seq.input_ids, seq.spans)
    # every <|audio_N|> at 151685 + N, in order, inside audio spans only
    written = [int(n) for n in AUDIO_TOKEN_RE.findall(json.dumps(record, ensure_ascii=False))]
    audio_positions = [i for s in seq.spans if s.kind == "audio" for i in range(s.start, s.end)
                       if vocab.is_audio(seq.input_ids[i:i + 1])[0]]
    assert seq.input_ids[audio_positions].tolist() == [151685 + n for n in written]
    # final spans are the ones the reference opens with <|begin_of_quad|>
    finals = [int(seq.input_ids[s.start]) for s in seq.spans if s.kind == "audio" and s.is_final_in_turn]
    assert finals == ([vocab.id("<|begin_of_quad|>")] if written else [])
    back = reference_record(vocab, seq.input_ids, seq.spans)
    if "text" in record:
        assert back == {"text": record["text"]}
    else:
        assert back == {"messages": [{"role": m["role"], "content": m["content"]} for m in record["messages"]]}


def test_reference_tasks_come_from_what_the_data_says(tmp_path: Path) -> None:
    rows = reader_rows(tmp_path, [*CHATS.values(), DOC_EN])
    assert [r["task"] for r in rows] == [*CHATS, "interleaved"]
    assert json.loads(rows[0]["messages_json"]) == CHATS["asr"]["messages"]  # text_content kept as written
    emotion = json.loads(json.dumps(CAPTION).replace("generate a caption for", "identify the emotion in"))
    scene = json.loads(json.dumps(CAPTION).replace("generate a caption for", "classify the acoustic scene of"))
    assert reference_task(emotion["messages"]) == "sec" and reference_task(scene["messages"]) == "asc"
    assert {r["task"] for r in reader_rows(tmp_path, list(CHATS.values()), task="audio_chat")} == {"audio_chat"}


def test_bad_codes_and_markers_fail_per_record_naming_the_token(tmp_path: Path, vocab: UnifiedVocab) -> None:
    out_of_range, unknown = reader_rows(tmp_path, [OUT_OF_RANGE, UNKNOWN_MARKER])
    with pytest.raises(ValueError, match=r"<\|audio_16384\|> at character 25 is out of range: codec glm4voice has "
                                         r"16384 codes"):
        build(vocab, out_of_range)
    with pytest.raises(ValueError, match=r"unknown special token '<\|begin_of_speech\|>' at character 0"):
        build(vocab, unknown)
    with pytest.raises(ValueError, match=r"unknown special token '<\|Begin_Of_Audio\|>'"):
        vocab.encode_mixed("<|Begin_Of_Audio|>")  # not silently kept as text


def test_declared_codec_imports_plain_reference_records_as_written(tmp_path: Path, vocab: UnifiedVocab) -> None:
    """Nothing can be synthesised without weights, so a reference document without audio trains as text, as in
    the reference, instead of asking for speech."""
    (row,) = reader_rows(tmp_path, [{"text": "Plain pre-training text. Two sentences."}])
    sample = build(vocab, row)
    assert [s.kind for s in sample.sequence.spans] == ["text"]
    assert reference_record(vocab, sample.sequence.input_ids, sample.sequence.spans) == {
        "text": "Plain pre-training text. Two sentences."}


# ---- data_config -----------------------------------------------------------------------------------------

def test_data_config_is_a_sources_file(tmp_path: Path) -> None:
    config = write_reference_data(tmp_path / "TtT")
    # the reference's own file shape, tab-indented JSON too (YAML would refuse the tabs)
    config.write_text(json.dumps(json.loads(config.read_text()), indent="\t"))
    sources = load_sources({"sources_file": str(config)})
    datasets = (tmp_path / "TtT" / "datasets").absolute()
    assert [(s.kind, s.name, Path(s.path), s.ratio, s.task) for s in sources] == [
        ("ttt_json", "asr_tts", datasets / "asr_tts.json", 1.0, ""),
        ("ttt_json", "audio_chat", datasets / "audio_chat.json", 1.0, ""),
        ("ttt_json", "sec_aac_asc_task", datasets / "sec_aac_asc_task.json", 1.0, ""),
        ("ttt_json", "text_chat", datasets / "text_chat.json", 1.0, ""),
        ("ttt_json", "interleaved_data_zh", datasets / "interleaved_data_zh.json", 1.0, "interleaved"),
        ("ttt_json", "interleaved_data_en", datasets / "interleaved_data_en.json", 1.0, "interleaved")]


def test_data_config_entries_map_ratio_type_names_and_tasks(tmp_path: Path) -> None:
    entries = [{"path": "/abs/a.json", "sample_ratio": 0.25, "data_type": "PT"},
               {"path": "sub/a.json", "sample_ratio": "2"},
               {"path": "b.jsonl", "data_type": "it", "task": "asr", "name": "mine"}]
    assert is_data_config(entries) and not is_data_config([{"kind": "ttt_json", "path": "x"}])
    assert sources_from_data_config(entries, tmp_path) == [
        {"kind": "ttt_json", "path": "/abs/a.json", "name": "a", "ratio": 0.25, "task": "interleaved"},
        {"kind": "ttt_json", "path": str(tmp_path / "sub/a.json"), "name": "a_2", "ratio": 2.0, "task": ""},
        {"kind": "ttt_json", "path": str(tmp_path / "b.jsonl"), "name": "mine", "ratio": 1.0, "task": "asr"}]
    with pytest.raises(ValueError) as err:
        sources_from_data_config([{"path": "a.json", "data_type": "SFT"}, {"sample_ratio": 1},
                                  {"path": "c.json", "weight": 2}, {"path": "d.json", "sample_ratio": "all"}],
                                 tmp_path)
    msg = str(err.value)
    assert "[0]: data_type 'SFT'" in msg and "[1]: no 'path'" in msg and "[2]: unknown keys ['weight']" in msg
    assert "[3]: sample_ratio 'all' is not a number" in msg
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"path": "a.json", "data_type": "SFT"}]))
    with pytest.raises(JobConfigError, match=r"bad\.json: not a valid data_config: \[0\]: data_type"):
        load_sources({"sources_file": str(bad)})


def test_sources_command_prints_the_data_config_as_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    config = write_reference_data(tmp_path)
    assert cli.main(["reference", "sources", str(config)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == [{"kind": s.kind, "path": s.path, "name": s.name, "ratio": s.ratio, "task": s.task}
                       for s in load_sources({"sources_file": str(config)})]
    (tmp_path / "nope.json").write_text("[1, 2]")
    assert cli.main(["reference", "sources", str(tmp_path / "nope.json")]) == 2
    assert "expected a JSON list of {path, sample_ratio, data_type}" in capsys.readouterr().err


def test_declared_codec_admits_only_sources_that_are_already_codes(tmp_path: Path) -> None:
    sources = [{"kind": "ttt_json", "path": str(tmp_path)}, {"kind": "librispeech", "path": str(tmp_path)}]
    cfg = {"paths": {"shards": str(tmp_path / "shards")}, "codec": DECLARED, "data": {"sources": sources}}
    with pytest.raises(JobConfigError, match=r"source 'librispeech' \(librispeech\) has audio to encode, but codec "
                                             r"'glm4voice' is declared \(no weights\)") as err:
        settings_from_config(cfg)
    assert "'ttt_json'" not in str(err.value).split("has audio")[0]
    settings_from_config({**cfg, "data": {"sources": sources[:1]}})


def test_reference_record_refuses_what_is_not_a_chat_turn(vocab: UnifiedVocab) -> None:
    from tokenization.sequence import Span

    ids = np.asarray(vocab.encode_text("no chat header"))
    with pytest.raises(ValueError, match="turn 0 \\(user\\) is not a complete chat turn"):
        reference_record(vocab, ids, [Span("text", 0, len(ids), "user", False)])


def test_samples_our_builders_make_export_to_strings_that_import_to_the_same_ids(vocab: UnifiedVocab) -> None:
    """The way back works for data made here too: an ASR sample and an interleaved document built by our task
    builders, written as reference records and read back as the reference's data, give the same ids."""
    from pipelines.tasks import Record

    rng = np.random.default_rng(0)
    asr = build_sample(vocab, Record("libri/1", "librispeech", "asr", "en", "HELLO WORLD", has_audio=True,
                                     audio=(rng.integers(0, 16384, 20),)))
    doc = build_sample(vocab, Record("docs/1", "hf_parquet", "interleaved", "zh", "第一句。第二句。",
                                     speech=(rng.integers(0, 16384, 9), rng.integers(0, 16384, 7))))
    for sample in (asr, doc):
        assert sum(s.kind == "audio" for s in sample.sequence.spans) == (1 if sample is asr else 2)
        record = reference_record(vocab, sample.sequence.input_ids, sample.sequence.spans)
        messages = tuple(record.get("messages", ()))
        again = build_sample(vocab, Record("ref/1", "ttt_json", sample.task, text=record.get("text", ""),
                                           messages=messages))
        assert again.sequence.input_ids.tolist() == sample.sequence.input_ids.tolist()
        assert [(s.kind, s.start, s.end, s.is_final_in_turn) for s in again.sequence.spans] == [
            (s.kind, s.start, s.end, s.is_final_in_turn) for s in sample.sequence.spans]
