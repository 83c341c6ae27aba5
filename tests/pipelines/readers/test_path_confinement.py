"""Issue #16 item 4: audio paths that a manifest names stay inside the source root unless the source opts out.

Every manifest-driven reader gets the same corpus shape: one good clip, one symlink to it (inside the root:
fine), and three references to files outside the root (an absolute path, a `../` climb and a symlink). Those
three are error rows naming `options.allow_outside_root`; with that option set they are ordinary rows. A
corpus reached through a symlinked root directory still reads normally.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.readers.common import confine
from pipelines.records import SourceConfig

OUTSIDE = "audio path outside the source root"
OPT_IN = "(set options.allow_outside_root: true to allow)"
STEMS = ("good", "alias", "abs", "climb", "link")  # row order; the last three point outside the root


@dataclass(frozen=True)
class Case:
    """A manifest-driven corpus: `write(root, refs)` writes a manifest naming `refs` (relative ones resolve
    against `base`), one record per ref, in order; `ids` maps a stem to its record id."""

    kind: str
    base: str  # the directory relative manifest paths resolve against, relative to the root
    write: Callable[[Path, list[str]], None]
    ids: Callable[[str], str]


def _commonvoice(root: Path, refs: list[str]) -> None:
    lines = ["client_id\tpath\tsentence"] + [f"c\t{ref}\thello" for ref in refs]
    (root / "train.tsv").write_text("\n".join(lines) + "\n")


def _aishell2(root: Path, refs: list[str]) -> None:
    (root / "trans.txt").write_text("".join(f"U{i}\t你好\n" for i in range(len(refs))))
    (root / "wav.scp").write_text("".join(f"U{i}\t{ref}\n" for i, ref in enumerate(refs)))


def _lhotse(root: Path, refs: list[str]) -> None:
    recs = [{"id": f"r{i}", "sources": [{"type": "file", "channels": [0], "source": ref}], "duration": 1.0}
            for i, ref in enumerate(refs)]
    sups = [{"id": f"s{i}", "recording_id": f"r{i}", "start": 0.0, "duration": 0.5, "text": "HI"}
            for i in range(len(refs))]
    (root / "x_recordings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (root / "x_supervisions.jsonl").write_text("".join(json.dumps(s) + "\n" for s in sups))


def _long_audio(manifest: str, text_key: str, subset: str) -> Callable[[Path, list[str]], None]:
    def write(root: Path, refs: list[str]) -> None:
        audios = [{"aid": f"a{i}", "path": ref, "segments": [
            {"sid": f"a{i}_s0", "begin_time": 0.0, "end_time": 0.5, "subsets": [subset], text_key: "HELLO"}]}
            for i, ref in enumerate(refs)]
        (root / manifest).write_text(json.dumps({"audios": audios}))
    return write


def _hf_parquet(root: Path, refs: list[str]) -> None:
    audio = pa.array([{"bytes": None, "path": ref} for ref in refs],
                     pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    table = pa.table({"audio": audio, "text": ["hello"] * len(refs)})
    pq.write_table(table, root / "data/train-00000-of-00001.parquet")


def _spoken_qa(root: Path, refs: list[str]) -> None:
    lines = ["Questions,Answer,audio_filename"] + [f"q{i}?,a,{ref}" for i, ref in enumerate(refs)]
    (root / "eval_datas/llama_questions/llama_questions.csv").write_text("\n".join(lines) + "\n")


CASES = [
    Case("commonvoice", "clips", _commonvoice,  # ids are clip stems
         lambda stem: f"commonvoice/{'secret_' + stem if stem in ('abs', 'climb') else stem}"),
    Case("aishell2", "", _aishell2, lambda stem: f"aishell2/U{STEMS.index(stem)}"),
    Case("lhotse", "", _lhotse, lambda stem: f"lhotse/s{STEMS.index(stem)}"),
    Case("wenetspeech", "", _long_audio("WenetSpeech.json", "text", "L"),
         lambda stem: f"wenetspeech/a{STEMS.index(stem)}_s0"),
    Case("gigaspeech", "", _long_audio("GigaSpeech.json", "text_tn", "{XL}"),
         lambda stem: f"gigaspeech/a{STEMS.index(stem)}_s0"),
    Case("hf_parquet", "data", _hf_parquet, lambda stem: f"hf_parquet/data/train-00000-of-00001/{STEMS.index(stem)}"),
    Case("spoken_qa", "eval_datas/llama_questions/audios", _spoken_qa,
         lambda stem: f"spoken_qa/llama_questions/{STEMS.index(stem)}"),
]


def build(case: Case, tmp_path: Path) -> Path:
    """The case's corpus at tmp_path/corpus (returned) with the five references of STEMS; the files outside
    the root live in tmp_path/outside, as real files, so only confinement can make them errors."""
    root, outside = tmp_path / "corpus", tmp_path / "outside"
    base = root / case.base
    base.mkdir(parents=True, exist_ok=True)
    outside.mkdir()
    for stem in ("abs", "climb", "link"):
        (outside / f"secret_{stem}.wav").write_bytes(b"RIFF-secret")
    (base / "good.wav").write_bytes(b"RIFF-good")
    (base / "alias.wav").symlink_to(base / "good.wav")
    (base / "link.wav").symlink_to(outside / "secret_link.wav")
    refs = ["good.wav", "alias.wav", str(outside / "secret_abs.wav"),
            os.path.relpath(outside / "secret_climb.wav", base), "link.wav"]
    case.write(root, refs)
    return root


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.kind)
def test_paths_outside_the_root_are_error_rows(case, tmp_path, read_all, fates):
    root = build(case, tmp_path)
    rows = read_all(case.kind, root)
    assert fates(rows) == [(case.ids(stem), "ok" if stem in ("good", "alias") else "error") for stem in STEMS]
    for row, stem in zip(rows[2:], STEMS[2:], strict=True):
        assert row["error"].startswith(f"{OUTSIDE} {root}: ") and row["error"].endswith(OPT_IN)
        assert f"secret_{stem}.wav" in row["error"] and row["audio_path"] == ""
    assert rows[0]["audio_path"].endswith("good.wav")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.kind)
def test_allow_outside_root_reads_them(case, tmp_path, read_all, fates):
    root = build(case, tmp_path)
    rows = read_all(case.kind, root, options={"allow_outside_root": True})
    assert fates(rows) == [(case.ids(stem), "ok") for stem in STEMS]
    assert rows[2]["audio_path"] == str(tmp_path / "outside/secret_abs.wav")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.kind)
def test_a_symlinked_corpus_root_still_reads(case, tmp_path, read_all, fates):
    root = build(case, tmp_path)
    (tmp_path / "mounted").symlink_to(root, target_is_directory=True)
    rows = read_all(case.kind, tmp_path / "mounted")
    assert [fate for _, fate in fates(rows)] == ["ok", "ok", "error", "error", "error"]


def test_confine_compares_whole_path_components(tmp_path):
    source = SourceConfig(kind="k", path=str(tmp_path / "corpus"))
    assert confine(tmp_path / "corpus/a/../b.wav", tmp_path / "corpus", source) == ""
    sibling = confine(tmp_path / "corpus-evil/b.wav", tmp_path / "corpus", source)
    assert sibling == f"{OUTSIDE} {tmp_path / 'corpus'}: {tmp_path / 'corpus-evil/b.wav'} {OPT_IN}"
    climbed = confine(tmp_path / "corpus/../x.wav", tmp_path / "corpus", source)
    assert climbed.endswith(f"{tmp_path / 'corpus/../x.wav'} (-> {tmp_path / 'x.wav'}) {OPT_IN}")
    assert confine(tmp_path / "x.wav", tmp_path / "corpus", SourceConfig(
        kind="k", path=str(tmp_path / "corpus"), options={"allow_outside_root": True})) == ""
