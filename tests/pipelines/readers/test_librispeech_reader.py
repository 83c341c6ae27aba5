"""LibriSpeech reader on the fixture: chapters as units, transcript/flac mismatches as error rows."""

from __future__ import annotations

import shutil

import pytest

from pipelines.readers import get_reader
from pipelines.records import SourceConfig


def test_rows_from_fixture(corpora, read_all, fates):
    root = corpora / "librispeech/LibriSpeech"
    rows = read_all("librispeech", root, name="ls")
    assert fates(rows) == [
        ("ls/84-121123-0000", "ok"), ("ls/84-121123-0001", "ok"),
        ("ls/84-121123-0002", "error"),  # transcript line, no flac
        ("ls/84-121123-0003", "error"),  # flac, no transcript line
        ("ls/1089-134686-0000", "ok"), ("ls/1089-134686-0001", "ok"),
    ]
    first = rows[0]
    chapter = root / "dev-clean/84/121123"
    assert first["text"] == "GO DO YOU HEAR"
    assert first["audio_path"] == str(chapter / "84-121123-0000.flac")
    assert first["locator"] == f"{chapter / '84-121123.trans.txt'}:1"
    assert (first["language"], first["split"], first["speaker"], first["task"]) == ("en", "dev", "84", "asr")
    assert first["audio_start"] == 0.0 and first["audio_end"] is None
    assert "audio file missing" in rows[2]["error"] and rows[2]["text"].startswith("AT THIS MOMENT")
    assert "no transcript line" in rows[3]["error"] and rows[3]["audio_path"].endswith("84-121123-0003.flac")
    assert rows[4]["split"] == "test"


def test_subset_selection_and_units(corpora):
    reader = get_reader("librispeech")
    source = SourceConfig(kind="librispeech", path=str(corpora / "librispeech/LibriSpeech"), subsets=("test-clean",))
    assert reader.units(source) == ["test-clean/1089/134686"]


def test_validate_errors_name_the_problem(corpora, tmp_path):
    reader = get_reader("librispeech")
    with pytest.raises(FileNotFoundError, match=r"librispeech source 'ls'.*does not exist"):
        reader.validate(SourceConfig(kind="librispeech", path=str(tmp_path / "nope"), name="ls"))
    with pytest.raises(ValueError, match=r"subsets \['train-clean-100'\] not found.*dev-clean"):
        reader.validate(SourceConfig(kind="librispeech", path=str(corpora / "librispeech/LibriSpeech"),
                                     subsets=("train-clean-100",)))
    shutil.copytree(corpora / "librispeech/LibriSpeech", tmp_path / "ls")
    for trans in (tmp_path / "ls").rglob("*.trans.txt"):
        trans.unlink()
    with pytest.raises(ValueError, match="no chapter transcripts"):
        reader.validate(SourceConfig(kind="librispeech", path=str(tmp_path / "ls")))


def test_duplicate_and_textless_transcript_lines_are_errors(corpora, tmp_path, read_all, fates):
    chapter = tmp_path / "LibriSpeech/dev-clean/84/121123"
    shutil.copytree(corpora / "librispeech/LibriSpeech/dev-clean/84/121123", chapter)
    (chapter / "84-121123.trans.txt").write_text("84-121123-0000 GO\n84-121123-0000 AGAIN\n\n84-121123-0001\n")
    assert fates(read_all("librispeech", tmp_path / "LibriSpeech")) == [
        ("librispeech/84-121123-0000", "ok"), ("librispeech/84-121123-0000@2", "error"),
        ("librispeech/84-121123-0001", "error"), ("librispeech/84-121123-0003", "error"),
    ]
