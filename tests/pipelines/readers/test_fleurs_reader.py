"""FLEURS reader: header-less TSV + one streamed pass over the gzip tar per (lang, split)."""

from __future__ import annotations

import pytest

from pipelines.readers import get_reader
from pipelines.records import SourceConfig
from tokenization.audio import load_audio


def test_rows_from_fixture(corpora, read_all, fates, meta):
    root = corpora / "fleurs"
    rows = read_all("fleurs", root, name="fl")
    assert fates(rows) == [
        ("fl/cmn_hans_cn/22221", "ok"),
        ("fl/en_us/train-line4", "error"),  # 5 columns instead of 7
        ("fl/en_us/11111", "ok"), ("fl/en_us/11112", "ok"),  # same sentence id 1001, two speakers
        ("fl/en_us/99999", "drop:no_transcript"),  # in the tar only
        ("fl/en_us/11113", "error"),  # in the TSV only
    ]
    assert [(r["language"], r["split"]) for r in rows] == [("zh", "test")] + [("en", "train")] * 5
    assert [r["text"] for r in rows if not r["error"] and not r["drop_reason"]] == [
        "你好，世界。", "Hello, World!", "Hello, World!"]
    assert meta(rows[2]) == {"sentence_id": "1001", "transcription": "hello world", "num_samples": 4000,
                             "gender": "MALE", "file_name": "11111.wav", "archive_member": "train/11111.wav"}
    assert rows[2]["locator"] == f"{root / 'data/en_us/train.tsv'}:1"
    assert rows[2]["audio_path"] == "" and rows[4]["audio_bytes"] is None
    wav, sr, _ = load_audio(rows[2]["audio_bytes"])
    assert (sr, len(wav)) == (16000, 4000)
    assert "not found in" in rows[5]["error"] and rows[5]["text"] == "Missing one."


def test_language_and_split_selection(corpora):
    reader = get_reader("fleurs")
    source = SourceConfig(kind="fleurs", path=str(corpora / "fleurs/data"), subsets=("en_us",), split="train")
    reader.validate(source)
    assert reader.units(source) == ["en_us/train"]
    with pytest.raises(ValueError, match=r"languages \['fr_fr'\] not found.*cmn_hans_cn"):
        reader.validate(SourceConfig(kind="fleurs", path=str(corpora / "fleurs"), subsets=("fr_fr",)))
    with pytest.raises(ValueError, match=r"no <lang>/<split>\.tsv"):
        reader.validate(SourceConfig(kind="fleurs", path=str(corpora / "fleurs"), subsets=("en_us",), split="dev"))


def test_missing_archive_makes_every_row_an_error(tmp_path, read_all, fates):
    (tmp_path / "data/xx_yy").mkdir(parents=True)
    (tmp_path / "data/xx_yy/dev.tsv").write_text("1\t5.wav\tHi.\thi\th i |\t16000\tMALE\n")
    rows = read_all("fleurs", tmp_path)
    assert fates(rows) == [("fleurs/xx_yy/5", "error")]
    assert rows[0]["error"].startswith("audio archive missing") and rows[0]["language"] == "xx"


def test_validate_wrong_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"fleurs source 'fleurs': .*does not exist"):
        get_reader("fleurs").validate(SourceConfig(kind="fleurs", path=str(tmp_path / "x")))
