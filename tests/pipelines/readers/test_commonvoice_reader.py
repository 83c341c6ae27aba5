"""Common Voice reader: both header generations, bare quotes kept, missing clip / empty sentence as errors."""

from __future__ import annotations

import shutil

import pytest

from pipelines.readers import get_reader
from pipelines.records import SourceConfig

OLD = "commonvoice/cv-corpus-5.1-2020-06-22/en"
NEW = "commonvoice/cv-corpus-17.0-2024-03-15/zh-CN"


def test_old_header_rows(corpora, read_all, fates, meta):
    rows = read_all("commonvoice", corpora / OLD, name="cv")
    assert fates(rows) == [
        ("cv/common_voice_en_100", "ok"), ("cv/common_voice_en_101", "ok"),
        ("cv/common_voice_en_102", "error"), ("cv/common_voice_en_103", "error"),
    ]
    assert [r["text"] for r in rows[:2]] == ['He said "hello" and left.', 'The "quick" fox\'s den.']
    tsv = corpora / OLD / "train.tsv"
    assert [r["locator"] for r in rows] == [f"{tsv}:{n}" for n in (2, 3, 4, 5)]
    assert rows[0]["audio_path"] == str(corpora / OLD / "clips/common_voice_en_100.mp3")
    assert (rows[0]["language"], rows[0]["split"], rows[0]["speaker"]) == ("en", "train", "c1")
    assert meta(rows[0]) == {"up_votes": "2", "down_votes": "0", "age": "twenties", "gender": "male",
                             "accent": "us", "locale": "en"}
    assert rows[2]["error"].startswith("audio file missing") and rows[3]["error"] == "empty sentence"


def test_new_header_rows_and_locale_language(corpora, read_all, fates, meta):
    rows = read_all("commonvoice", corpora / NEW, name="cv")
    assert fates(rows) == [("cv/common_voice_zh-CN_200", "ok"), ("cv/common_voice_zh-CN_201", "ok")]
    assert [r["text"] for r in rows] == ["今天天气很好。", "“你好”，他说。"]
    assert {r["language"] for r in rows} == {"zh"}
    assert meta(rows[0])["sentence_id"] == "s200" and meta(rows[0])["accents"] == "出生地：北京"


def test_split_selects_the_tsv(corpora, read_all, fates):
    rows = read_all("commonvoice", corpora / OLD, split="dev")
    assert fates(rows) == [("commonvoice/common_voice_en_104", "ok")]
    assert rows[0]["split"] == "dev"


def test_tab_inside_a_sentence_is_an_error_not_a_shifted_row(corpora, tmp_path, read_all, fates):
    shutil.copytree(corpora / OLD, tmp_path / "en")
    tsv = tmp_path / "en" / "train.tsv"
    lines = tsv.read_text().splitlines()
    lines[1] = lines[1].replace("and left.", "and\tleft.")
    tsv.write_text("\n".join(lines) + "\n")
    rows = read_all("commonvoice", tmp_path / "en")
    assert fates(rows)[0] == ("commonvoice/common_voice_en_100", "error")
    assert "more fields than header columns" in rows[0]["error"]


def test_validate_errors(corpora, tmp_path):
    reader = get_reader("commonvoice")
    with pytest.raises(FileNotFoundError, match=r"commonvoice source 'commonvoice'.*clips"):
        reader.validate(SourceConfig(kind="commonvoice", path=str(corpora / "commonvoice")))
    with pytest.raises(FileNotFoundError, match=r"validated\.tsv"):
        reader.validate(SourceConfig(kind="commonvoice", path=str(corpora / OLD), split="validated"))
    (tmp_path / "clips").mkdir()
    (tmp_path / "train.tsv").write_text("client_id\tfile\ttext\n")
    with pytest.raises(ValueError, match=r"header lacks \['path', 'sentence'\]"):
        reader.validate(SourceConfig(kind="commonvoice", path=str(tmp_path)))
