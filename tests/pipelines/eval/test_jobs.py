"""Evaluation sweeps: items from reader fixtures, the three Ray Data stages, per-item Parquet, results and the table.

The model is a real TtT checkpoint whose weights make it a fixed bigram machine (one-hot embeddings, every
layer's output projections zeroed, so each position's state is its own token): after the assistant header it
says "Paris", opens the final audio span, fills it with one code, closes it and ends the turn. That makes
every stage's output known in advance while running the real sampler, codec decoding, Whisper and the judge.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from pipelines.eval.items import ITEM_SCHEMA, load_items
from pipelines.eval.jobs import (
    EvalConfigError,
    build_grid,
    resolve_checkpoint,
    resolve_decode,
    run_evaluation,
    sampler_slug,
    summarize,
)
from pipelines.eval.stages import JudgeStage, TranscribeStage
from tokenization.codecs.base import AudioCodec, CodecIdentity

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures" / "corpora"
CODE = 3  # the one code the bigram model speaks


class ToneCodec(AudioCodec):
    """25 codes/s, 16 codes; code c decodes to a 40 ms tone at 200 + 40c Hz (encode: loudness level)."""

    @property
    def identity(self) -> CodecIdentity:
        return CodecIdentity("tone-test", "1", 25.0, 16, 16000, 16000, "tone")

    def encode(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        frames = np.asarray(waveform, np.float32)[: len(waveform) // 640 * 640].reshape(-1, 640)
        return np.clip((np.sqrt((frames ** 2).mean(axis=1)) * 40).astype(np.int64), 0, 15)

    def decode(self, codes: np.ndarray) -> tuple[np.ndarray, int]:
        t = np.arange(640) / 16000
        tones = [0.2 * np.sin(2 * np.pi * (200 + 40 * int(c)) * t) for c in codes]
        return (np.concatenate(tones) if tones else np.zeros(0)).astype(np.float32), 16000


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from tokenization.vocab import EOA_FINAL, SOA_FINAL
    from tokenization.vocab_factory import make_vocab
    from ttt_model.core.model import build_model
    from ttt_model.core.model_checkpoint import save_checkpoint

    vocab = make_vocab("bundled:qwen", ToneCodec().identity, "compact")
    model = build_model({"init": "random", "attn_implementation": "sdpa", "config": {
        "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "tie_word_embeddings": False, "max_position_embeddings": 512}}, vocab)
    (paris,) = vocab.encode_text("Paris")
    code = vocab.audio_offset + CODE
    # state dimension of each token (every other token shares dimension 0) and the bigram transitions
    dims = {paris: 1, vocab.id(SOA_FINAL): 2, vocab.mask_id: 3, code: 4, vocab.id(EOA_FINAL): 5}
    transitions = {0: paris, 1: vocab.id(SOA_FINAL), 2: code, 3: code, 4: vocab.id(EOA_FINAL), 5: vocab.eos_id}
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb.zero_()
        emb[:, 0] = 1.0
        for token, dim in dims.items():
            emb[token].zero_()
            emb[token, dim] = 1.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        head = model.lm_head.weight
        head.zero_()
        for dim, nxt in transitions.items():
            head[nxt, dim] = 5.0
    path = tmp_path_factory.mktemp("ckpt") / "ttt" / "checkpoint_000001" / "model"
    save_checkpoint(model, vocab.manifest(), path)
    return path


def eval_config(tmp_path: Path, ckpt_root: Path) -> dict:
    librispeech = {"kind": "librispeech", "language": "en", "path": str(FIXTURES / "librispeech" / "LibriSpeech"),
                   "subsets": ["test-clean"]}
    return {
        "paths": {"eval": str(tmp_path / "eval")},
        "data": {"text_tokenizer": "bundled:qwen"},
        "sampler": {"block_length": 4, "steps_per_block": 2, "max_span": 16, "max_new_tokens": 24, "threshold": None,
                    "seed": 0, "backend": "cache"},
        "eval": {
            "grid": {"checkpoints": [{"path": str(ckpt_root), "system": "ttt"}],
                     "samplers": [{"steps_per_block": 1}]},
            "tasks": {
                "audio_qa": {"sources": [{"name": "oab", "kind": "spoken_qa", "language": "en",
                                          "path": str(FIXTURES / "spoken_qa"),
                                          "subsets": ["llama_questions", "trivia_qa", "alpaca_eval"]}]},
                "asr": {"sources": [{"name": "ls_test", **librispeech}]},
                "tts": {"sources": [{"name": "ls_tts", **librispeech}], "max_items": 1},
            },
            "asr_models": {"en": {"backend": "faster_whisper", "model": "bundled:whisper-tiny.en", "cpu_threads": 1}},
            "judge": {"kind": "rule"},
            "stages": {"generate": {"pool_size": 1, "batch_size": 4, "num_cpus": 1, "torch_threads": 1},
                       "transcribe": {"pool_size": 1, "batch_size": 8, "num_cpus": 1},
                       "judge": {"pool_size": 1, "batch_size": 16, "num_cpus": 0.5}},
            "bootstrap": 50, "seed": 0,
        },
    }


def test_sweep_end_to_end(ray_local, tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = eval_config(tmp_path, checkpoint.parents[2])
    table = run_evaluation(cfg, codec_factory=ToneCodec)
    eval_dir = tmp_path / "eval"

    assert [(r["label"], r["run_id"]) for r in table["rows"]] == [("TtT", "ttt__s1")]
    keys = [c["key"] for c in table["columns"]]
    assert keys[:6] == ["audio_qa/llama_questions/speech", "audio_qa/llama_questions/text",
                        "audio_qa/trivia_qa/speech", "audio_qa/trivia_qa/text",
                        "audio_qa/alpaca_eval/speech", "audio_qa/alpaca_eval/text"]
    assert keys[6:] == ["asr/ls_test", "tts/ls_tts"]
    row = table["rows"][0]["values"]
    assert row["audio_qa/llama_questions/text"] == 100.0  # "Paris" answers the capital of France
    assert row["audio_qa/trivia_qa/text"] == 0.0  # ... but not the red planet
    assert row["audio_qa/alpaca_eval/text"] is None  # the rule judge cannot rate open-ended answers
    assert json.loads((eval_dir / "table.json").read_text())["rows"] == table["rows"]
    assert "| TtT | " in (eval_dir / "table.md").read_text()

    run_id = table["rows"][0]["run_id"]
    results = json.loads((eval_dir / run_id / "results.json").read_text())
    asr = results["asr"]["ls_test"]
    assert (asr["metric"], asr["n_items"], asr["n_input_error"]) == ("wer", 2, 0)
    assert asr["substitutions"] + asr["deletions"] == asr["reference_tokens"] > 0  # one word said: "paris"
    assert asr["ci_low"] is not None
    qa = results["audio_qa"]["llama_questions"]
    assert (qa["n_items"], qa["n_input_error"], qa["text"]["n_valid"]) == (2, 1, 1)  # 1.wav is missing
    assert results["generation"]["finish_reasons"] == {"eos": 6}
    assert results["decode"] == results["sampler"]["decode"] == "ttt"  # no objective record, system ttt
    assert results["generation"]["audio_tokens"] == 6 * 4  # one block of 4 masks committed in one step per item

    con = duckdb.connect()
    rows = con.sql("SELECT task, status, answer_text, n_audio_tokens, audio_path, speech_transcript, asr_model, "
                   "text_verdict, speech_verdict, run_id, error "
                   f"FROM read_parquet('{eval_dir}/{run_id}/items/*.parquet') ORDER BY item_id").fetchall()
    assert len(rows) == 7
    for task, status, text, n_codes, audio, transcript, asr_model, tv, sv, rid, error in rows:
        assert rid == run_id
        if status == "input_error":
            assert task == "audio_qa" and "audio file missing" in error and sv == tv == "error"
            continue
        assert (status, text) == ("ok", "Paris") and n_codes >= 1 and Path(audio).is_file()
        assert os.path.dirname(audio).startswith(str(eval_dir / run_id / "audio"))
        if task in ("audio_qa", "tts"):
            assert transcript is not None and asr_model == "faster_whisper:bundled:whisper-tiny.en"
        else:
            assert transcript is None
    capsys.readouterr()

    # the same grid again: the run is up to date and is not recomputed
    mtime = (eval_dir / run_id / "results.json").stat().st_mtime_ns
    again = run_evaluation(cfg, codec_factory=ToneCodec)
    assert again["rows"] == table["rows"]
    assert (eval_dir / run_id / "results.json").stat().st_mtime_ns == mtime
    assert capsys.readouterr().out.count("is up to date") == 1


def test_grid_and_checkpoint_resolution(tmp_path: Path) -> None:
    old = tmp_path / "ckpts" / "ttt" / "checkpoint_1" / "model"
    new = tmp_path / "ckpts" / "ttt" / "checkpoint_2" / "model"
    hidden = tmp_path / "ckpts" / "ttt" / ".checkpoint_3.tmp"
    for i, d in enumerate((old, new, hidden)):
        d.mkdir(parents=True)
        (d / "vocab_manifest.json").write_text("{}")
        os.utime(d / "vocab_manifest.json", (1000 + i, 1000 + i))
    assert resolve_checkpoint(tmp_path / "ckpts") == new
    assert resolve_checkpoint(old) == old
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        resolve_checkpoint(tmp_path / "nothing")
    cfg = {"sampler": {"block_length": 32, "steps_per_block": 10, "text": {"temperature": 0.0, "top_k": 0}},
           "eval": {"grid": {"checkpoints": [{"path": str(tmp_path / "ckpts"), "system": "ar_baseline"}],
                             "samplers": [{}, {"threshold": 0.9, "text": {"top_k": 5}}]}}}
    specs = build_grid(cfg)
    assert [s.run_id for s in specs] == ["ar_baseline__default", "ar_baseline__text.top_k5_t0.9"]
    assert specs[1].sampler == {"block_length": 32, "steps_per_block": 10, "threshold": 0.9,
                                "text": {"temperature": 0.0, "top_k": 5}, "decode": "ar"}  # from the system name
    assert sampler_slug({"steps_per_block": 4, "block_length": 16}) == "b16_s4"
    assert sampler_slug({"backend": "recompute"}) == "recompute"
    cfg["eval"]["grid"]["checkpoints"].append({"path": str(new), "system": "ar_baseline"})
    with pytest.raises(EvalConfigError, match="duplicate runs"):
        build_grid(cfg)
    # a recorded objective wins over the system name; an explicit decode wins over both; free labels mean TtT
    (new / "objective.json").write_text(json.dumps({"mode": "nar"}))
    assert resolve_decode({}, new, "ar_baseline") == "nar" and resolve_decode({"decode": "auto"}, new, "x") == "nar"
    assert resolve_decode({"decode": "ttt"}, new, "nar_baseline") == "ttt"
    assert resolve_decode({}, old, "nar_baseline") == "nar" and resolve_decode({}, old, "my model") == "ttt"
    (new / "objective.json").write_text(json.dumps({"mode": "diffusion"}))
    with pytest.raises(EvalConfigError, match="records objective mode"):
        resolve_decode({}, new, "ttt")
    with pytest.raises(EvalConfigError, match="decode"):
        resolve_decode({"decode": "fast"}, old, "ttt")
    with pytest.raises(EvalConfigError, match="empty"):
        build_grid({"eval": {"grid": {}}})


def test_load_items_marks_broken_inputs() -> None:
    table, dropped = load_items("audio_qa", [{"name": "oab", "kind": "spoken_qa", "language": "en",
                                              "path": str(FIXTURES / "spoken_qa")}], max_items=1)
    assert table.schema == ITEM_SCHEMA
    rows = {r["subset"]: r for r in table.to_pylist()}
    assert sorted(rows) == ["alpaca_eval", "llama_questions", "trivia_qa", "web_questions"]  # one per subset
    assert json.loads(rows["trivia_qa"]["references_json"]) == ["mars", "red planet"]
    assert rows["alpaca_eval"]["metric"] == "score" and rows["llama_questions"]["status"] == "ok"
    asr, _ = load_items("asr", [{"name": "ls", "kind": "librispeech", "language": "en",
                                 "path": str(FIXTURES / "librispeech" / "LibriSpeech"), "subsets": ["dev-clean"]}])
    by_status = {(r["status"], r["error"][:20]) for r in asr.to_pylist()}
    assert ("ok", "") in by_status and any(s == "input_error" for s, _ in by_status)
    assert all(r["question"] == "" for r in asr.to_pylist())  # ASR prompts carry no text of the answer
    with pytest.raises(ValueError, match="unknown eval task"):
        load_items("summarise", [])
    assert dropped == {}


def _item_rows(**columns: list) -> pa.Table:
    n = len(next(iter(columns.values())))
    base = {f.name: [None] * n for f in ITEM_SCHEMA}
    base.update(status=["ok"] * n, error=[""] * n, language=["en"] * n, metric=["accuracy"] * n, question=["q"] * n)
    base.update(columns)
    return pa.Table.from_pydict(base)


def test_summarize_counts_failures_honestly() -> None:
    table = _item_rows(
        item_id=["a1", "a2", "a3", "a4", "s1", "s2", "s3", "t1", "t2"],
        task=["audio_qa"] * 4 + ["asr"] * 3 + ["tts"] * 2, subset=["qa"] * 4 + ["ls"] * 3 + ["tt"] * 2,
        references_json=['["x"]'] * 4 + ['["the cat sat"]', '["a dog"]', '["gone"]', '["hello world"]', '["hi"]'],
        status=["ok", "ok", "generation_error", "input_error", "ok", "generation_error", "input_error", "ok", "ok"],
        answer_text=["x", "y", None, None, "the cat sat", None, None, "", ""],
        speech_verdict=["correct", "incorrect", "incorrect", "error", None, None, None, None, None],
        speech_score=[100.0, 0.0, 0.0, None, None, None, None, None, None],
        text_verdict=["correct", "correct", "incorrect", "error", None, None, None, None, None],
        text_score=[100.0, 100.0, 0.0, None, None, None, None, None, None],
        speech_transcript=[None] * 7 + ["hello word", ""], asr_error=[None] * 7 + ["", "no ASR model"],
        asr_model=[None] * 7 + ["whisper", None], top_code_share=[None] * 7 + [0.5, None],
    )
    out = summarize(table)
    qa = out["audio_qa"]["qa"]
    assert qa["speech"]["score"] == pytest.approx(100 / 3) and qa["text"]["score"] == pytest.approx(200 / 3)
    assert (qa["n_items"], qa["n_input_error"], qa["n_generation_error"], qa["speech"]["n_error"]) == (4, 1, 1, 1)
    asr = out["asr"]["ls"]
    assert (asr["reference_tokens"], asr["deletions"], asr["rate"]) == (5, 2, pytest.approx(2 / 5))
    tts = out["tts"]["tt"]
    assert (tts["reference_tokens"], tts["substitutions"], tts["n_no_transcript"]) == (2, 1, 1)
    assert tts["top_code_share"] == 0.5  # the answer without a transcript is not scored


def test_top_code_share_sees_a_collapsed_span() -> None:
    from pipelines.eval.stages import top_code_share

    assert top_code_share(np.array([7] * 9 + [3])) == pytest.approx(0.9)
    assert top_code_share(np.arange(20)) == pytest.approx(0.05)
    assert top_code_share(np.zeros(0, dtype=np.int64)) is None


def test_stages_without_ray() -> None:
    batch = _item_rows(item_id=["q1", "t1", "t2"], task=["audio_qa", "tts", "tts"], subset=["trivia_qa", "tz", "te"],
                       language=["en", "zh", "en"], references_json=['["Mars"]', '["你好"]', '["hi"]'],
                       answer_text=["Mars!", "", ""], audio_path=["", "/nonexistent.wav", "/nonexistent.wav"])
    transcribed = TranscribeStage({"en": {"model": "bundled:whisper-tiny.en"}, "zh": None})(batch)
    q, tz, te = transcribed.to_pylist()
    assert (q["speech_transcript"], q["asr_error"]) == ("", "")  # no speech generated: an empty transcript
    assert q["asr_model"] == te["asr_model"] == "faster_whisper:bundled:whisper-tiny.en"
    assert "no ASR model configured for language 'zh'" in tz["asr_error"] and tz["asr_model"] is None
    assert te["asr_error"].startswith("reading /nonexistent.wav")
    judged = JudgeStage({"kind": "rule"})(transcribed).to_pylist()
    assert (judged[0]["text_verdict"], judged[0]["speech_verdict"]) == ("correct", "incorrect")
    assert judged[1]["text_verdict"] is None and judged[0]["judge"] == "rule"


def test_generate_stage_isolates_failing_items(checkpoint: Path, tmp_path: Path) -> None:
    """One over-long prompt fails its own item (generation_error) and one unreadable input audio is an
    input_error; the rest of the batch is answered as usual."""
    from pipelines.eval.stages import GenerateStage

    stage = GenerateStage(str(checkpoint), ToneCodec, {"block_length": 4, "steps_per_block": 1, "max_span": 16,
                                                       "max_new_tokens": 24}, str(tmp_path / "audio"), torch_threads=1)
    batch = _item_rows(item_id=["tts/ok", "tts/long", "qa/missing"], task=["tts", "tts", "audio_qa"],
                       subset=["t", "t", "q"], question=["Hello there.", "word " * 600, ""],
                       audio_in_path=["", "", "/nonexistent.wav"], audio_in_start=[0.0] * 3)
    ok, long, missing = stage(batch).to_pylist()
    assert (ok["status"], ok["answer_text"], ok["n_audio_tokens"], ok["finish_reason"]) == ("ok", "Paris", 4, "eos")
    assert ok["decode"] == long["decode"] == "ttt" and missing["decode"] is None
    assert 0.25 <= ok["top_code_share"] <= 1 and long["top_code_share"] is None
    assert Path(ok["audio_path"]) == tmp_path / "audio" / "tts" / "tts_ok.wav" and Path(ok["audio_path"]).is_file()
    assert long["status"] == "generation_error" and "context holds 512" in long["error"]
    assert long["answer_text"] is None and long["audio_path"] is None
    assert missing["status"] == "input_error" and missing["error"].startswith("input audio:")


@pytest.mark.parametrize(("decode", "n_codes", "finish"), [("ar", 1, "eos"), ("nar", 0, "length")])
def test_generate_stage_decodes_with_the_baseline_decoders(checkpoint: Path, tmp_path: Path, decode: str,
                                                           n_codes: int, finish: str) -> None:
    """The bigram model under the baselines' decoders: AR feeds each code back, and a code predicts the closer,
    so its span holds one code (TtT's span is one block of 4 masks, each predicting a code); NAR's masks all
    predict codes in parallel, with no opener before them, so no speech and no end of turn."""
    from pipelines.eval.stages import GenerateStage

    stage = GenerateStage(str(checkpoint), ToneCodec, {"block_length": 4, "steps_per_block": 1, "max_span": 16,
                                                       "max_new_tokens": 24, "decode": decode},
                          str(tmp_path / "audio"), torch_threads=1)
    (row,) = stage(_item_rows(item_id=["tts/ok"], task=["tts"], subset=["t"], question=["Hello there."])).to_pylist()
    assert (row["status"], row["answer_text"], row["decode"]) == ("ok", "Paris", decode)
    assert (row["n_audio_tokens"], row["finish_reason"]) == (n_codes, finish)


def test_qa_answers_are_also_judged_against_another_items_references() -> None:
    from pipelines.eval.jobs import with_control_references

    batch = _item_rows(item_id=["q1", "q2", "q3", "solo"], task=["audio_qa"] * 4,
                       subset=["trivia_qa", "trivia_qa", "trivia_qa", "llama_questions"], language=["en"] * 4,
                       references_json=['["Mars"]', '["Paris"]', '["seven"]', '["blue"]'],
                       answer_text=["Mars!", "It is Paris.", "seven", "blue"], audio_path=[""] * 4)
    batch = with_control_references(batch, seed=0)
    rows = {r["item_id"]: r for r in batch.to_pylist()}
    trivia = {rows[i]["control_references_json"] for i in ("q1", "q2", "q3")}
    assert trivia == {'["Mars"]', '["Paris"]', '["seven"]'}  # a permutation of the subset's references ...
    assert all(rows[i]["control_references_json"] != rows[i]["references_json"] for i in ("q1", "q2", "q3"))
    assert rows["solo"]["control_references_json"] == "[]"  # ... and no control for a set of one
    transcribed = TranscribeStage({"en": None})(batch)
    judged = {r["item_id"]: r for r in JudgeStage({"kind": "rule"})(transcribed).to_pylist()}
    for i in ("q1", "q2", "q3"):
        assert (judged[i]["text_verdict"], judged[i]["text_control_verdict"]) == ("correct", "incorrect")
    assert judged["solo"]["text_control_verdict"] is None
    summary = summarize(pa.Table.from_pylist(list(judged.values())), bootstrap=200)
    control = summary["audio_qa"]["trivia_qa"]["text"]["control"]
    assert (control["n"], control["score"], control["control"]) == (3, 100.0, 0.0)  # judge scores are percentages
