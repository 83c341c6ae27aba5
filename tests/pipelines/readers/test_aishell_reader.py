"""AISHELL-1 (speaker-dir units, cached transcript) and AISHELL-2 (wav.scp + trans.txt) readers."""

from __future__ import annotations

import shutil

import pytest

from pipelines.readers import get_reader
from pipelines.records import SourceConfig


def test_aishell1_rows(corpora, read_all, fates, meta):
    root = corpora / "aishell1/data_aishell"
    rows = read_all("aishell1", root, name="a1")
    assert fates(rows) == [
        ("a1/BAC009S0724W0121", "ok"),
        ("a1/BAC009S0002W0122", "ok"), ("a1/BAC009S0002W0123", "ok"),
        ("a1/BAC009S0002W0124", "drop:no_transcript"),  # wav without transcript: counted, not fatal
        ("a1/BAC009S0002W0125", "error"),  # transcript line without wav
    ]
    assert [r["text"] for r in rows[:3]] == [
        "甚至出现交易几乎停滞的情况", "而对楼市成交抑制作用最大的限购", "也成为地方政府的眼中钉"]
    assert [(r["split"], r["speaker"]) for r in rows[:2]] == [("dev", "S0724"), ("train", "S0002")]
    assert rows[1]["audio_path"] == str(root / "wav/train/S0002/BAC009S0002W0122.wav")
    assert meta(rows[1]) == {"transcript_line": 1}
    assert {r["language"] for r in rows} == {"zh"}
    assert rows[4]["locator"] == f"{root / 'transcript/aishell_transcript_v0.8.txt'}:3"


def test_aishell1_split_selection(corpora):
    reader = get_reader("aishell1")
    source = SourceConfig(kind="aishell1", path=str(corpora / "aishell1/data_aishell"), split="train")
    assert reader.units(source) == ["wav/train/S0002"]
    with pytest.raises(ValueError, match=r"splits \['test'\] not found"):
        reader.validate(SourceConfig(kind="aishell1", path=str(corpora / "aishell1/data_aishell"), split="test"))


def test_aishell1_transcript_edit_is_seen_by_the_cache(corpora, tmp_path, read_all):
    shutil.copytree(corpora / "aishell1/data_aishell", tmp_path / "d")
    assert read_all("aishell1", tmp_path / "d", split="dev")[0]["text"] == "甚至出现交易几乎停滞的情况"
    trans = tmp_path / "d/transcript/aishell_transcript_v0.8.txt"
    trans.write_text("BAC009S0724W0121 新 的 文本 内容\n", encoding="utf-8")
    assert read_all("aishell1", tmp_path / "d", split="dev")[0]["text"] == "新的文本内容"


def test_aishell1_validate(corpora, tmp_path):
    reader = get_reader("aishell1")
    with pytest.raises(FileNotFoundError, match=r"aishell_transcript_v0\.8\.txt"):
        reader.validate(SourceConfig(kind="aishell1", path=str(corpora / "aishell2")))
    (tmp_path / "transcript").mkdir()
    (tmp_path / "transcript/aishell_transcript_v0.8.txt").write_text("")
    (tmp_path / "wav").mkdir()
    (tmp_path / "wav/S0002.tar.gz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no split directories.*extract them first"):
        reader.validate(SourceConfig(kind="aishell1", path=str(tmp_path)))


def test_aishell2_rows(corpora, read_all, fates):
    root = corpora / "aishell2/iOS/data"
    rows = read_all("aishell2", root, name="a2")
    assert fates(rows) == [
        ("a2/IC0001W0001", "ok"), ("a2/IC0001W0002", "ok"),
        ("a2/IC0001W0003", "error"),  # listed, transcribed, wav missing
        ("a2/IC0001W0004", "drop:no_transcript"),
        ("a2/IC0001W0005", "error"),  # transcribed, not in wav.scp
    ]
    assert [r["text"] for r in rows[:2]] == ["厨房用具", "给我播放LADY GAGA的歌"]
    assert rows[0]["audio_path"] == str(root / "wav/C0001/IC0001W0001.wav")
    assert (rows[0]["speaker"], rows[0]["split"], rows[0]["language"]) == ("C0001", "train", "zh")
    assert rows[0]["locator"] == f"{root / 'wav.scp'}:1"


def test_aishell2_validate(tmp_path):
    (tmp_path / "wav.scp").write_text("")
    with pytest.raises(FileNotFoundError, match=r"aishell2 source 'aishell2': missing .*trans\.txt.*iOS/data"):
        get_reader("aishell2").validate(SourceConfig(kind="aishell2", path=str(tmp_path)))
