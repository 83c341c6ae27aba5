"""Records in the exact shape of the reference implementation's released data (ai4ed/TtT datasets/*.json):
`{"messages": [{role, content, text_content}]}` chats and `{"text"}` documents, GLM-4-Voice codes inline.

System prompts and instructions are the reference's own; the codes are short runs (any N < 16,384 is a code).
Shared by the reference-format tests (tokenization, the tokenize job, training, export)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def codes(*values: int) -> str:
    return "".join(f"<|audio_{v}|>" for v in values)


ASR_SYSTEM = ("You are an Automatic Speech Recognition (ASR) model. The user will provide you with an audio input. "
              "Your task is to transcribe the audio into text and output the result in an interleaved format: "
              "generate 13 text tokens followed by 26 audio tokens, and repeat this pattern until the transcription "
              "is complete.")
CHAT_SYSTEM = ("You are an audio-to-audio chat model. The user will provide you with an audio input. Your task is to "
               "respond in an interleaved format: generate 13 text tokens followed by 26 audio tokens, and repeat "
               "this pattern until the response is complete.")
AUDIO_SYSTEM = ("You are a helpful audio model. The user will provide you with a text-based instruction and an audio "
                "input. Your task is to follow the instruction based on the audio and output the result in an "
                "interleaved format: generate 13 text tokens followed by 26 audio tokens, and repeat this pattern "
                "until the transcription is complete.")

ASR = {"messages": [
    {"role": "system", "content": ASR_SYSTEM, "text_content": None},
    {"role": "user", "content": "<|begin_of_audio|>" + codes(11400, 3722, 12426, 16383, 0) + "<|end_of_audio|>",
     "text_content": "{{text}}"},
    {"role": "assistant", "content": "of the existence of which lavoisier was unaware in the<|begin_of_audio|>"
                                     + codes(11400, 3722, 12426) + "<|end_of_audio_new|> be made good<|begin_of_quad|>"
                                     + codes(16383, 0) + "<|end_of_audio_span_last|>", "text_content": None}]}
AUDIO_CHAT = {"messages": [
    {"role": "system", "content": CHAT_SYSTEM, "text_content": None},
    {"role": "user", "content": "<|begin_of_audio|>" + codes(15358, 5426, 4559) + "<|end_of_audio|>",
     "text_content": "{{text}}"},
    {"role": "assistant", "content": "In some places, \"stand your<|begin_of_audio|>" + codes(589, 15905)
                                     + "<|end_of_audio_new|> ground\" laws apply.<|begin_of_quad|>" + codes(10547, 7)
                                     + "<|end_of_audio_span_last|>", "text_content": None}]}
# the reference's SEC/AAC/ASC file writes each message's keys in this order
CAPTION = {"messages": [
    {"content": AUDIO_SYSTEM, "role": "system", "text_content": None},
    {"content": "Please generate a caption for the given audio.<|begin_of_audio|>" + codes(5586, 1004, 130)
                + "<|end_of_audio|>", "role": "user", "text_content": "Please generate a caption for the given audio."},
    {"content": "people talking and laughing with the sounds of footsteps<|begin_of_quad|>" + codes(10815, 7998)
                + "<|end_of_audio_span_last|>", "role": "assistant", "text_content": None}]}
TEXT_CHAT = {"messages": [
    {"role": "system", "content": "You are a helpful model.", "text_content": None},
    {"role": "user", "content": "How many ways can the letters in the word COMMON be arranged?\nAnswer Choices: "
                                "(A) 6 (B) 30 (C) 90 (D) 120 (E) 180", "text_content": "{{text}}"},
    {"role": "assistant", "content": "6!2!∗2!=180\nThe answer is E.", "text_content": None}]}
# Chinese pre-training document: back-to-back spans, text after the final span
DOC_ZH = {"text": "荣誉<|begin_of_audio|>" + codes(13715, 11149) + "<|end_of_audio_new|>1000米两枚金牌"
                  + "<|begin_of_audio|>" + codes(15960) + "<|end_of_audio_new|><|begin_of_audio|>" + codes(10311, 15949)
                  + "<|end_of_audio_new|>3000米接力银牌得主<|begin_of_quad|>" + codes(12886, 8271)
                  + "<|end_of_audio_span_last|>500米亚军。我不懂滴 泥菩萨镀金?RAV4价值几何?"}
DOC_EN = {"text": "Every evening, the dogs<|begin_of_audio|>" + codes(1698, 4740) + "<|end_of_audio_new|> are howling."
                  + "<|begin_of_quad|>" + codes(6697) + "<|end_of_audio_span_last|>"}
# what the job must quarantine, each with its own reason
OUT_OF_RANGE = {"text": "too far<|begin_of_audio|>" + codes(16384) + "<|end_of_audio_new|>"}
UNKNOWN_MARKER = {"messages": [{"role": "user", "content": "<|begin_of_speech|>" + codes(1) + "<|end_of_audio|>",
                                "text_content": None},
                               {"role": "assistant", "content": "hi", "text_content": None}]}

CHATS = {"asr": ASR, "audio_chat": AUDIO_CHAT, "aac": CAPTION, "text_chat": TEXT_CHAT}


def write_reference_data(root: Path, bad: bool = True) -> Path:
    """The reference's layout: datasets/*.json (JSON arrays, indent 2) and data_config/data_config_TtT.json with
    paths relative to the config's folder, as a user would edit it. Returns the data_config's path."""
    datasets = root / "datasets"
    datasets.mkdir(parents=True)
    files: dict[str, tuple[list[dict[str, Any]], str]] = {
        "asr_tts.json": ([ASR], "IT"), "audio_chat.json": ([AUDIO_CHAT, *([UNKNOWN_MARKER] if bad else [])], "IT"),
        "sec_aac_asc_task.json": ([CAPTION], "IT"), "text_chat.json": ([TEXT_CHAT], "IT"),
        "interleaved_data_zh.json": ([DOC_ZH], "PT"),
        "interleaved_data_en.json": ([DOC_EN, *([OUT_OF_RANGE] if bad else [])], "PT")}
    for name, (records, _) in files.items():
        (datasets / name).write_text(json.dumps(records, ensure_ascii=False, indent=2))
    config = root / "data_config" / "data_config_TtT.json"
    config.parent.mkdir()
    config.write_text(json.dumps([{"path": f"../datasets/{name}", "sample_ratio": 1, "data_type": data_type}
                                  for name, (_, data_type) in files.items()], indent=4))
    return config
