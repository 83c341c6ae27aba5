"""GigaSpeech reader: punctuation tags, casing, garbage-tag drops, braces in subsets, streaming."""

from __future__ import annotations

import json
import shutil

import pytest

from pipelines.readers import get_reader
from pipelines.readers.gigaspeech import GarbageUtterance, gigaspeech_text
from pipelines.records import SourceConfig

POD = "POD0000000025"


def test_rows_from_fixture(corpora, read_all, fates, meta):
    root = corpora / "gigaspeech"
    rows = read_all("gigaspeech", root, name="gs")
    assert fates(rows) == [
        (f"gs/{POD}_S0000000", "ok"), (f"gs/{POD}_S0000001", "drop:garbage_tag"), (f"gs/{POD}_S0000002", "ok"),
        ("gs/YOU0000000315_S0000000", "ok"), ("gs/AUD0000000001_S0000000", "error"),
    ]
    assert [r["text"] for r in rows] == [
        "As they're leaving, can I pull zahra aside really quickly?", "", "I'm fine. Thank you!", "Hello world.",
        "The audio is missing.",
    ]
    assert [(r["audio_start"], r["audio_end"]) for r in rows[:4]] == [(0.0, 0.45), (0.45, 0.7), (0.7, 0.95),
                                                                       (0.1, 0.6)]
    assert rows[0]["audio_path"] == str(root / f"audio/podcast/P0001/{POD}.opus")
    assert [r["split"] for r in rows] == ["train", "train", "train", "dev", "train"]
    assert [r["speaker"] for r in rows] == ["", "", "", "S1", ""]  # "N/A" means unknown
    assert meta(rows[0]) == {"aid": POD, "subsets": ["XL", "L", "M", "S", "XS"]}
    assert "<NOISE>" in meta(rows[1])["why"]
    assert rows[4]["error"].startswith("audio file missing")


@pytest.mark.parametrize("subsets", [["{S}"], ["s"], "S"])
def test_subset_spellings_with_or_without_braces(subsets, corpora, read_all, fates):
    assert fates(read_all("gigaspeech", corpora / "gigaspeech", subsets=subsets)) == [
        (f"gigaspeech/{POD}_S0000000", "ok")]


def test_upper_case_option_keeps_corpus_casing(corpora, read_all):
    rows = read_all("gigaspeech", corpora / "gigaspeech", subsets=["DEV"], options={"case": "upper"})
    assert [r["text"] for r in rows] == ["HELLO WORLD."]


def test_text_normalisation():
    assert gigaspeech_text("I THINK I'LL GO <COMMA> DON'T YOU <QUESTIONMARK> YES <EXCLAMATIONPOINT> OK") == \
        "I think I'll go, don't you? Yes! Ok"
    assert gigaspeech_text("<COMMA> LEADING TAG IS DROPPED <PERIOD>") == "Leading tag is dropped."
    with pytest.raises(GarbageUtterance, match="MUSIC"):
        gigaspeech_text("SOME WORDS <MUSIC>")
    with pytest.raises(ValueError, match="unknown tag <UNK>"):
        gigaspeech_text("HELLO <UNK>")
    with pytest.raises(ValueError, match="empty text"):
        gigaspeech_text("<PERIOD>")


def test_validate_errors(corpora, tmp_path):
    reader = get_reader("gigaspeech")
    with pytest.raises(FileNotFoundError, match=r"gigaspeech source 'gigaspeech': .* does not exist"):
        reader.validate(SourceConfig(kind="gigaspeech", path=str(tmp_path / "none")))
    with pytest.raises(ValueError, match=r"subsets \['XXL'\] not found"):
        reader.validate(SourceConfig(kind="gigaspeech", path=str(corpora / "gigaspeech"), subsets=("{XXL}",)))
    with pytest.raises(ValueError, match=r"options\.case must be one of"):
        reader.validate(SourceConfig(kind="gigaspeech", path=str(corpora / "gigaspeech"),
                                     options={"case": "title"}))


def test_manifest_is_streamed_not_loaded(corpora, tmp_path, counted_opens):
    shutil.copy(corpora / "gigaspeech" / f"audio/podcast/P0001/{POD}.opus", tmp_path / "a.opus")
    n = 4000
    audios = [{"aid": f"POD{i:010d}", "path": "a.opus", "format": "opus", "segments": [
        {"sid": f"POD{i:010d}_S0", "speaker": "N/A", "begin_time": 0.0, "end_time": 0.5, "subsets": ["{XL}"],
         "text_tn": "A REASONABLY LONG SENTENCE TO MAKE THE MANIFEST BIG ENOUGH <PERIOD> " * 3}]} for i in range(n)]
    manifest = tmp_path / "GigaSpeech.json"
    manifest.write_text(json.dumps({"dataset": "GigaSpeech", "audios": audios}, indent=2))
    size = manifest.stat().st_size
    rows = get_reader("gigaspeech").read(SourceConfig(kind="gigaspeech", path=str(tmp_path)), "GigaSpeech.json#0/1")
    assert next(rows)["record_id"] == "gigaspeech/POD0000000000_S0"
    assert counted_opens[0].total <= 256 * 1024 < size // 5
    assert sum(1 for _ in rows) == n - 1 and max(counted_opens[0].sizes) <= 64 * 1024
