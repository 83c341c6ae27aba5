"""`ttt generate`: a spoken question in, the text answer on stdout, the speech in a wav, timings on stderr;
every kind of bad input ends with a message and exit status 2.

Runs the command in-process on the scripted checkpoint and toy codec of tests/ttt_model/test_generate.py
(registered for `build_codec` as `kind: tone`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile as sf
import torch

from tests.ttt_model.test_generate import (
    FRAME,
    ToneCodec,
    question_wav,
    save_byte_tokenizer,
    scripted_checkpoint,
)
from tokenization import codecs
from ttt_model.decoding.sampler_config import SamplerConfig
from workflows import cli_generate


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path | str]]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cli")
    tokenizer = save_byte_tokenizer(root / "tokenizer")
    (root / "tone.yaml").write_text("kind: tone\n")
    (root / "other.yaml").write_text("kind: tone\nname: other-codec\n")
    yield {"ckpt": scripted_checkpoint(root / "ckpt", tokenizer, ToneCodec()), "tokenizer": tokenizer,
           "codec": root / "tone.yaml", "other": root / "other.yaml", "wav": question_wav(root / "q.wav")}
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def tone_codec_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(codecs.CODEC_MODULES, "tone", "tests.ttt_model.test_generate")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ttt")
    cli_generate.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["generate", *argv])


def generate(env: dict, *extra: str, codec: list[str] | None = None, ckpt: Path | None = None) -> int:
    args = parse(["--checkpoint", str(ckpt or env["ckpt"]), *(codec or ["--codec-config", str(env["codec"])]),
                  "--text-tokenizer", str(env["tokenizer"]), "--block-length", "4", "--steps", "2",
                  "--max-span", "12", *extra])
    return args.func(args)


def test_spoken_question_to_text_speech_and_timings(env: dict, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out_wav, out_json = tmp_path / "answer.wav", tmp_path / "answer.json"
    assert generate(env, "--audio", str(env["wav"]), "--out-wav", str(out_wav), "--out-json", str(out_json)) == 0
    out, err = capsys.readouterr()
    assert out == "OK\n"
    assert "first audio block" in err and "12 audio tokens" in err and "finish: eos" in err
    wave, rate = sf.read(out_wav)
    assert rate == 16000 and len(wave) == 12 * FRAME
    report = json.loads(out_json.read_text())
    assert report["text"] == "OK" and report["codes"] == [5] + [7] * 11
    assert report["timings"]["first_audio_block_s"] <= report["timings"]["total_s"]
    assert report["sampler"]["max_span"] == 12 and report["sampler"]["steps_per_block"] == 2


def test_flags_override_the_sampler_config_file() -> None:
    base = ["--checkpoint", "c", "--codec-path", "p"]
    sampled = cli_generate.sampler_settings(parse([*base, "--temperature", "0.7", "--top-p", "0.9", "--steps", "5",
                                                   "--threshold", "0.8", "--seed", "3"]))
    cfg = SamplerConfig.from_mapping(sampled)
    assert cfg.steps_per_block == 5 and cfg.threshold == 0.8 and cfg.seed == 3
    assert cfg.text.temperature == cfg.audio.temperature == 0.7 and cfg.audio.top_p == 0.9
    assert SamplerConfig.from_mapping(cli_generate.sampler_settings(parse([*base, "--greedy"]))).text.greedy


@pytest.mark.parametrize(("case", "message"), [
    ("missing_wav", "audio file not found"),
    ("corrupt_wav", "cannot read audio file"),
    ("empty_prompt", "empty prompt"),
    ("long_prompt", "context holds 512"),
    ("no_manifest", "vocab_manifest.json"),
    ("wrong_codec", "does not match"),
    ("missing_codec_config", "codec config not found"),
    ("missing_codec_dir", "codec not found"),
    ("unfitted_codec_dir", "no fitted embedded codec"),
])
def test_bad_input_is_a_clear_error(env: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str,
                                    message: str) -> None:
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF....WAVEfmt garbage")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    kwargs: dict = {}
    argv = {
        "missing_wav": ["--audio", str(tmp_path / "nope.wav")],
        "corrupt_wav": ["--audio", str(corrupt)],
        "empty_prompt": ["--text", "   "],
        "long_prompt": ["--text", "y" * 600],
        "no_manifest": ["--text", "hi"],
        "wrong_codec": ["--text", "hi"],
        "missing_codec_config": ["--text", "hi"],
        "missing_codec_dir": ["--text", "hi"],
        "unfitted_codec_dir": ["--text", "hi"],
    }[case]
    if case == "no_manifest":
        kwargs["ckpt"] = bare
    elif case == "wrong_codec":
        kwargs["codec"] = ["--codec-config", str(env["other"])]
    elif case == "missing_codec_config":
        kwargs["codec"] = ["--codec-config", str(tmp_path / "none.yaml")]
    elif case == "missing_codec_dir":
        kwargs["codec"] = ["--codec-path", str(tmp_path / "no_codec")]
    elif case == "unfitted_codec_dir":
        kwargs["codec"] = ["--codec-path", str(bare)]
    assert generate(env, *argv, **kwargs) == 2
    out, err = capsys.readouterr()
    assert err.startswith("ttt generate: ") and message in err and out == ""


def test_run_directory_gives_the_latest_checkpoint(env: dict, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(env["ckpt"], run / "checkpoints" / "ttt-cpu" / "checkpoint_000001" / "model")
    args = parse(["--run", str(run), "--codec-config", str(env["codec"]), "--text-tokenizer", str(env["tokenizer"]),
                  "--block-length", "4", "--steps", "2", "--max-span", "12", "--audio", str(env["wav"])])
    assert args.func(args) == 0
    assert capsys.readouterr().out == "OK\n"
    args = parse(["--run", str(tmp_path / "elsewhere"), "--text", "hi"])
    assert args.func(args) == 2
    assert "no checkpoints under" in capsys.readouterr().err


def test_asr_and_tts_send_the_trained_instructions() -> None:
    from pipelines.tasks import PROMPTS

    wav = (torch.zeros(8).numpy(), 16000)
    text, audio = cli_generate.user_message(parse(["--task", "asr", "--audio", "q.wav"]), wav)
    assert text == PROMPTS["asr"]["en"][0] and audio is wav
    text, audio = cli_generate.user_message(parse(["--task", "tts", "--text", " a red ball "]), None)
    assert text == PROMPTS["tts"]["en"][0].format(text="a red ball") and audio is None
    assert cli_generate.user_message(parse(["--task", "tts", "--language", "zh", "--text", "你好"]), None)[0] == \
        PROMPTS["tts"]["zh"][0].format(text="你好")
    with pytest.raises(ValueError, match="needs --audio"):
        cli_generate.user_message(parse(["--task", "asr"]), None)
    with pytest.raises(ValueError, match="needs --text"):
        cli_generate.user_message(parse(["--task", "tts"]), None)
