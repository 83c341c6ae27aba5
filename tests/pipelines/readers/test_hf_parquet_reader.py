"""HF Parquet export reader: Audio column from the `huggingface` metadata, batches, bytes or path."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.readers import get_reader
from pipelines.readers.hf_parquet import file_split
from pipelines.records import SourceConfig


def test_rows_from_fixture(corpora, read_all, fates, meta):
    root = corpora / "hf_parquet"
    rows = read_all("hf_parquet", root, name="hf")
    assert fates(rows) == [
        ("hf/data/test-00000-of-00001/0", "error"),  # empty text
        ("hf/data/train-00000-of-00002/0", "ok"), ("hf/data/train-00000-of-00002/1", "ok"),
        ("hf/data/train-00000-of-00002/2", "error"),  # audio null
        ("hf/data/train-00001-of-00002/0", "ok"),  # no bytes, path beside the parquet file
    ]
    assert [r["split"] for r in rows] == ["test", "train", "train", "train", "train"]
    assert rows[1]["text"] == "first row" and rows[1]["audio_bytes"][:4] == b"fLaC"
    assert rows[2]["audio_bytes"][:4] == b"RIFF"
    assert rows[4]["audio_bytes"] is None and rows[4]["audio_path"] == str(root / "data/clips/a3.wav")
    assert meta(rows[1]) == {"row": 0, "audio_filename": "a0.flac"}
    assert rows[1]["locator"] == f"{root / 'data/train-00000-of-00002.parquet'}#row=0"
    assert rows[3]["error"] == "audio is null" and rows[0]["error"] == "empty text"


def test_options_split_ids_and_small_batches(corpora, read_all, fates, meta):
    rows = read_all("hf_parquet", corpora / "hf_parquet", split="train",
                    options={"id_column": "id", "batch_rows": 1, "meta_columns": ["id"]})
    assert fates(rows) == [("hf_parquet/a0", "ok"), ("hf_parquet/a1", "ok"), ("hf_parquet/a2", "error"),
                           ("hf_parquet/a3", "ok")]
    assert meta(rows[1]) == {"row": 1, "id": "a1", "audio_filename": "a1.wav"}


def test_default_audio_column_without_metadata_and_text_autodetect(tmp_path, read_all):
    table = pa.table({"audio": pa.array([{"bytes": b"RIFFxxxx", "path": None}],
                                        pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                      "normalized_text": ["hello"], "spk": ["s1"], "lang": ["en_us"]})
    pq.write_table(table, tmp_path / "train-00000-of-00001.parquet")
    rows = read_all("hf_parquet", tmp_path, options={"speaker_column": "spk", "language_column": "lang"})
    assert [(r["text"], r["audio_bytes"], r["speaker"], r["language"]) for r in rows] == [
        ("hello", b"RIFFxxxx", "s1", "en")]


def test_validate_errors(corpora, tmp_path):
    reader = get_reader("hf_parquet")
    with pytest.raises(ValueError, match=r"no \*\.parquet files for split 'validation'"):
        reader.validate(SourceConfig(kind="hf_parquet", path=str(corpora / "hf_parquet"), split="validation"))
    with pytest.raises(ValueError, match=r"no text column 'caption'.*options\.text_column"):
        reader.validate(SourceConfig(kind="hf_parquet", path=str(corpora / "hf_parquet"),
                                     options={"text_column": "caption"}))
    with pytest.raises(ValueError, match=r"options\.id_column='uid' not in"):
        reader.validate(SourceConfig(kind="hf_parquet", path=str(corpora / "hf_parquet"),
                                     options={"id_column": "uid"}))
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "train-00000-of-00001.parquet")
    with pytest.raises(ValueError, match="no audio column 'audio'"):
        reader.validate(SourceConfig(kind="hf_parquet", path=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        reader.validate(SourceConfig(kind="hf_parquet", path=str(tmp_path / "nope")))


def test_file_split_names():
    assert file_split("data/train-00000-of-00003.parquet") == "train"
    assert file_split("validation-00001-of-00002-a1b2c3.parquet") == "validation"
    assert file_split("default/test/0000.parquet") == "test"
    assert file_split("0000.parquet") == ""
