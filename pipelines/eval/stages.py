"""The three Ray Data stages of an evaluation run, as callable classes for `map_batches` actor pools.

    GenerateStage    the model answers every item (text + speech) with the decoder of its training objective
                     (sampler `decode`, recorded per item in column `decode`); speech is written as a WAV file
    TranscribeStage  the ASR model transcribes generated speech (Audio-QA answers, TTS outputs)
    JudgeStage       Audio-QA answers are judged twice: the speech transcript and the text answer

Separate stages because each holds a different model and wants its own pool size and accelerator share
(config `eval.stages.*`): one GPU per generator, a fraction of one for Whisper, none for the judge (its
work is waiting on HTTP). Speech travels between stages as file paths, not arrays, so blocks stay small and
the audio is there for the report to link.

Every stage takes and returns a pyarrow batch, appends its own columns with fixed types, and never raises
for one item: failures become `status`/`*_error` column values (docs/ray.md: a raised error drops whole blocks).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.eval.items import GENERATION_ERROR, INPUT_ERROR, OK
from pipelines.eval.judges import Judgment, QaItem, build_judge


def top_code_share(codes: np.ndarray) -> float | None:
    """The share of an answer's audio codes taken by its commonest code, None without codes. A span that collapsed
    onto one repeated code scores ~1 (what greedy diffusion decoding of an undertrained model produces); real speech
    of the embedded codec scores ~0.05."""
    flat = np.asarray(codes).reshape(-1)
    return float(np.unique(flat, return_counts=True)[1].max() / flat.size) if flat.size else None


GENERATED_FIELDS = [
    ("answer_text", pa.string()), ("audio_path", pa.string()), ("audio_seconds", pa.float64()),
    ("n_audio_tokens", pa.int64()), ("finish_reason", pa.string()), ("gen_seconds", pa.float64()),
    ("decode", pa.string()), ("top_code_share", pa.float64()),
]
TRANSCRIBED_FIELDS = [("speech_transcript", pa.string()), ("asr_model", pa.string()), ("asr_error", pa.string())]
JUDGED_FIELDS = [
    ("speech_verdict", pa.string()), ("speech_score", pa.float64()), ("text_verdict", pa.string()),
    ("text_score", pa.float64()), ("judge", pa.string()), ("judge_output_speech", pa.string()),
    ("judge_output_text", pa.string()), ("judge_error", pa.string()),
    # the same answers judged against another item's references (the control, pipelines/eval/scoring.py)
    ("speech_control_verdict", pa.string()), ("speech_control_score", pa.float64()),
    ("text_control_verdict", pa.string()), ("text_control_score", pa.float64()),
]
SPEECH_TASKS = ("audio_qa", "tts")  # tasks whose generated speech is transcribed


def _append(batch: pa.Table, columns: Mapping[str, list[Any]], fields: Sequence[tuple[str, pa.DataType]]
            ) -> pa.Table:
    """`batch` with `columns` replaced or added, typed as `fields` (uniform block schemas for Ray Data)."""
    for name, dtype in fields:
        array = pa.array(columns[name], type=dtype)
        idx = batch.schema.get_field_index(name)
        batch = batch.set_column(idx, name, array) if idx >= 0 else batch.append_column(name, array)
    return batch


def _safe_name(item_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", item_id).strip("_") or "item"


# ---------------------------------------------------------------------------------------------- generate

class GenerateStage:
    """Loads one checkpoint + codec per actor; answers a batch of items with `answer_batch` (one ragged batch),
    falling back to one item at a time when the batch fails, so one bad item costs only itself."""

    def __init__(self, checkpoint: str, codec_factory: Callable[[], Any], sampler: Mapping[str, Any],
                 audio_dir: str, device: str = "cpu", dtype: str = "auto", text_tokenizer: str = "bundled:qwen",
                 torch_threads: int | None = None) -> None:
        import torch

        from ttt_model.decoding.sampler_config import SamplerConfig
        from ttt_model.decoding.speech_lm import SpeechLM

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.lm = SpeechLM.load(checkpoint, codec_factory(), text_tokenizer=text_tokenizer, device=device, dtype=dtype)
        self.sampler = SamplerConfig.from_mapping(sampler)
        self.decode = self.lm.decode_mode(self.sampler)  # `auto` resolved against the checkpoint's record
        self.audio_dir = Path(audio_dir)

    def _conversation(self, row: Mapping[str, Any]) -> list[Any]:
        from pipelines.tasks import prompt_for
        from tokenization.audio import load_audio
        from ttt_model.decoding.speech_lm import Message

        task = row["task"]
        if task == "tts":
            text = prompt_for("tts", row["language"], row["item_id"]).format(text=row["question"])
            return [Message("user", text=text)]
        source = row["audio_in_bytes"] if row["audio_in_bytes"] is not None else row["audio_in_path"]
        wav, sr, _ = load_audio(source, start_s=row["audio_in_start"], end_s=row["audio_in_end"])
        if task == "asr":
            return [Message("user", text=prompt_for("asr", row["language"], row["item_id"]), audio=(wav, sr))]
        return [Message("user", audio=(wav, sr))]

    def _answer_all(self, conversations: list[list[Any]]) -> tuple[list[Any], float]:
        """Answers (or the exception per item) and the seconds spent per item (batch time / batch size)."""
        from ttt_model.decoding.speech_lm import answer_batch

        t0 = time.perf_counter()
        try:
            answers: list[Any] = answer_batch(self.lm, conversations, self.sampler)
        except Exception:  # isolate the culprit: retry one by one
            answers = []
            for conv in conversations:
                try:
                    answers.extend(answer_batch(self.lm, [conv], self.sampler))
                except Exception as e:
                    answers.append(e)
        return answers, (time.perf_counter() - t0) / max(1, len(conversations))

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        out: dict[str, list[Any]] = {name: [None] * len(rows) for name, _ in GENERATED_FIELDS}
        status, error = [r["status"] for r in rows], [r["error"] for r in rows]
        todo: list[int] = []
        conversations: list[list[Any]] = []
        for i, row in enumerate(rows):
            if row["status"] != OK:
                continue
            try:
                conversations.append(self._conversation(row))
                todo.append(i)
            except Exception as e:  # unreadable input audio: the item's problem, not the model's
                status[i], error[i] = INPUT_ERROR, f"input audio: {e.__class__.__name__}: {e}"
        answers, per_item_s = self._answer_all(conversations) if conversations else ([], 0.0)
        for i, ans in zip(todo, answers, strict=True):
            out["decode"][i] = self.decode
            if isinstance(ans, Exception):
                status[i], error[i] = GENERATION_ERROR, f"{ans.__class__.__name__}: {ans}"
                continue
            out["answer_text"][i] = ans.text.strip()
            out["n_audio_tokens"][i] = int(ans.codes.size)
            out["top_code_share"][i] = top_code_share(ans.codes)
            out["finish_reason"][i] = ans.finish_reason
            out["gen_seconds"][i] = per_item_s
            out["audio_seconds"][i] = float(ans.waveform.size) / ans.sample_rate if ans.sample_rate else 0.0
            out["audio_path"][i] = ""
            if ans.waveform.size:
                from tokenization.audio import write_audio

                path = self.audio_dir / rows[i]["task"] / f"{_safe_name(rows[i]['item_id'])}.wav"
                try:
                    write_audio(path, ans.waveform, ans.sample_rate)
                    out["audio_path"][i] = str(path)
                except Exception as e:
                    status[i], error[i] = GENERATION_ERROR, f"writing audio: {e.__class__.__name__}: {e}"
        out["status"], out["error"] = status, error
        return _append(batch, out, [*GENERATED_FIELDS, ("status", pa.string()), ("error", pa.string())])


# -------------------------------------------------------------------------------------------- transcribe

class TranscribeStage:
    """Transcribes generated speech with the recogniser configured for the item's language (`asr_models`:
    {language: AsrConfig mapping or None}); models load on first use. No speech generated -> empty
    transcript; no recogniser for the language -> `asr_error`, and the item is left out of speech scores."""

    def __init__(self, asr_models: Mapping[str, Mapping[str, Any] | None]) -> None:
        self.configs = {str(k).lower(): v for k, v in asr_models.items()}
        self.models: dict[str, Any] = {}

    def _config(self, language: str) -> tuple[str, Any]:
        from pipelines.eval.asr import AsrConfig

        lang = language.lower().split("-")[0].split("_")[0]
        cfg = self.configs.get(lang)
        if cfg is None:
            raise LookupError(f"no ASR model configured for language {language!r} (eval.asr_models.{lang})")
        return lang, AsrConfig.from_mapping(cfg)

    def _model(self, lang: str, cfg: Any) -> Any:
        from pipelines.eval.asr import build_transcriber

        if lang not in self.models:
            self.models[lang] = build_transcriber(cfg)
        return self.models[lang]

    def __call__(self, batch: pa.Table) -> pa.Table:
        from pipelines.eval.asr import transcriber_name
        from tokenization.audio import load_audio

        rows = batch.to_pylist()
        out: dict[str, list[Any]] = {name: [None] * len(rows) for name, _ in TRANSCRIBED_FIELDS}
        by_language: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            if row["task"] not in SPEECH_TASKS or row["status"] not in (OK, GENERATION_ERROR):
                continue
            by_language.setdefault(row["language"] or "en", []).append(i)
        for language, idx in by_language.items():
            voiced = [i for i in idx if rows[i]["audio_path"]]
            try:
                lang, cfg = self._config(language)
                model = self._model(lang, cfg) if voiced else None  # no speech to hear: no model to load
            except Exception as e:  # missing recogniser or one that does not load: every item says why
                for i in idx:
                    out["asr_error"][i] = f"{e.__class__.__name__}: {e}"
                continue
            for i in idx:
                out["speech_transcript"][i], out["asr_model"][i], out["asr_error"][i] = "", transcriber_name(cfg), ""
            waves: list[np.ndarray] = []
            rates: list[int] = []
            readable: list[int] = []
            for i in voiced:
                try:
                    wav, sr, _ = load_audio(rows[i]["audio_path"])
                except Exception as e:
                    out["asr_error"][i] = f"reading {rows[i]['audio_path']}: {e.__class__.__name__}: {e}"
                    continue
                waves.append(wav)
                rates.append(sr)
                readable.append(i)
            for i, text in zip(readable, self._transcribe(model, waves, rates), strict=True):
                if isinstance(text, Exception):
                    out["asr_error"][i] = f"{text.__class__.__name__}: {text}"
                else:
                    out["speech_transcript"][i] = text
        return _append(batch, out, TRANSCRIBED_FIELDS)

    @staticmethod
    def _transcribe(model: Any, waves: list[np.ndarray], rates: list[int]) -> list[str | Exception]:
        if not waves:
            return []
        try:
            return list(model.transcribe_batch(waves, rates))
        except Exception:  # isolate the clip that breaks the recogniser
            results: list[str | Exception] = []
            for w, sr in zip(waves, rates, strict=True):
                try:
                    results.extend(model.transcribe_batch([w], [sr]))
                except Exception as e:
                    results.append(e)
            return results


# ------------------------------------------------------------------------------------------------ judge

class JudgeStage:
    """Judges Audio-QA items: the text answer, and the speech answer through its transcript. A failed
    generation is judged as an empty answer (it counts against the model); an item whose input was broken,
    or whose speech has no transcript (no recogniser), gets verdict `error` (left out of the score, counted)."""

    def __init__(self, judge: Mapping[str, Any]) -> None:
        self.judge = build_judge(judge)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        out: dict[str, list[Any]] = {name: [None] * len(rows) for name, _ in JUDGED_FIELDS}
        queries: list[QaItem] = []
        slots: list[tuple[int, str]] = []
        for i, row in enumerate(rows):
            if row["task"] != "audio_qa":
                continue
            out["judge"][i], out["judge_error"][i] = self.judge.name, ""
            if row["status"] not in (OK, GENERATION_ERROR):
                self._set(out, i, "speech", Judgment("error", None, self.judge.name, error="input error"))
                self._set(out, i, "text", Judgment("error", None, self.judge.name, error="input error"))
                continue
            refs = tuple(json.loads(row["references_json"] or "[]"))
            control = tuple(json.loads(row.get("control_references_json") or "[]"))
            base = {"subset": row["subset"], "question": row["question"],
                    "metric": row["metric"] or "accuracy", "language": row["language"] or "en"}
            answers = {"text": row["answer_text"] or ""}
            if row["asr_error"]:
                self._set(out, i, "speech", Judgment("error", None, self.judge.name,
                                                     error=f"no transcript: {row['asr_error']}"))
            else:
                answers["speech"] = row["speech_transcript"] or ""
            for kind, answer in answers.items():
                queries.append(QaItem(answer=answer, references=refs, **base))
                slots.append((i, kind))
                if control:
                    queries.append(QaItem(answer=answer, references=control, **base))
                    slots.append((i, f"{kind}_control"))
        for (i, kind), judgment in zip(slots, self.judge.judge_many(queries), strict=True):
            if kind.endswith("_control"):
                out[f"{kind}_verdict"][i], out[f"{kind}_score"][i] = judgment.verdict, judgment.score
            else:
                self._set(out, i, kind, judgment)
        return _append(batch, out, JUDGED_FIELDS)

    @staticmethod
    def _set(out: dict[str, list[Any]], i: int, kind: str, j: Judgment) -> None:
        out[f"{kind}_verdict"][i] = j.verdict
        out[f"{kind}_score"][i] = j.score
        out[f"judge_output_{kind}"][i] = j.raw
        if j.error:
            out["judge_error"][i] = "; ".join(e for e in (out["judge_error"][i], f"{kind}: {j.error}") if e)
