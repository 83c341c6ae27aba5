"""`python workflows/prepare_data.py` end to end at a tiny size: corpora the project's readers accept, a fitted
embedded codec, a re-run that skips, `force` that redoes; held-out evaluation QA kept out of training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from pipelines.readers import get_reader
from pipelines.records import SourceConfig
from pipelines.synthetic.prepare import PrepareConfig, codec_sample_paths, plan_corpora, prepare
from pipelines.synthetic.textgen import librispeech_transcript
from workflows.prepare_data import run

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "workflows" / "conf"

TINY: dict[str, Any] = {
    "workers": 2,
    "textgen": {"max_operand": 5, "max_factor": 4, "max_count": 20},
    "speakers": {"en": [{"voice": "piper:joe", "gender": "male"}, {"voice": "espeak:en", "speed": 1.1}],
                 "zh": [{"voice": "espeak:cmn"}]},
    "librispeech": {"train-clean-100": 2, "test-clean": 1},
    "commonvoice": {"en": {"header": "new", "train": 2, "test": 1}, "zh-CN": {"header": "old", "train": 1, "dev": 1}},
    "aishell2": {"train": 2, "test": 1},
    "lhotse": {"train": 1, "test": 1},
    "tts": {"speaker": {"voice": "espeak:en"}, "train": 2},
    "spoken_qa": {"train": {"llama_questions": 2, "trivia_qa": 1}, "eval": {"llama_questions": 1, "trivia_qa": 2}},
    "chat": 6,
    "documents": 2,
    "codec_fit_seconds_per_voice": 4,
}


# A codec small enough to fit on seconds of audio (the shipped sizes need minutes).
TINY_CODEC = ("++codec.codebook_sizes=[16,16]", "++codec.kmeans_iterations=3")


def _compose(root: Path, *overrides: str) -> Any:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=[f"paths.root={root}", *TINY_CODEC, *overrides])
    with open_dict(cfg):
        cfg.prepare = OmegaConf.create(TINY)
    return cfg


def _mtimes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _read_all(raw: Path, entry: dict[str, Any]) -> list[dict[str, Any]]:
    source = SourceConfig.from_mapping({**entry, "path": str(raw / entry["path"])})
    reader = get_reader(source.kind)
    reader.validate(source)
    return [row for unit in reader.units(source) for row in reader.read(source, unit)]


def test_prepare_data_end_to_end_then_skip(tmp_path: Path) -> None:
    cfg = _compose(tmp_path)
    raw = Path(cfg.paths.raw)
    marker = run(cfg)
    assert marker["status"] == "complete"
    assert json.loads((raw / "prepared.json").read_text()) == marker

    # every corpus reads cleanly with the project's own readers, with the counts the marker states
    sources = marker["corpora"]["sources"]
    assert {s["source"]["kind"] for s in sources} == {"librispeech", "commonvoice", "aishell2", "lhotse", "spoken_qa",
                                                       "sharegpt", "ttt_json"}
    for entry in sources:
        rows = _read_all(raw, entry["source"])
        assert not [r for r in rows if r["error"] or r["drop_reason"]], entry
        counts = entry["counts"]
        expected = counts[entry["source"]["split"]] if entry["source"]["kind"] == "commonvoice" else sum(
            counts.values())
        assert len(rows) == expected, entry
    audio = marker["corpora"]["audio"]
    assert set(audio) == {"piper:joe", "espeak:en", "espeak:cmn"} and all(v["seconds"] > 0 for v in audio.values())

    # the embedded codec was fitted from every voice's training audio, where codec.path says
    codec = marker["codec"]
    assert Path(codec["path"]).resolve() == Path(cfg.codec.path).resolve()
    assert any(Path(codec["path"]).iterdir())
    assert codec["sample_files"] >= 3 and codec["sample_seconds"] >= 3 * TINY["codec_fit_seconds_per_voice"]

    # a second run with the same config touches nothing
    before = _mtimes(tmp_path)
    start = time.perf_counter()
    assert run(_compose(tmp_path)) == marker
    assert time.perf_counter() - start < 10
    assert _mtimes(tmp_path) == before


def test_codec_sample_is_training_audio_of_every_voice(tmp_path: Path) -> None:
    cfg = PrepareConfig.from_mapping(TINY)
    paths = codec_sample_paths(cfg, tmp_path, seed=0)
    assert set(paths) == {"piper:joe", "espeak:en", "espeak:cmn"}
    everything = {j.path: j for p in plan_corpora(cfg, tmp_path, 0).speech for j in p.jobs}
    chosen = [everything[p] for ps in paths.values() for p in ps]
    assert chosen and all(j.split == "train" and Path(j.path).suffix in (".flac", ".wav") for j in chosen)
    held_out = {p for p, j in everything.items() if j.split != "train"}
    assert held_out and held_out.isdisjoint(j.path for j in chosen)


def _training_texts(plans: Any) -> list[str]:
    texts = [t for p in plans.speech for j in p.jobs if j.split != "eval" for t in j.texts]
    texts += [t for c in plans.conversations for turn in c.turns for t in turn]
    return texts


@pytest.mark.parametrize("state_heldout_facts", [True, False])
def test_eval_questions_never_appear_in_training_material(tmp_path: Path, state_heldout_facts: bool) -> None:
    conf = OmegaConf.to_container(OmegaConf.load(CONF / "prepare" / "embedded.yaml"))
    conf["textgen"]["documents_state_heldout_facts"] = state_heldout_facts
    plans = plan_corpora(PrepareConfig.from_mapping(conf), tmp_path, seed=0)
    eval_plan = next(p for p in plans.speech if p.name == "spoken_qa_eval")
    eval_questions = {t for j in eval_plan.jobs for t in j.texts}
    assert len(eval_questions) == sum(conf["spoken_qa"]["eval"].values())
    training = _training_texts(plans) + [d.text for d in plans.documents]
    assert not [t for t in training if any(q in t for q in eval_questions)]
    # held-out facts are stated in documents only when the config says so
    from pipelines.synthetic.textgen import qa_items, split_items, statements

    tg = PrepareConfig.from_mapping(conf).textgen
    _, heldout = split_items(qa_items(tg, 0), 0, tg.heldout_fraction)
    heldout_statements = {s.text for s in statements(0) if s.group in {i.group for i in heldout}}
    assert not heldout_statements & set(_training_texts(plans))
    documented = {g for d in plans.documents for g in d.groups} & {i.group for i in heldout}
    assert bool(documented) == state_heldout_facts


@pytest.mark.parametrize("name", ["embedded", "small"])
def test_shipped_sizes_plan(tmp_path: Path, name: str) -> None:
    conf = OmegaConf.to_container(OmegaConf.load(CONF / "prepare" / f"{name}.yaml"))
    plans = plan_corpora(PrepareConfig.from_mapping(conf), tmp_path, seed=0)
    voices = {j.voice for p in plans.speech for j in p.jobs}
    assert voices == {"piper:joe", "espeak:en", "espeak:cmn"}
    assert len(plans.conversations) == conf["chat"] and len(plans.documents) == conf["documents"]
    # enough English speech for a small model to learn recognition that generalises, and enough to measure it
    counts = {p.name: p.counts for p in plans.speech}
    assert counts["librispeech"]["train-clean-100"] >= 1200 and counts["librispeech"]["test-clean"] >= 100
    assert all(n >= 50 for n in counts["spoken_qa_eval"].values()) and len(counts["spoken_qa_eval"]) == 2
    if name == "embedded":
        assert counts["librispeech"]["train-clean-100"] >= 3000
        # Piper (~20x slower than espeak) is a small share of the English audio, or prepare outgrows its minutes
        english = [j.voice for p in plans.speech if p.language == "en" for j in p.jobs]
        assert english.count("piper:joe") <= 0.2 * len(english)
        # the embedded ASR evaluation reads the first test-clean utterances in path order: the bulk voice
        librispeech = next(p for p in plans.speech if p.name == "librispeech")
        first = sorted((j.path, j.voice) for j in librispeech.jobs if "/test-clean/" in j.path)[:10]
        assert {voice for _, voice in first} == {"espeak:en"}
    # TTS trains on its own corpus in one voice at one speed, one sentence per recording, new training sentences
    tts = next(p for p in plans.speech if p.name == "tts_en")
    assert tts.task == "tts" and tts.counts == {"train": conf["tts"]["train"]}
    assert {(j.voice, j.speed, j.split, len(j.texts)) for j in tts.jobs} == {("espeak:en", 1.0, "train", 1)}
    asr_train = {t for p in plans.speech if p.name == "librispeech" for j in p.jobs for t in j.texts}
    assert asr_train.isdisjoint(t for j in tts.jobs for t in j.texts)


def test_tts_corpus_config_is_checked() -> None:
    with pytest.raises(ValueError, match=r"tts\.train needs tts\.speaker"):
        PrepareConfig.from_mapping({**TINY, "tts": {"train": 5}})
    with pytest.raises(ValueError, match="voices"):
        PrepareConfig.from_mapping({**TINY, "tts": {"speaker": {"voice": "espeak:en"}, "train": 5, "voices": 2}})
    with pytest.raises(ValueError, match="spead"):
        PrepareConfig.from_mapping({**TINY, "tts": {"speaker": {"voice": "espeak:en", "spead": 1.1}, "train": 5}})
    assert PrepareConfig.from_mapping({**TINY, "tts": {}}).tts_speaker is None


ENGLISH_ASR = ("librispeech", "commonvoice_en", "lhotse")


def _words(text: str) -> list[str]:
    return librispeech_transcript(text).split()


def test_heldout_english_sentences_are_new_combinations_of_training_words(tmp_path: Path) -> None:
    """The held-out English speech (LibriSpeech test-clean, Common Voice dev/test, lhotse test) measures
    generalisation: no training source holds a held-out sentence, yet every held-out word is heard in training."""
    conf = OmegaConf.to_container(OmegaConf.load(CONF / "prepare" / "embedded.yaml"))
    plans = plan_corpora(PrepareConfig.from_mapping(conf), tmp_path, seed=0)
    english = [p for p in plans.speech if p.name in ENGLISH_ASR]
    assert {p.name for p in english} == set(ENGLISH_ASR)
    heldout = [t for p in english for j in p.jobs if j.split != "train" for t in j.texts]
    train_asr = [t for p in english for j in p.jobs if j.split == "train" for t in j.texts]
    assert len(heldout) >= 100 and len(train_asr) >= 3000

    # every training source: ASR and TTS audio, spoken QA, chat, documents
    training = [t for p in plans.speech for j in p.jobs if j.split == "train" for t in j.texts]
    training += [t for c in plans.conversations for turn in c.turns for t in turn] + [d.text for d in plans.documents]
    haystack = "\n".join(f" {' '.join(_words(t))} " for t in training)
    leaked = [t for t in heldout if f" {' '.join(_words(t))} " in haystack]
    assert not leaked, leaked[:5]

    train_vocab = {w for t in train_asr for w in _words(t)}
    heldout_vocab = {w for t in heldout for w in _words(t)}
    assert heldout_vocab <= train_vocab, sorted(heldout_vocab - train_vocab)
    assert 60 <= len(heldout_vocab) <= 80  # the small-vocabulary grammar, nothing open-vocabulary


def test_force_redoes_and_foreign_corpora_are_never_deleted(tmp_path: Path) -> None:
    text_only = {**TINY, "librispeech": {}, "commonvoice": {}, "aishell2": {}, "lhotse": {}, "tts": {},
                 "spoken_qa": {}}
    raw = tmp_path / "raw"
    first = prepare(text_only, raw)
    chat = raw / "openhermes" / "openhermes2_5.json"
    stamp = chat.stat().st_mtime_ns
    assert prepare(text_only, raw) == first and chat.stat().st_mtime_ns == stamp
    time.sleep(0.01)
    assert prepare(text_only, raw, force=True)["corpora"]["hash"] == first["corpora"]["hash"]
    assert chat.stat().st_mtime_ns != stamp
    changed = prepare({**text_only, "chat": 3}, raw)
    assert changed["corpora"]["hash"] != first["corpora"]["hash"]
    assert len(json.loads(chat.read_text())) == 3

    foreign = tmp_path / "real"
    (foreign / "LibriSpeech" / "train-clean-100").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="refusing"):
        prepare(text_only, foreign)
    assert (foreign / "LibriSpeech" / "train-clean-100").is_dir()


def test_script_runs_from_the_repository_root() -> None:
    """The entry point works as `python workflows/prepare_data.py` without the project being installed."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "workflows/prepare_data.py", "--cfg", "job", "--package", "prepare"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "librispeech" in out.stdout and "spoken_qa" in out.stdout
