"""Writers of the corpora's native on-disk layouts (docs/corpora.md), so the tokenize job reads the
synthetic corpora with exactly the readers it uses for the real ones.

Speech corpora are written in two steps: a `CorpusPlan` lists the audio files to synthesise (with their
native names, formats and sample rates), then `plan.write_metadata(results)` writes the transcripts,
tables and manifests once the audio exists, so a corpus whose audio failed never looks complete.

Layouts (paths relative to the directory a plan's `path` names):
- LibriSpeech: `<subset>/<spk>/<chap>/<spk>-<chap>-<NNNN>.flac` (16 kHz mono 16-bit) and one
  `<spk>-<chap>.trans.txt` per chapter, lines `<utt-id> <UPPER CASE TEXT>`, sorted.
- Common Voice (a locale directory of `cv-corpus-<ver>/`): `clips/common_voice_<locale>_<n>.mp3` (48 kHz mono)
  and `train|dev|test|validated|invalidated|other.tsv`, TAB-separated with a header row, text written raw
  (no quoting: readers use QUOTE_NONE), header "new" (sentence_id ... accents variant ...) or "old".
- AISHELL-2 (a directory like `iOS/data` or `iOS/test`): `wav.scp` and `trans.txt`, `<utt>\\t<value>`,
  wav.scp paths relative to that directory, `wav/<spk>/<utt>.wav` (16 kHz mono 16-bit), transcripts
  without punctuation.
- lhotse: `<prefix>_recordings_<part>.jsonl.gz` + `<prefix>_supervisions_<part>.jsonl.gz` (lhotse's
  Recording/SupervisionSegment dicts) over `wavs/<recording-id>.wav`; a recording holds 1-3 sentences,
  each one supervision with its own start/duration. Source paths are absolute, as lhotse resolves
  relative paths against the working directory.
- OpenAudioBench: `eval_datas/<subset>/<subset>.csv` (comma CSV with header, pandas-compatible quoting) +
  `eval_datas/<subset>/audios/<file>.wav`; columns llama_questions: Questions, Answer, audio_filename;
  trivia_qa: question, answer_normalized_aliases (a Python list literal), audio_filename;
  web_questions: question, answers (a Python list literal), audio_filename.
- OpenHermes-2.5 chat: one JSON array of `{conversations: [{from: system|human|gpt, value, weight}], source,
  category, ...}`; like the real file, optional keys are sometimes null and sometimes absent.
- Documents: JSONL, one `{"id", "title", "topic", "language", "text"}` per line; `text` holds paragraphs
  separated by a blank line, each a few sentences ending in . ! or ? (text only: the tokenize job speaks it).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.synthetic.synthesis import SynthesisJob, SynthesisResult
from pipelines.synthetic.textgen import (
    Conversation,
    Document,
    QAItem,
    librispeech_transcript,
    mandarin_transcript,
)

LIBRISPEECH_SAMPLE_RATE = 16000
AISHELL_SAMPLE_RATE = 16000
COMMONVOICE_SAMPLE_RATE = 48000
LHOTSE_SAMPLE_RATE = 24000
OPENAUDIOBENCH_SAMPLE_RATE = 22050

CV_HEADERS = {
    "old": ("client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accent", "locale",
            "segment"),
    "new": ("client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes", "age",
            "gender", "accents", "variant", "locale", "segment"),
}
CV_SPLITS = ("train", "dev", "test")
OPENAUDIOBENCH_COLUMNS = {
    "llama_questions": ("Questions", "Answer", "audio_filename"),
    "trivia_qa": ("question", "answer_normalized_aliases", "audio_filename"),
    "web_questions": ("question", "answers", "audio_filename"),
}


@dataclass(frozen=True)
class Speaker:
    """A voice as a corpus speaker: a TTS voice, a speed-perturbation factor and a declared gender."""

    voice: str
    speed: float = 1.0
    gender: str = ""  # "male" | "female" | "" (written where the layout has a gender field)


@dataclass(frozen=True)
class Spoken:
    """One utterance to say: the text as written (punctuated) and who says it."""

    text: str
    speaker: Speaker


@dataclass(frozen=True)
class SpokenQA:
    item: QAItem
    speaker: Speaker


@dataclass
class CorpusPlan:
    """Audio to synthesise for one readable source, and how to write its metadata afterwards."""

    name: str  # source name
    kind: str  # reader kind (pipelines/readers)
    path: Path  # what a source config's `path` points at
    language: str
    jobs: list[SynthesisJob]
    write_metadata: Callable[[Mapping[str, SynthesisResult]], None]
    counts: dict[str, int] = field(default_factory=dict)  # split/subset -> number of utterances
    per_split: bool = False  # the reader reads one split per source (Common Voice's TSVs)
    task: str = ""  # SourceConfig task override ("" = the reader's default)
    split: str = ""  # SourceConfig split override

    def sources(self, relative_to: Path) -> list[dict[str, Any]]:
        """`SourceConfig`-shaped entries that read this corpus whole (paths relative to `relative_to`)."""
        base = {"name": self.name, "kind": self.kind, "path": self.path.relative_to(relative_to).as_posix(),
                "language": self.language}
        if self.per_split:
            return [{**base, "name": f"{self.name}_{split}", "split": split} for split in self.counts]
        return [{**base, **({"task": self.task} if self.task else {}), **({"split": self.split} if self.split else {})}]


def _check_field(value: str, what: str) -> str:
    """Tab/newline-separated formats have no escaping: such a character would silently shift columns."""
    if any(c in value for c in "\t\r\n"):
        raise ValueError(f"{what} contains a tab or newline: {value!r}")
    return value


def _write_text(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def _speaker_ids(items: Sequence[Spoken | SpokenQA], first: int) -> dict[Speaker, int]:
    """Number the distinct speakers in order of first appearance."""
    ids: dict[Speaker, int] = {}
    for it in items:
        ids.setdefault(it.speaker, first + len(ids))
    return ids


# ---------------------------------------------------------------- LibriSpeech


def librispeech(root: Path, subsets: Mapping[str, Sequence[Spoken]], utterances_per_chapter: int = 20,
                name: str = "librispeech") -> CorpusPlan:
    """`root` is the `LibriSpeech` directory; each subset gets its own speaker ids (100*(i+1) + k)."""
    jobs: list[SynthesisJob] = []
    chapters: dict[Path, list[tuple[str, str]]] = {}  # transcript file -> (utt id, transcript)
    for s_index, (subset, items) in enumerate(subsets.items()):
        spk_ids = _speaker_ids(items, 100 * (s_index + 1))
        per_speaker: dict[int, list[Spoken]] = {}
        for it in items:
            per_speaker.setdefault(spk_ids[it.speaker], []).append(it)
        for spk, utts in per_speaker.items():
            for start in range(0, len(utts), utterances_per_chapter):
                chap = spk * 100 + start // utterances_per_chapter
                chap_dir = root / subset / str(spk) / str(chap)
                trans = chapters.setdefault(chap_dir / f"{spk}-{chap}.trans.txt", [])
                for n, it in enumerate(utts[start:start + utterances_per_chapter]):
                    utt = f"{spk}-{chap}-{n:04d}"
                    trans.append((utt, _check_field(librispeech_transcript(it.text), utt)))
                    jobs.append(SynthesisJob(str(chap_dir / f"{utt}.flac"), (it.text,), it.speaker.voice,
                                             it.speaker.speed, LIBRISPEECH_SAMPLE_RATE, split_of(subset)))

    def write(_: Mapping[str, SynthesisResult]) -> None:
        for path, lines in chapters.items():
            _write_text(path, [f"{utt} {text}" for utt, text in sorted(lines)])

    return CorpusPlan(name, "librispeech", root, "en", jobs, write, {k: len(v) for k, v in subsets.items()})


def split_of(subset: str) -> str:
    """The split a subset/part name belongs to (train-clean-100 -> train, test-clean -> test)."""
    for split in ("train", "dev", "test"):
        if subset.startswith(split):
            return split
    return subset


# ---------------------------------------------------------------- Common Voice

_CV_AGES = ("twenties", "thirties", "fourties", "")  # "fourties" is Common Voice's own spelling


def commonvoice(locale_dir: Path, locale: str, splits: Mapping[str, Sequence[Spoken]], header: str = "new",
                first_clip: int = 10_000_000, name: str = "") -> CorpusPlan:
    """`locale_dir` is `cv-corpus-<ver>/<locale>`; splits are train/dev/test (validated = their union;
    invalidated/other are written with their header only: every synthetic clip is valid)."""
    if header not in CV_HEADERS:
        raise ValueError(f"commonvoice header must be one of {sorted(CV_HEADERS)}, got {header!r}")
    unknown = set(splits) - set(CV_SPLITS)
    if unknown:
        raise ValueError(f"commonvoice splits must be among {CV_SPLITS}, got {sorted(unknown)}")
    jobs: list[SynthesisJob] = []
    rows: dict[str, list[dict[str, str]]] = {s: [] for s in CV_SPLITS}
    clip = first_clip
    for split, items in splits.items():
        for it in items:
            clip += 1
            filename = f"common_voice_{locale}_{clip}.mp3"
            rows[split].append(_cv_row(filename, it, locale, header))
            jobs.append(SynthesisJob(str(locale_dir / "clips" / filename), (it.text,), it.speaker.voice,
                                     it.speaker.speed, COMMONVOICE_SAMPLE_RATE, split))

    def write(_: Mapping[str, SynthesisResult]) -> None:
        columns = CV_HEADERS[header]
        tables = {**rows, "validated": [r for s in CV_SPLITS for r in rows[s]], "invalidated": [], "other": []}
        for table, table_rows in tables.items():
            lines = ["\t".join(columns)] + ["\t".join(_check_field(r[c], c) for c in columns) for r in table_rows]
            _write_text(locale_dir / f"{table}.tsv", lines)

    language = "zh" if locale.startswith("zh") else locale.split("-")[0]
    return CorpusPlan(name or f"commonvoice_{locale}", "commonvoice", locale_dir, language, jobs, write,
                      {k: len(v) for k, v in splits.items()}, per_split=True)


def _cv_row(filename: str, it: Spoken, locale: str, header: str) -> dict[str, str]:
    speaker_key = f"{locale}:{it.speaker.voice}:{it.speaker.speed}"
    h = int(hashlib.sha1(speaker_key.encode()).hexdigest(), 16)
    gender = {"new": {"male": "male_masculine", "female": "female_feminine"}, "old": {}}[header].get(
        it.speaker.gender, it.speaker.gender)
    accent = "United States English" if locale == "en" and h % 2 else ""
    return {
        "client_id": hashlib.sha512(speaker_key.encode()).hexdigest(), "path": filename,
        "sentence_id": hashlib.sha256(it.text.encode()).hexdigest(), "sentence": it.text, "sentence_domain": "",
        "up_votes": "2", "down_votes": "0", "age": _CV_AGES[h % len(_CV_AGES)], "gender": gender,
        "accent": accent, "accents": accent, "variant": "", "locale": locale, "segment": "",
    }


# ---------------------------------------------------------------- AISHELL-2


def aishell2(data_dir: Path, items: Sequence[Spoken], split: str, speaker_prefix: str = "C",
             name: str = "aishell2") -> CorpusPlan:
    """`data_dir` is e.g. `AISHELL-2/iOS/data` (train, speakers C0001...) or `AISHELL-DEV-TEST-SET/iOS/test`
    (speakers T0001...); utterance ids follow the iOS pattern `I<spk>W<nnnn>`."""
    spk_ids = _speaker_ids(items, 1)
    counters: dict[int, int] = {}
    entries: list[tuple[str, str, str]] = []  # (utt, relative wav path, transcript)
    jobs: list[SynthesisJob] = []
    for it in items:
        spk_n = spk_ids[it.speaker]
        counters[spk_n] = counters.get(spk_n, 0) + 1
        spk = f"{speaker_prefix}{spk_n:04d}"
        utt = f"I{spk}W{counters[spk_n]:04d}"
        rel = f"wav/{spk}/{utt}.wav"
        entries.append((utt, rel, _check_field(mandarin_transcript(it.text), utt)))
        jobs.append(SynthesisJob(str(data_dir / rel), (it.text,), it.speaker.voice, it.speaker.speed,
                                 AISHELL_SAMPLE_RATE, split))

    def write(_: Mapping[str, SynthesisResult]) -> None:
        ordered = sorted(entries)
        _write_text(data_dir / "wav.scp", [f"{utt}\t{rel}" for utt, rel, _ in ordered])
        _write_text(data_dir / "trans.txt", [f"{utt}\t{text}" for utt, _, text in ordered])

    return CorpusPlan(name, "aishell2", data_dir, "zh", jobs, write, {split: len(items)})


# ---------------------------------------------------------------- lhotse


_LHOTSE_LANGUAGES = {"en": "English", "zh": "Chinese"}  # lhotse recipes write language names


def lhotse_manifests(root: Path, parts: Mapping[str, Sequence[Sequence[Spoken]]], prefix: str = "synthetic",
                     language: str = "en", name: str = "lhotse", task: str = "") -> CorpusPlan:
    """Each part is a list of recordings, each a list of sentences by one speaker; `task` as in CorpusPlan."""
    jobs: list[SynthesisJob] = []
    recordings: dict[str, list[tuple[str, str, str, Sequence[Spoken]]]] = {}  # part -> (id, path, speaker, texts)
    for part, recs in parts.items():
        spk_ids = _speaker_ids([s for rec in recs for s in rec], 1)
        for i, sentences in enumerate(recs):
            if not sentences or len({s.speaker for s in sentences}) != 1:
                raise ValueError(f"lhotse recording {part}/{i}: needs one or more sentences by one speaker")
            rec_id = f"{prefix}-{part}-{i:05d}"
            path = str((root / "wavs" / f"{rec_id}.wav").resolve())
            spk = sentences[0].speaker
            recordings.setdefault(part, []).append((rec_id, path, f"{prefix}-{part}-spk{spk_ids[spk]:03d}", sentences))
            jobs.append(SynthesisJob(path, tuple(s.text for s in sentences), spk.voice, spk.speed,
                                     LHOTSE_SAMPLE_RATE, split_of(part), gap_s=0.4, pad_s=0.2))

    def write(results: Mapping[str, SynthesisResult]) -> None:
        for part, recs in recordings.items():
            rec_lines: list[dict[str, Any]] = []
            sup_lines: list[dict[str, Any]] = []
            for rec_id, path, speaker, sentences in recs:
                res = results[path]
                sr = res.sample_rate
                rec_lines.append({
                    "id": rec_id, "sources": [{"type": "file", "channels": [0], "source": path}],
                    "sampling_rate": sr, "num_samples": res.num_samples, "duration": res.duration,
                    "channel_ids": [0],
                })
                for j, (sentence, (start, length)) in enumerate(zip(sentences, res.segments, strict=True)):
                    sup = {
                        "id": f"{rec_id}-{j}", "recording_id": rec_id, "start": start / sr, "duration": length / sr,
                        "channel": 0, "text": sentence.text, "language": _LHOTSE_LANGUAGES.get(language, language),
                        "speaker": speaker,
                    }
                    if sentence.speaker.gender:
                        sup["gender"] = sentence.speaker.gender[0].upper()
                    sup_lines.append(sup)
            _write_jsonl_gz(root / f"{prefix}_recordings_{part}.jsonl.gz", rec_lines)
            _write_jsonl_gz(root / f"{prefix}_supervisions_{part}.jsonl.gz", sup_lines)

    counts = {part: sum(len(r) for r in recs) for part, recs in parts.items()}
    return CorpusPlan(name, "lhotse", root, language, jobs, write, counts, task=task)


def _write_jsonl_gz(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """gzip with mtime 0, so the same manifest gives the same bytes (hashable, diffable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(data)


# ---------------------------------------------------------------- OpenAudioBench


def openaudiobench(root: Path, subsets: Mapping[str, Sequence[SpokenQA]], split: str,
                   name: str = "openaudiobench") -> CorpusPlan:
    """`root` holds `eval_datas/`. `split` "train" makes the source an audio-chat training set (question
    audio -> spoken answer); any other value marks held-out evaluation material (kept out of the codec fit)."""
    unknown = set(subsets) - set(OPENAUDIOBENCH_COLUMNS)
    if unknown:
        raise ValueError(f"openaudiobench subsets must be among {sorted(OPENAUDIOBENCH_COLUMNS)}: {sorted(unknown)}")
    jobs: list[SynthesisJob] = []
    tables: dict[str, list[tuple[str, ...]]] = {}
    for subset, qas in subsets.items():
        sub_dir = root / "eval_datas" / subset
        rows = tables.setdefault(subset, [])
        for i, qa in enumerate(qas):
            filename = f"{subset}_{i:05d}.wav"
            rows.append(_oab_row(subset, qa.item, filename))
            jobs.append(SynthesisJob(str(sub_dir / "audios" / filename), (qa.item.question,), qa.speaker.voice,
                                     qa.speaker.speed, OPENAUDIOBENCH_SAMPLE_RATE, split))

    def write(_: Mapping[str, SynthesisResult]) -> None:
        for subset, rows in tables.items():
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(OPENAUDIOBENCH_COLUMNS[subset])
            writer.writerows(rows)
            path = root / "eval_datas" / subset / f"{subset}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(buf.getvalue(), encoding="utf-8")

    training = split == "train"
    return CorpusPlan(name, "spoken_qa", root, "en", jobs, write, {k: len(v) for k, v in subsets.items()},
                      task="audio_chat" if training else "", split="train" if training else "test")


def _oab_row(subset: str, item: QAItem, filename: str) -> tuple[str, ...]:
    if subset == "llama_questions":
        return item.question, item.answer, filename
    return item.question, repr(list(item.aliases)), filename


# ---------------------------------------------------------------- text-only sets

_HERMES_SOURCES = ("synthetic-qa", "synthetic-chat", "synthetic-tutor")
_HERMES_OPTIONAL = ("skip_prompt_formatting", "id", "hash", "model", "title", "topic", "system_prompt", "views",
                    "custom_instruction", "language", "idx", "model_name", "avatarUrl")


def openhermes_rows(convs: Sequence[Conversation], rng: random.Random) -> list[dict[str, Any]]:
    """OpenHermes-2.5 rows. Optional keys vary the way they do in the real file: `weight` absent, null or
    0/1 per message; `category`/`source` null or absent; extra keys present with null values."""
    rows: list[dict[str, Any]] = []
    for i, conv in enumerate(convs):
        messages = ([("system", conv.system)] if conv.system else []) + [
            m for user, assistant in conv.turns for m in (("human", user), ("gpt", assistant))]
        weight_style = rng.choice(("absent", "null", "binary"))
        conversation = []
        for role, value in messages:
            msg: dict[str, Any] = {"from": role, "value": value}
            if weight_style == "null":
                msg["weight"] = None
            elif weight_style == "binary":
                msg["weight"] = 1.0 if role == "gpt" else 0.0
            conversation.append(msg)
        row: dict[str, Any] = {"conversations": conversation}
        r = rng.random()
        if r < 0.7:
            row["source"] = rng.choice(_HERMES_SOURCES)
        elif r < 0.85:
            row["source"] = None
        r = rng.random()
        if r < 0.5:
            row["category"] = conv.kind
        elif r < 0.75:
            row["category"] = None
        for key in rng.sample(_HERMES_OPTIONAL, rng.randint(0, 4)):
            row[key] = None
        if rng.random() < 0.2:
            row["id"] = f"synthetic-{i:06d}"
        rows.append(row)
    return rows


def write_openhermes(path: Path, convs: Sequence[Conversation], rng: random.Random) -> int:
    """One JSON array, like `openhermes2_5.json`; returns the number of conversations."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = openhermes_rows(convs, rng)
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return len(rows)


def write_documents(path: Path, docs: Sequence[Document], language: str = "en") -> int:
    """JSONL documents (format in the module docstring); returns the number written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"id": d.doc_id, "title": d.title, "topic": d.topic, "language": language, "text": d.text},
                        ensure_ascii=False) for d in docs]
    _write_text(path, lines)
    return len(lines)
