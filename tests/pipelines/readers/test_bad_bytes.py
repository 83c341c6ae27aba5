"""Issue #16 item 1: one record that is not UTF-8 costs that record only, in every reader with a text input.

Each test reads a copy of a fixture corpus, corrupts one record in place (byte 0xff) and reads it again: the
second read must be the first with that one record turned into an error row naming file:line, and every
other row unchanged. JSON arrays and the long-audio JSON manifests are the documented exception: the parser
cannot resync after bad bytes, so earlier records are kept and the stream ends with one error row.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.readers.common import iter_csv_records, iter_text_lines

Rows = list[dict[str, Any]]
BAD = b"\xff"


def corrupt(path: Path, lineno: int, after: bytes) -> int:
    """Insert byte 0xff right after `after` on line `lineno` (1-based) of a text file, gzip when *.gz;
    returns the 1-based column of the bad byte within its line."""
    compressed = path.name.endswith(".gz")
    lines = (gzip.decompress(path.read_bytes()) if compressed else path.read_bytes()).split(b"\n")
    line = lines[lineno - 1]
    cut = line.index(after) + len(after)
    lines[lineno - 1] = line[:cut] + BAD + line[cut:]
    data = b"\n".join(lines)
    path.write_bytes(gzip.compress(data) if compressed else data)
    return cut + 1


def utf8_error(column: int) -> str:
    return f"line is not valid UTF-8 (byte 0xff at column {column})"


def assert_one_record_lost(before: Rows, after: Rows, old_id: str, new_id: str, locator: str, error: str) -> None:
    """`after` is `before` with the record `old_id` turned into error row `new_id` at `locator`; rest identical."""
    pos = [r["record_id"] for r in before].index(old_id)
    assert [r["record_id"] for r in after] == [r["record_id"] for r in before[:pos]] + [new_id] + [
        r["record_id"] for r in before[pos + 1:]]
    assert (after[pos]["error"], after[pos]["locator"]) == (error, locator)
    assert after[:pos] + after[pos + 1:] == before[:pos] + before[pos + 1:]


def test_text_lines_decode_one_by_one(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"\xef\xbb\xbfa b\r\nbad \xe4\xb8\n\nlast \xe4\xbd\xa0")
    lines = list(iter_text_lines(path))
    assert [(x.lineno, x.error) for x in lines] == [
        (1, ""), (2, "line is not valid UTF-8 (byte 0xe4 at column 5)"), (3, ""), (4, "")]
    assert [lines[0].text, lines[2].text, lines[3].text] == ["a b", "", "last 你"]


def test_csv_row_spanning_lines_with_a_bad_byte_keeps_the_parser_in_step(tmp_path):
    path = tmp_path / "q.csv"
    path.write_bytes(b'q,a\n"one\ntwo",1\n"three\nfo\xffur",2\n"five",3\n')
    records = list(iter_csv_records(path))
    assert [(r.index, r.locator, r.error) for r in records] == [
        (0, f"{path}:2", ""), (1, f"{path}:5", "line is not valid UTF-8 (byte 0xff at column 3)"),
        (2, f"{path}:6", "")]
    assert [records[0].fields, records[2].fields] == [{"q": "one\ntwo", "a": "1"}, {"q": "five", "a": "3"}]


def test_csv_row_that_csv_rejects_costs_that_row_only(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("q,a\n" + "x" * 200_000 + ",1\nok,2\n")  # over csv's default field size limit
    records = list(iter_csv_records(path))
    assert [(r.locator, r.error.split(":")[0]) for r in records] == [(f"{path}:2", "unparsable CSV row"),
                                                                     (f"{path}:3", "")]
    assert records[1].fields == {"q": "ok", "a": "2"}


def test_csv_header_that_is_not_utf8_fails_the_file(tmp_path):
    path = tmp_path / "q.csv"
    path.write_bytes(b"q\xff,a\nx,1\n")
    with pytest.raises(ValueError, match=r"q\.csv:1: CSV header line is not valid UTF-8"):
        list(iter_csv_records(path))


@pytest.mark.parametrize(("kind", "corpus", "file", "lineno", "anchor", "good_id", "bad_id", "options"), [
    # the flac of the bad line is not reported a second time as having no transcript line
    ("librispeech", "librispeech/LibriSpeech", "dev-clean/84/121123/84-121123.trans.txt", 2, b"STAIRCASE",
     "librispeech/84-121123-0001", "librispeech/84-121123-0001", {}),
    ("aishell1", "aishell1/data_aishell", "transcript/aishell_transcript_v0.8.txt", 2, "眼中".encode(),
     "aishell1/BAC009S0002W0123", "aishell1/BAC009S0002W0123", {}),
    ("commonvoice", "commonvoice/cv-corpus-5.1-2020-06-22/en", "train.tsv", 3, b"quick",
     "commonvoice/common_voice_en_101", "commonvoice/train-row1", {}),
    # the tar member named on the bad line is matched to it, not dropped as untranscribed
    ("fleurs", "fleurs", "data/en_us/train.tsv", 2, b"Hello", "fleurs/en_us/11112", "fleurs/en_us/11112",
     {"subsets": ["en_us"]}),
    ("spoken_qa", "spoken_qa", "eval_datas/llama_questions/llama_questions.csv", 2, b"capital",
     "spoken_qa/llama_questions/0", "spoken_qa/llama_questions/0", {}),
    ("lhotse", "lhotse", "mini_supervisions_dev.jsonl.gz", 2, b"SECOND", "lhotse/sup2",
     "lhotse/mini_supervisions_dev.jsonl.gz:2", {}),
])
def test_one_bad_line_costs_one_record(corpora, tmp_path, read_all, kind, corpus, file, lineno, anchor, good_id,
                                       bad_id, options):
    shutil.copytree(corpora / corpus, tmp_path / kind)
    path = tmp_path / kind / file
    before = read_all(kind, tmp_path / kind, **options)
    column = corrupt(path, lineno, anchor)
    after = read_all(kind, tmp_path / kind, **options)
    assert_one_record_lost(before, after, good_id, bad_id, f"{path}:{lineno}", utf8_error(column))


def test_aishell1_line_whose_id_is_unreadable_is_reported_once(corpora, tmp_path, read_all, fates):
    shutil.copytree(corpora / "aishell1/data_aishell", tmp_path / "a1")
    trans = tmp_path / "a1/transcript/aishell_transcript_v0.8.txt"
    corrupt(trans, 2, b"BAC009S00")  # inside the speaker part of the id: no unit owns the line
    rows = read_all("aishell1", tmp_path / "a1")
    unreadable = [r for r in rows if r["error"].startswith("line is not valid UTF-8")]
    assert [(r["record_id"], r["locator"]) for r in unreadable] == [("aishell1/line@2", f"{trans}:2")]
    assert ("aishell1/BAC009S0002W0123", "drop:no_transcript") in fates(rows)  # its wav: nothing matched it


@pytest.mark.parametrize(("name", "lineno", "after", "utt"), [
    ("trans.txt", 2, b"LADY", "IC0001W0002"),
    ("wav.scp", 1, b"wav/C0001", "IC0001W0001"),
])
def test_aishell2_transcript_and_wav_scp_lines(corpora, tmp_path, read_all, name, lineno, after, utt):
    shutil.copytree(corpora / "aishell2/iOS/data", tmp_path / "a2")
    before = read_all("aishell2", tmp_path / "a2")
    column = corrupt(tmp_path / "a2" / name, lineno, after)
    after_rows = read_all("aishell2", tmp_path / "a2")
    assert_one_record_lost(before, after_rows, f"aishell2/{utt}", f"aishell2/{utt}",
                           f"{tmp_path / 'a2' / name}:{lineno}", utf8_error(column))


def test_lhotse_cuts_line(corpora, tmp_path, read_all, fates):
    shutil.copytree(corpora / "lhotse", tmp_path / "lh")
    cuts = tmp_path / "lh/mini_cuts_test.jsonl.gz"
    column = corrupt(cuts, 1, b"IN CUT")
    rows = read_all("lhotse", tmp_path / "lh", subsets=["test"])
    assert fates(rows) == [("lhotse/mini_cuts_test.jsonl.gz:1", "error"), ("lhotse/cut2", "drop:no_supervision"),
                           ("lhotse/mix1", "error")]
    assert (rows[0]["error"], rows[0]["locator"]) == (utf8_error(column), f"{cuts}:1")


@pytest.mark.parametrize(("kind", "rel", "lineno", "after", "old_id", "new_id"), [
    ("sharegpt", "sharegpt/sharegpt.jsonl", 1, b"hello", "sharegpt/sg1", "sharegpt/sharegpt/0"),
    ("ttt_json", "ttt_json/samples.jsonl", 2, b"2+2", "ttt_json/tc-1", "ttt_json/samples/1"),
])
def test_jsonl_line(corpora, tmp_path, read_all, kind, rel, lineno, after, old_id, new_id):
    path = tmp_path / Path(rel).name
    shutil.copy(corpora / rel, path)
    before = read_all(kind, path)
    column = corrupt(path, lineno, after)
    after_rows = read_all(kind, path)
    index = new_id.rsplit("/", 1)[1]
    assert_one_record_lost(before, after_rows, old_id, new_id, f"{path}:{lineno}",
                           f"sample {index}: {utf8_error(column)}")


def test_json_array_keeps_the_samples_before_the_bad_bytes(corpora, tmp_path, read_all, fates):
    path = tmp_path / "openhermes.json"
    shutil.copy(corpora / "sharegpt/openhermes.json", path)
    before = read_all("sharegpt", path)
    corrupt(path, next(n for n, line in enumerate(path.read_bytes().split(b"\n"), 1) if b"Say" in line), b"Say")
    after = read_all("sharegpt", path)
    assert len(before) > 2 and after[:1] == before[:1]
    assert fates(after[1:]) == [("sharegpt/openhermes/1", "error")]
    assert after[1]["error"] == "sample 1: invalid JSON: lexical error: invalid bytes in UTF8 string."
    assert after[1]["locator"] == f"{path}#1"


@pytest.mark.parametrize(("kind", "manifest", "after"), [
    ("wenetspeech", "WenetSpeech.json", b"text"),
    ("gigaspeech", "GigaSpeech.json", b"text_tn"),
])
def test_long_audio_manifest_keeps_the_audio_entries_before_the_bad_bytes(corpora, tmp_path, read_all, kind,
                                                                         manifest, after):
    shutil.copytree(corpora / kind, tmp_path / kind)
    path = tmp_path / kind / manifest
    before = read_all(kind, tmp_path / kind)
    lines = path.read_bytes().split(b"\n")
    second_audio = [n for n, line in enumerate(lines, 1) if b'"aid"' in line][1]
    corrupt(path, next(n for n in range(second_audio, len(lines) + 1) if after in lines[n - 1]), after)
    rows = read_all(kind, tmp_path / kind)
    first_audio = json.loads((corpora / kind / manifest).read_text())["audios"][0]["aid"]
    kept = [r for r in before if json.loads(r["meta_json"] or "{}").get("aid") == first_audio]
    assert kept and rows[:-1] == kept
    assert rows[-1]["error"] == "invalid JSON after audio entry 0: lexical error: invalid bytes in UTF8 string."
    assert rows[-1]["locator"] == f"{path}#audios[1]"


def test_hf_parquet_string_cell(tmp_path, read_all, fates):
    text = b"okbadlast"
    offsets = pa.array([0, 2, 5, 9], pa.int32()).buffers()[1]
    values = pa.py_buffer(text[:3] + BAD + text[4:])  # row 1 is "b\xffd": parquet writers need not validate
    column = pa.Array.from_buffers(pa.string(), 3, [None, offsets, values])
    audio = pa.array([{"bytes": b"RIFFxxxx", "path": None}] * 3,
                     pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.table({"audio": audio, "text": column}), path)
    rows = read_all("hf_parquet", tmp_path, options={"batch_rows": 64})
    assert fates(rows) == [("hf_parquet/train-00000-of-00001/0", "ok"),
                           ("hf_parquet/train-00000-of-00001/1", "error"),
                           ("hf_parquet/train-00000-of-00001/2", "ok")]
    assert [rows[0]["text"], rows[2]["text"]] == ["ok", "last"]
    assert (rows[1]["error"], rows[1]["locator"]) == ("column 'text' is not valid UTF-8 (byte 0xff at column 2)",
                                                      f"{path}#row=1")
