"""A checkpoint in the reference implementation's layout (issue #17): a Hugging Face directory with its own
tokenizer (span markers, mask and `<|audio_N|>` as added tokens at the reference's ids) and no vocabulary
manifest, like the released TtT checkpoints. Loaded with `model.init=pretrained` and `data.vocab_layout=reference`
it keeps every trained row, then answers through `ttt generate` with the declared GLM-4-Voice codec (text out,
codes written: there is no decoder) and with a real codec of the same identity (speech out, its hash recorded);
a codec of another identity is refused.

The "released" model is random except for the scripted bigram of tests/ttt_model/test_generate.py (after "\\n":
"O", "K", a final span of codes 5, 7, 7, ..., end of turn), so any row the loader re-initialised would change
the answer."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from tokenizers import AddedToken, Tokenizer

from tests.ttt_model.test_generate import SCRIPTED, scripted_model
from tokenization import codecs
from tokenization.codecs.base import AudioCodec, CodecIdentity
from tokenization.text import bundled_tokenizer_dir
from tokenization.vocab import AUDIO_TAG, EOA, EOA_FINAL, EOA_USER, MASK, SOA, SOA_FINAL
from tokenization.vocab_factory import make_vocab
from ttt_model.core.model import build_model
from ttt_model.core.model_checkpoint import save_checkpoint
from workflows import cli_generate

ROOT = Path(__file__).resolve().parents[2]
DECLARED_YAML = ROOT / "workflows/conf/codec/glm4voice_declared.yaml"
DECLARED = codecs.build_codec(yaml.safe_load(DECLARED_YAML.read_text())).identity
SHAPE = {k: SCRIPTED[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                  "num_key_value_heads")}


class ToneGLM(AudioCodec):
    """Stands in for GLM-4-Voice loaded with weights: its name, codebook size and rates, a weights hash, and a
    decoder (a tone per code)."""

    def __init__(self, token_rate: float = 12.5) -> None:
        self._identity = CodecIdentity("glm4voice", "1", token_rate, 16384, 16000, 22050, "f" * 64)

    @property
    def identity(self) -> CodecIdentity:
        return self._identity

    def encode(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        return np.zeros(max(1, len(waveform) // 1280), dtype=np.int64)

    def decode(self, codes: np.ndarray) -> tuple[np.ndarray, int]:
        return np.full(len(codes) * 1764, 0.1, dtype=np.float32), 22050


def load_codec(cfg: Mapping[str, Any]) -> ToneGLM:
    """`build_codec` entry for `kind: tone_glm` (registered by the fixture below)."""
    return ToneGLM(float(cfg.get("token_rate", 12.5)))


def reference_tokenizer(directory: Path) -> Path:
    """Qwen's BPE plus the reference's added tokens, in id order from 151669 on: its openers and user closer,
    reserved slots up to <|audio|> at 151684, <|audio_0|> .. <|audio_16383|> from 151685, then mask and closers."""
    tok = Tokenizer.from_file(str(bundled_tokenizer_dir() / "tokenizer.json"))
    assert tok.get_vocab_size(with_added_tokens=True) == 151669
    names = [SOA, SOA_FINAL, EOA_USER, *[f"<|reserved_{i}|>" for i in range(12)], AUDIO_TAG,
             *[f"<|audio_{i}|>" for i in range(16384)], MASK, EOA, EOA_FINAL]
    tok.add_special_tokens([AddedToken(n, special=True) for n in names])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return directory


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A reference-layout checkpoint as released (HF files + its tokenizer, no manifest) and the TtT checkpoint
    that `model.init=pretrained` makes of it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("reference_ckpt")
    ref = reference_tokenizer(root / "TtT-released")
    vocab = make_vocab(str(ref), DECLARED, "reference")
    assert (vocab.audio_offset, vocab.size, vocab.id(MASK), vocab.id(EOA_FINAL)) == (151685, 168072, 168069, 168071)
    scripted_model(vocab).save_pretrained(ref)
    model = build_model({"init": "pretrained", "path": str(ref), "config": SHAPE, "attn_implementation": "sdpa"},
                        vocab)
    ckpt = save_checkpoint(model, vocab.manifest(), root / "ckpt")
    (root / "tone_glm.yaml").write_text("kind: tone_glm\n")
    (root / "tone_glm_25hz.yaml").write_text("kind: tone_glm\ntoken_rate: 25.0\n")
    yield {"root": root, "ref": ref, "vocab": vocab, "model": model, "ckpt": ckpt}
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def tone_glm_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(codecs.CODEC_MODULES, "tone_glm", "tests.workflows.test_reference_checkpoint")


def generate(released: dict[str, Any], codec_yaml: Path, *extra: str) -> int:
    parser = argparse.ArgumentParser(prog="ttt")
    cli_generate.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["generate", "--checkpoint", str(released["ckpt"]), "--codec-config", str(codec_yaml),
                              "--text-tokenizer", str(released["ref"]), "--text", "Hello?", "--block-length", "4",
                              "--steps", "2", "--max-span", "12", *extra])
    return args.func(args)


def test_pretrained_init_keeps_every_row_of_a_reference_layout_checkpoint(released: dict[str, Any]) -> None:
    from transformers import Qwen2ForCausalLM

    vocab = released["vocab"]
    saved = Qwen2ForCausalLM.from_pretrained(released["ref"])
    for ours, theirs in ((released["model"].get_input_embeddings(), saved.get_input_embeddings()),
                         (released["model"].get_output_embeddings(), saved.get_output_embeddings())):
        torch.testing.assert_close(ours.weight[:vocab.size], theirs.weight[:vocab.size], rtol=0, atol=0)


def test_a_plain_tokenizer_on_a_reference_checkpoint_is_refused(released: dict[str, Any]) -> None:
    plain = make_vocab("bundled:qwen", DECLARED, "reference")
    with pytest.raises(ValueError, match=r"does not define the reference's audio tokens.*data\.text_tokenizer="):
        build_model({"init": "pretrained", "path": str(released["ref"]), "config": SHAPE,
                     "attn_implementation": "sdpa"}, plain)


def test_generate_with_the_declared_codec_prints_text_and_writes_the_codes(
        released: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json, out_wav = tmp_path / "answer.json", tmp_path / "answer.wav"
    assert generate(released, DECLARED_YAML, "--out-json", str(out_json), "--out-wav", str(out_wav)) == 0
    out, err = capsys.readouterr()
    assert out == "OK\n"
    assert "codec glm4voice has no decoder: 12 audio codes not turned into speech" in err
    assert "no decoder;" in err and not out_wav.exists()
    report = json.loads(out_json.read_text())
    assert report["codes"] == [5] + [7] * 11 and report["codec"]["params_hash"] == "declared"


def test_a_real_codec_of_the_same_identity_speaks_and_another_is_refused(
        released: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json, out_wav = tmp_path / "answer.json", tmp_path / "answer.wav"
    assert generate(released, released["root"] / "tone_glm.yaml", "--out-json", str(out_json),
                    "--out-wav", str(out_wav)) == 0
    assert capsys.readouterr().out == "OK\n" and out_wav.is_file()
    assert json.loads(out_json.read_text())["codec"]["params_hash"] == "f" * 64  # the weights' hash, recorded
    assert generate(released, released["root"] / "tone_glm_25hz.yaml") == 2
    assert "codec.token_rate: 25.0 != 12.5" in capsys.readouterr().err
