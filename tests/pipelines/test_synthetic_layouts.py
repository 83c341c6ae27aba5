"""Each layout writer produces exactly its corpus's native layout: paths, headers, separators, audio format,
sample rate and channel count. A handful of short espeak utterances keep the file fast."""

from __future__ import annotations

import ast
import csv
import gzip
import json
import random
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pipelines.synthetic import layouts
from pipelines.synthetic.layouts import Speaker, Spoken, SpokenQA
from pipelines.synthetic.synthesis import SynthesisJob, run_jobs, speed_perturb, synthesize_job
from pipelines.synthetic.textgen import Conversation, Document, QAItem

EN_A = Speaker("espeak:en", 1.0, "male")
EN_B = Speaker("espeak:en", 1.12, "female")
ZH = Speaker("espeak:cmn", 1.0, "male")


def _build(plan: layouts.CorpusPlan) -> dict:
    results = run_jobs(plan.jobs, workers=1)
    plan.write_metadata(results)
    return results


def _audio(path: Path, rate: int, fmt: str, subtype: str) -> None:
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.format, info.subtype) == (rate, 1, fmt, subtype), (path, info)
    assert info.frames > rate // 4


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_librispeech_layout(tmp_path: Path) -> None:
    root = tmp_path / "LibriSpeech"
    plan = layouts.librispeech(root, {
        "train-clean-100": [Spoken("One small dog ran home.", EN_A), Spoken("It's twenty-four now.", EN_B),
                            Spoken("The sun was warm.", EN_A), Spoken("We sat down.", EN_A)],
        "test-clean": [Spoken("Good night.", EN_B)],
    }, utterances_per_chapter=2)
    _build(plan)
    assert _files(root) == {
        "train-clean-100/100/10000/100-10000-0000.flac", "train-clean-100/100/10000/100-10000-0001.flac",
        "train-clean-100/100/10000/100-10000.trans.txt",
        "train-clean-100/100/10001/100-10001-0000.flac", "train-clean-100/100/10001/100-10001.trans.txt",
        "train-clean-100/101/10100/101-10100-0000.flac", "train-clean-100/101/10100/101-10100.trans.txt",
        "test-clean/200/20000/200-20000-0000.flac", "test-clean/200/20000/200-20000.trans.txt",
    }
    assert (root / "train-clean-100/100/10000/100-10000.trans.txt").read_text() == (
        "100-10000-0000 ONE SMALL DOG RAN HOME\n100-10000-0001 THE SUN WAS WARM\n")
    second_speaker = (root / "train-clean-100/101/10100/101-10100.trans.txt").read_text()
    assert second_speaker == "101-10100-0000 IT'S TWENTY FOUR NOW\n"
    for flac in root.rglob("*.flac"):
        _audio(flac, 16000, "FLAC", "PCM_16")
    assert {s["name"] for s in plan.sources(tmp_path)} == {"librispeech"}
    assert plan.sources(tmp_path)[0]["path"] == "LibriSpeech"


def test_commonvoice_new_and_old_headers(tmp_path: Path) -> None:
    cv = tmp_path / "cv-corpus-1.0-synthetic"
    en = layouts.commonvoice(cv / "en", "en", {
        "train": [Spoken('She said, "Let us go home."', EN_A), Spoken("A cat sat.", EN_B)],
        "test": [Spoken("The end.", EN_A)],
    }, header="new", first_clip=100)
    zh = layouts.commonvoice(cv / "zh-CN", "zh-CN", {"dev": [Spoken("今天天气很好。", ZH)]}, header="old",
                             first_clip=500)
    _build(en)
    _build(zh)
    assert _files(cv / "en") == {
        "clips/common_voice_en_101.mp3", "clips/common_voice_en_102.mp3", "clips/common_voice_en_103.mp3",
        "train.tsv", "dev.tsv", "test.tsv", "validated.tsv", "invalidated.tsv", "other.tsv",
    }
    assert (cv / "zh-CN/clips/common_voice_zh-CN_501.mp3").is_file()
    for locale, header in (("en", "new"), ("zh-CN", "old")):
        for table in ("train", "dev", "test", "validated", "invalidated", "other"):
            first = (cv / locale / f"{table}.tsv").read_text(encoding="utf-8").splitlines()[0]
            assert first.split("\t") == list(layouts.CV_HEADERS[header])

    def read(path: Path) -> list[dict]:
        with path.open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))

    train = read(cv / "en/train.tsv")
    assert [r["sentence"] for r in train] == ['She said, "Let us go home."', "A cat sat."]
    assert [r["path"] for r in train] == ["common_voice_en_101.mp3", "common_voice_en_102.mp3"]
    assert all(len(r["client_id"]) == 128 and len(r["sentence_id"]) == 64 and r["locale"] == "en" for r in train)
    assert train[0]["client_id"] != train[1]["client_id"]  # two speakers
    assert {r["gender"] for r in train} == {"male_masculine", "female_feminine"}
    assert [r["path"] for r in read(cv / "en/validated.tsv")] == [
        "common_voice_en_101.mp3", "common_voice_en_102.mp3", "common_voice_en_103.mp3"]
    assert read(cv / "en/invalidated.tsv") == []
    old = read(cv / "zh-CN/dev.tsv")
    assert old[0]["sentence"] == "今天天气很好。" and old[0]["gender"] == "male" and "accent" in old[0]
    for mp3 in cv.rglob("*.mp3"):
        _audio(mp3, 48000, "MP3", "MPEG_LAYER_III")
    assert [s["split"] for s in en.sources(tmp_path)] == ["train", "test"]


def test_aishell2_layout(tmp_path: Path) -> None:
    data = tmp_path / "AISHELL-2/iOS/data"
    items = [Spoken("今天，我们去公园。", ZH), Spoken("三加五等于八。", Speaker("espeak:cmn", 0.9)),
             Spoken("北京是中国的首都。", ZH)]
    plan = layouts.aishell2(data, items, "train", "C")
    _build(plan)
    assert _files(data) == {"wav.scp", "trans.txt", "wav/C0001/IC0001W0001.wav", "wav/C0001/IC0001W0002.wav",
                            "wav/C0002/IC0002W0001.wav"}
    assert (data / "wav.scp").read_text(encoding="utf-8") == (
        "IC0001W0001\twav/C0001/IC0001W0001.wav\nIC0001W0002\twav/C0001/IC0001W0002.wav\n"
        "IC0002W0001\twav/C0002/IC0002W0001.wav\n")
    assert (data / "trans.txt").read_text(encoding="utf-8") == (
        "IC0001W0001\t今天我们去公园\nIC0001W0002\t北京是中国的首都\nIC0002W0001\t三加五等于八\n")
    for wav in data.rglob("*.wav"):
        _audio(wav, 16000, "WAV", "PCM_16")
    test_plan = layouts.aishell2(tmp_path / "AISHELL-DEV-TEST-SET/iOS/test", [Spoken("你好。", ZH)], "test", "T")
    assert Path(test_plan.jobs[0].path).as_posix().endswith("iOS/test/wav/T0001/IT0001W0001.wav")
    assert test_plan.jobs[0].split == "test"


def test_lhotse_manifests(tmp_path: Path) -> None:
    root = tmp_path / "lhotse-synthetic"
    plan = layouts.lhotse_manifests(root, {
        "train": [[Spoken("First sentence here.", EN_A), Spoken("And a second one.", EN_A)]],
        "test": [[Spoken("Only one.", EN_B)]],
    })
    _build(plan)
    assert _files(root) == {
        "synthetic_recordings_train.jsonl.gz", "synthetic_supervisions_train.jsonl.gz",
        "synthetic_recordings_test.jsonl.gz", "synthetic_supervisions_test.jsonl.gz",
        "wavs/synthetic-train-00000.wav", "wavs/synthetic-test-00000.wav",
    }

    def rows(name: str) -> list[dict]:
        with gzip.open(root / name, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    (rec,) = rows("synthetic_recordings_train.jsonl.gz")
    sups = rows("synthetic_supervisions_train.jsonl.gz")
    assert set(rec) == {"id", "sources", "sampling_rate", "num_samples", "duration", "channel_ids"}
    assert rec["sources"] == [{"type": "file", "channels": [0], "source": str((root / "wavs/synthetic-train-00000.wav")
                                                                               .resolve())}]
    audio, sr = sf.read(rec["sources"][0]["source"], dtype="float32")
    assert sr == rec["sampling_rate"] == 24000 and len(audio) == rec["num_samples"]
    assert rec["duration"] == pytest.approx(len(audio) / sr)
    assert [s["text"] for s in sups] == ["First sentence here.", "And a second one."]
    for s in sups:
        assert set(s) == {"id", "recording_id", "start", "duration", "channel", "text", "language", "speaker",
                          "gender"}
        assert s["recording_id"] == rec["id"] and s["language"] == "English" and s["gender"] == "M"
        a, b = round(s["start"] * sr), round((s["start"] + s["duration"]) * sr)
        assert 0 < a < b <= len(audio) and np.abs(audio[a:b]).max() > 0.05
    gap = audio[round((sups[0]["start"] + sups[0]["duration"]) * sr):round(sups[1]["start"] * sr)]
    assert len(gap) == round(0.4 * sr) and np.abs(gap).max() == 0.0
    assert sups[0]["start"] == pytest.approx(0.2)
    # gzip without a timestamp: the same manifest gives the same bytes
    first = (root / "synthetic_supervisions_train.jsonl.gz").read_bytes()
    plan.write_metadata({j.path: synthesize_job(j) for j in plan.jobs})
    assert (root / "synthetic_supervisions_train.jsonl.gz").read_bytes() == first


def test_openaudiobench_layout(tmp_path: Path) -> None:
    root = tmp_path / "spoken_qa/eval"
    q1 = QAItem("add/5+7", "add", "What is seven plus five?", "twelve", ("twelve", "12"), "Seven plus five is twelve.")
    q2 = QAItem("capital/France", "capital", "What is the capital of France?", "Paris", ("paris",),
                "The capital of France is Paris.")
    plan = layouts.openaudiobench(root, {"llama_questions": [SpokenQA(q1, EN_A)],
                                         "trivia_qa": [SpokenQA(q2, EN_B), SpokenQA(q1, EN_A)],
                                         "web_questions": [SpokenQA(q2, EN_A)]}, "eval")
    _build(plan)
    assert _files(root) == {
        "eval_datas/llama_questions/llama_questions.csv", "eval_datas/llama_questions/audios/llama_questions_00000.wav",
        "eval_datas/trivia_qa/trivia_qa.csv", "eval_datas/trivia_qa/audios/trivia_qa_00000.wav",
        "eval_datas/trivia_qa/audios/trivia_qa_00001.wav",
        "eval_datas/web_questions/web_questions.csv", "eval_datas/web_questions/audios/web_questions_00000.wav",
    }
    llama = pd.read_csv(root / "eval_datas/llama_questions/llama_questions.csv")
    assert list(llama.columns) == ["Questions", "Answer", "audio_filename"]
    assert llama.iloc[0].tolist() == ["What is seven plus five?", "twelve", "llama_questions_00000.wav"]
    trivia = pd.read_csv(root / "eval_datas/trivia_qa/trivia_qa.csv")
    assert list(trivia.columns) == ["question", "answer_normalized_aliases", "audio_filename"]
    assert [ast.literal_eval(a) for a in trivia["answer_normalized_aliases"]] == [["paris"], ["twelve", "12"]]
    web = pd.read_csv(root / "eval_datas/web_questions/web_questions.csv")
    assert list(web.columns) == ["question", "answers", "audio_filename"]
    for wav in root.rglob("*.wav"):
        _audio(wav, 22050, "WAV", "PCM_16")
    assert {j.split for j in plan.jobs} == {"eval"}
    assert plan.sources(tmp_path) == [{"name": "openaudiobench", "kind": "spoken_qa", "path": "spoken_qa/eval",
                                       "language": "en", "split": "test"}]
    train = layouts.openaudiobench(tmp_path / "spoken_qa/train", {"llama_questions": [SpokenQA(q1, EN_A)]}, "train")
    assert train.sources(tmp_path)[0] | {"task": "audio_chat", "split": "train"} == train.sources(tmp_path)[0]
    with pytest.raises(ValueError, match="subsets"):
        layouts.openaudiobench(root, {"reasoning_qa": []}, "eval")


def test_openhermes_rows_vary_optional_keys_like_the_real_file(tmp_path: Path) -> None:
    conv = Conversation("qa", "You are a helpful assistant.", (("Hi?", "Hello."), ("What is up?", "The sky.")), ())
    bare = Conversation("qa", None, (("Hi?", "Hello."),), ())
    path = tmp_path / "openhermes/openhermes2_5.json"
    assert layouts.write_openhermes(path, [conv, bare] * 40, random.Random(0)) == 80
    rows = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(rows, list) and len(rows) == 80
    assert [m["from"] for m in rows[0]["conversations"]] == ["system", "human", "gpt", "human", "gpt"]
    assert [m["value"] for m in rows[1]["conversations"]] == ["Hi?", "Hello."]
    weights = {("absent" if "weight" not in m else repr(m["weight"])) for r in rows for m in r["conversations"]}
    assert weights == {"absent", "None", "0.0", "1.0"}
    for key in ("source", "category"):
        states = {("absent" if key not in r else "null" if r[key] is None else "set") for r in rows}
        assert states == {"absent", "null", "set"}


def test_documents_jsonl(tmp_path: Path) -> None:
    doc = Document("doc-00000", "capital", "Capital cities", (("A.", "B."), ("C.",)), ("capital/France",))
    path = tmp_path / "documents/documents.jsonl"
    assert layouts.write_documents(path, [doc]) == 1
    (line,) = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(line) == {"id": "doc-00000", "title": "Capital cities", "topic": "capital", "language": "en",
                                "text": "A. B.\n\nC."}


def test_synthesis_is_deterministic_atomic_and_speed_perturbs(tmp_path: Path) -> None:
    job = SynthesisJob(str(tmp_path / "a.wav"), ("Hello there.",), "espeak:en", 1.0, 16000, "train")
    fast = SynthesisJob(str(tmp_path / "b.wav"), ("Hello there.",), "espeak:en", 1.25, 16000, "train")
    first = synthesize_job(job)
    data = Path(job.path).read_bytes()
    assert synthesize_job(job) == first and Path(job.path).read_bytes() == data
    assert synthesize_job(fast).num_samples == pytest.approx(first.num_samples / 1.25, rel=0.01)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "b.wav"]  # no temporary files left
    wav = np.sin(np.arange(22050, dtype=np.float32))
    assert len(speed_perturb(wav, 22050, 0.9)) == pytest.approx(22050 / 0.9, abs=2)
    assert speed_perturb(wav, 22050, 1.0) is wav


def test_tab_or_newline_in_a_tsv_field_is_refused(tmp_path: Path) -> None:
    """Common Voice TSVs are read with QUOTE_NONE: a tab inside a sentence would shift every later column."""
    plan = layouts.commonvoice(tmp_path / "en", "en", {"train": [Spoken("one\ttwo", EN_A)]})
    with pytest.raises(ValueError, match="tab or newline"):
        plan.write_metadata({})
    assert re.fullmatch(r"common_voice_en_\d+", Path(plan.jobs[0].path).stem)
