"""`ttt codec encode|decode` through its argparse parser (no installed console script needed)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tokenization.codecs.embedded import EmbeddedCodec, fit_embedded_codec
from tokenization.tts import get_voice
from workflows.cli_codec import add_parser

TINY = {"codebook_sizes": [16], "pca_dim": 8, "kmeans_iterations": 3, "griffin_lim_iterations": 2}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with speech.wav and a tiny codec where the default config expects it."""
    root = tmp_path_factory.mktemp("cli")
    voice = get_voice("espeak:en")
    wav = voice.synthesize("Please call Emma before noon on Friday.")
    sf.write(root / "speech.wav", wav, voice.sample_rate)
    fit_embedded_codec([(wav, voice.sample_rate)], TINY, root / "runs" / "local" / "codec" / "embedded")
    return root


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ttt")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_encode_then_decode(workdir: Path) -> None:
    codec_dir = workdir / "runs" / "local" / "codec" / "embedded"
    codes_path, out_wav = workdir / "out" / "codes.npy", workdir / "out" / "decoded.wav"
    assert run(["codec", "encode", str(workdir / "speech.wav"), str(codes_path), "--codec-path", str(codec_dir)]) == 0
    codes = np.load(codes_path)
    info = sf.info(workdir / "speech.wav")
    codec = EmbeddedCodec.load(codec_dir)
    assert codes.dtype == np.int64 and len(codes) == codec.num_codes(info.frames, info.samplerate)
    assert run(["codec", "decode", str(codes_path), str(out_wav), "--codec-path", str(codec_dir)]) == 0
    audio, sr = sf.read(out_wav)
    assert sr == 16000 and len(audio) == len(codes) * 320  # one code per 20 ms


def test_default_codec_comes_from_the_project_config(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workdir)  # paths.root defaults to runs/local, relative to the working directory
    assert run(["codec", "encode", "speech.wav", "default.npy"]) == 0
    codec = EmbeddedCodec.load(workdir / "runs" / "local" / "codec" / "embedded")
    np.testing.assert_array_equal(np.load(workdir / "default.npy"), codec.encode(*sf.read(workdir / "speech.wav")))


def test_errors_are_reported_not_raised(workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    codec_dir = str(workdir / "runs" / "local" / "codec" / "embedded")
    assert (
        run(
            [
                "codec",
                "encode",
                str(workdir / "speech.wav"),
                str(tmp_path / "x.npy"),
                "--codec-path",
                str(tmp_path / "nowhere"),
            ]
        )
        == 2
    )
    assert "no fitted embedded codec" in capsys.readouterr().err
    np.save(tmp_path / "bad.npy", np.array([1, 2, 99]))
    assert run(["codec", "decode", str(tmp_path / "bad.npy"), str(tmp_path / "x.wav"), "--codec-path", codec_dir]) == 2
    assert "not a stage-0 code" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()
