"""Speech in, speech out through `ttt_model.decoding.speech_lm`: loading a checkpoint with its codec, prompts from
text and wav turns, streaming audio, timings, batching, and the errors bad input must give.

The checkpoint is a *scripted* tiny Qwen2: attention and MLP outputs are zeroed, so every position's final
state is its own token's embedding, and one-hot embeddings + an untied head turn the model into a fixed
bigram table: after the prompt's last "\\n" it says "OK", opens the final span, predicts codes from the
opener, masks and codes (never the closer, so the span runs to max_span and is force-closed), and ends
the turn after the closer. The codec is a toy one (code = frame loudness, decode = a tone per frame) over
a byte-level text tokenizer, so nothing here needs real weights. `tests/workflows/test_cli_generate.py`
reuses these helpers (`load_codec` is also the factory `build_codec` finds for `kind: tone`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import Qwen2ForCausalLM

from tokenization.audio import resample
from tokenization.codecs.base import AudioCodec, CodecIdentity
from tokenization.sequence import spans_from_ids
from tokenization.vocab import EOA_FINAL, EOA_USER, SOA, SOA_FINAL, UnifiedVocab, VocabMismatchError
from tokenization.vocab_factory import make_vocab
from ttt_model.core.model import build_model
from ttt_model.core.model_checkpoint import save_checkpoint
from ttt_model.decoding.events import AudioBlock, SpanEnd, TurnEnd
from ttt_model.decoding.sampler_config import SamplerConfig
from ttt_model.decoding.speech_lm import (
    AudioOut,
    Message,
    SpeechLM,
    answer,
    answer_batch,
    build_prompt,
    generate_stream,
)

FRAME = 640  # samples per code at 16 kHz (25 codes/s)
SCRIPTED = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 512, "tie_word_embeddings": False}
CFG = SamplerConfig(block_length=4, steps_per_block=2, max_span=12, max_new_tokens=40)


class ToneCodec(AudioCodec):
    """Toy codec: one code per 40 ms frame (its RMS, quantised), decoded as a tone whose pitch is the code."""

    def __init__(self, name: str = "tone") -> None:
        self._identity = CodecIdentity(name, "1", 25.0, 512, 16000, 16000, "tone-params")

    @property
    def identity(self) -> CodecIdentity:
        return self._identity

    def encode(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        wav = resample(np.asarray(waveform, dtype=np.float32), sample_rate, 16000)
        frames = wav[: len(wav) // FRAME * FRAME].reshape(-1, FRAME)
        return np.clip((np.sqrt((frames**2).mean(axis=1)) * 2000).astype(np.int64), 0, 511)

    def decode(self, codes: np.ndarray) -> tuple[np.ndarray, int]:
        t = np.arange(FRAME) / 16000
        tones = [0.1 * np.sin(2 * np.pi * (100 + int(c)) * t) for c in np.asarray(codes)]
        return (np.concatenate(tones) if tones else np.zeros(0)).astype(np.float32), 16000


def load_codec(cfg: Mapping[str, Any]) -> ToneCodec:
    """`build_codec` entry point for `kind: tone` (the CLI tests register this module under that kind)."""
    return ToneCodec(str(cfg.get("name", "tone")))


def save_byte_tokenizer(directory: Path) -> str:
    """A byte-level BPE without merges plus the Qwen chat specials, as a tokenizer directory."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return str(directory)


def scripted_checkpoint(directory: Path, tokenizer: str, codec: AudioCodec) -> Path:
    """Save the scripted bigram model described in the module docstring; returns the checkpoint dir."""
    vocab = make_vocab(tokenizer, codec.identity, "compact")
    return save_checkpoint(scripted_model(vocab), vocab.manifest(), directory)


def scripted_model(vocab: UnifiedVocab) -> Qwen2ForCausalLM:
    """The scripted bigram model of the module docstring over `vocab` (any layout)."""
    model = build_model({"init": "random", "config": SCRIPTED, "attn_implementation": "sdpa"}, vocab)
    text = {c: vocab.encode_text(c)[0] for c in "\nOKx"}
    audio = range(vocab.audio_offset, vocab.audio_offset + vocab.codebook_size)
    # class of each input token (embedding dim) -> the token it predicts (head row)
    classes = [([text["\n"]], text["O"]), ([text["O"]], text["K"]), ([text["K"]], vocab.id(SOA_FINAL)),
               ([vocab.id(SOA_FINAL)], vocab.audio_offset + 5), ([vocab.mask_id], vocab.audio_offset + 7),
               (list(audio), vocab.audio_offset + 7), ([vocab.id(EOA_FINAL)], vocab.eos_id)]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        emb.zero_()
        head.zero_()
        emb[:, len(classes)] = 1.0  # every other token: predicts "x"
        head[text["x"], len(classes)] = 10.0
        for dim, (inputs, predicted) in enumerate(classes):
            emb[inputs] = 0.0
            emb[inputs, dim] = 1.0
            head[predicted, dim] = 10.0
    return model


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("speech")
    tokenizer = save_byte_tokenizer(root / "tokenizer")
    return scripted_checkpoint(root / "ckpt", tokenizer, ToneCodec()), tokenizer


@pytest.fixture(scope="module")
def lm(setup: tuple[Path, str]) -> SpeechLM:
    ckpt, tokenizer = setup
    return SpeechLM.load(ckpt, ToneCodec(), text_tokenizer=tokenizer)


def question_wav(path: Path, seconds: float = 0.5) -> Path:
    t = np.arange(int(22050 * seconds)) / 22050
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t) * np.linspace(0, 1, t.size)).astype(np.float32), 22050)
    return path


def test_spoken_question_gets_text_and_streamed_speech(lm: SpeechLM, tmp_path: Path) -> None:
    messages = [Message("user", text="hi", audio=question_wav(tmp_path / "q.wav"))]
    events = list(generate_stream(lm, messages, CFG))
    outs = [i for i, e in enumerate(events) if isinstance(e, AudioOut)]
    blocks = [e for e in events if isinstance(e, AudioBlock)]
    assert len(blocks) == CFG.max_span // CFG.block_length and all(len(b.codes) == CFG.block_length for b in blocks)
    span_end = next(i for i, e in enumerate(events) if isinstance(e, SpanEnd))
    assert len(outs) == len(blocks) and outs[0] < span_end  # speech is out before the span, let alone the turn, ends
    assert isinstance(events[-1], TurnEnd) and events[-1].reason == "eos"

    result = answer(lm, messages, CFG)
    assert result.text == "OK" and result.finish_reason == "eos"
    assert result.codes.tolist() == [5] + [7] * (CFG.max_span - 1)
    assert result.waveform.size == CFG.max_span * FRAME and result.sample_rate == 16000
    streamed = np.concatenate([e.samples for e in events if isinstance(e, AudioOut)])
    np.testing.assert_array_equal(streamed, result.waveform)
    t = result.timings
    assert 0 < t["first_text_s"] <= t["first_audio_block_s"] <= t["first_audio_s"] <= t["total_s"]
    assert t["audio_tokens"] == CFG.max_span and t["audio_tokens_per_s"] > 0


def test_prompt_wraps_user_audio_as_a_span(lm: SpeechLM, tmp_path: Path) -> None:
    wav = question_wav(tmp_path / "q.wav")
    ids = build_prompt(lm, [Message("system", text="be brief"), Message("user", text="hi", audio=wav)])
    audio = [s for s in spans_from_ids(lm.vocab, np.asarray(ids)) if s.kind == "audio"]
    assert len(audio) == 1
    span = ids[audio[0].start : audio[0].end]
    codes = lm.codec.encode(*sf.read(wav, dtype="float32"))
    assert span == [lm.vocab.id(SOA), *lm.vocab.audio_ids(codes).tolist(), lm.vocab.id(EOA_USER)]
    assert lm.vocab.text.decode(ids[-3:]) == "nt\n"  # ends with the open assistant header


def test_batch_answers_equal_single_answers(lm: SpeechLM, tmp_path: Path) -> None:
    convs = [[Message("user", text="hello there")], [Message("user", audio=question_wav(tmp_path / "q.wav", 0.3))]]
    batch = answer_batch(lm, convs, CFG)
    for conv, got in zip(convs, batch, strict=True):
        alone = answer(lm, conv, CFG)
        assert got.ids == alone.ids and got.text == alone.text
        np.testing.assert_array_equal(got.waveform, alone.waveform)


def test_bad_audio_and_empty_prompts_are_clear_errors(lm: SpeechLM, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="audio file not found"):
        build_prompt(lm, [Message("user", audio=tmp_path / "missing.wav")])
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    with pytest.raises(ValueError, match="cannot read audio file"):
        build_prompt(lm, [Message("user", audio=corrupt)])
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match="no samples"):
        build_prompt(lm, [Message("user", audio=empty)])
    with pytest.raises(ValueError, match="no codes"):
        build_prompt(lm, [Message("user", audio=(np.zeros(100, dtype=np.float32), 16000))])
    with pytest.raises(ValueError, match="empty prompt"):
        build_prompt(lm, [Message("user", text=""), Message("system", text="sys")])
    with pytest.raises(ValueError, match="context holds 512"):
        answer(lm, [Message("user", text="y" * 600)], CFG)


def test_checkpoint_must_have_a_manifest_matching_the_codec(setup: tuple[Path, str], tmp_path: Path) -> None:
    ckpt, tokenizer = setup
    with pytest.raises(VocabMismatchError, match="codec"):
        SpeechLM.load(ckpt, ToneCodec("another-codec"), text_tokenizer=tokenizer)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"vocab_manifest\.json"):
        SpeechLM.load(bare, ToneCodec(), text_tokenizer=tokenizer)
    with pytest.raises(FileNotFoundError, match="not found"):
        SpeechLM.load(tmp_path / "nowhere", ToneCodec(), text_tokenizer=tokenizer)


def test_vocab_rebuilt_from_manifest_layout(lm: SpeechLM) -> None:
    assert isinstance(lm.vocab, UnifiedVocab) and lm.vocab.manifest()["special_tokens"] == lm.manifest["special_tokens"]
    assert lm.model.config._attn_implementation == "sdpa"


def test_decoder_follows_the_recorded_objective(setup: tuple[Path, str], lm: SpeechLM, tmp_path: Path) -> None:
    """A checkpoint recording objective mode `ar` is decoded autoregressively under `decode: auto`: the scripted
    span comes out code by code (the same codes: each one is predicted from the token before it), still
    streamed in blocks of block_length; `decode: ttt` overrides the record, and no record means TtT."""
    tokenizer = setup[1]
    ar_ckpt = save_checkpoint(lm.model, lm.manifest, tmp_path / "ar", objective={"mode": "ar"})
    ar_lm = SpeechLM.load(ar_ckpt, ToneCodec(), text_tokenizer=tokenizer)
    assert (lm.trained_mode, lm.decode_mode(CFG)) == (None, "ttt")
    assert (ar_lm.trained_mode, ar_lm.decode_mode(CFG), ar_lm.decode_mode(SamplerConfig(decode="ttt"))) == (
        "ar", "ar", "ttt")
    messages = [Message("user", text="hi")]
    events = list(generate_stream(ar_lm, messages, CFG))
    blocks = [e for e in events if isinstance(e, AudioBlock)]
    assert [len(b.codes) for b in blocks] == [CFG.block_length] * (CFG.max_span // CFG.block_length)
    got, reference = answer(ar_lm, messages, CFG), answer(lm, messages, CFG)
    assert (got.text, got.ids, got.finish_reason) == (reference.text, reference.ids, "eos")
    np.testing.assert_array_equal(got.waveform, reference.waveform)
    run = ar_lm.sampler(CFG).start([build_prompt(ar_lm, messages)])
    list(run)
    assert run.stats.diffusion_steps == 0 and run.stats.audio_tokens == CFG.max_span
