"""CosyVoice/GLM-4-Voice decoder: production directory layout, strict weight loading, decode and streaming.

Weights are random (tests build the real architecture at reduced size); numerics that can be pinned
without the released weights are checked against upstream's own formulas, re-stated here as references.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tokenization.codecs.base import StreamingDecoder
from tokenization.codecs.cosyvoice.config import ConfigError, build_decoder_modules, parse_config
from tokenization.codecs.cosyvoice.conformer import RelPositionMultiHeadedAttention, chunk_attention_mask
from tokenization.codecs.cosyvoice.conformer import relative_position_table as our_table
from tokenization.codecs.cosyvoice.flow import ConditionalCFM
from tokenization.codecs.cosyvoice.streaming import BlockStreamingDecoder, StreamSchedule
from tokenization.codecs.cosyvoice_decoder import CosyVoiceDecoder, make_random_cosyvoice_decoder

VOCAB = 16384
RATE = 12.5


@pytest.fixture(scope="module", autouse=True)
def _threads() -> Iterator[None]:
    """One intra-op thread: these tensors are tiny, and on a shared 2-core box OpenMP spin-waiting with 2
    threads made decodes ~50x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_cosyvoice_decoder(tmp_path_factory.mktemp("glm_decoder"), vocab_size=VOCAB, token_rate=RATE)


@pytest.fixture(scope="module")
def decoder(model_dir: Path) -> CosyVoiceDecoder:
    return CosyVoiceDecoder.from_dir(model_dir, n_timesteps=2)


def _codes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, n)


# --- directory layout and strict loading ---------------------------------------------------------


def test_directory_has_production_layout(model_dir: Path) -> None:
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.yaml", "flow.pt", "hift.pt"]
    text = (model_dir / "config.yaml").read_text()
    assert "flow: !new:cosyvoice.flow.flow.MaskedDiffWithXvec" in text
    assert "!new:cosyvoice.transformer.encoder.BlockConformerEncoder" in text
    assert "hift: !new:cosyvoice.hifigan.generator.HiFTGenerator" in text
    hift_keys = torch.load(model_dir / "hift.pt", weights_only=True).keys()
    assert "conv_pre.weight_g" in hift_keys and "conv_pre.weight_v" in hift_keys  # released-file layout
    assert not any("parametrizations" in k for k in hift_keys)


def test_from_dir_loads_strictly_and_reports_attributes(decoder: CosyVoiceDecoder, model_dir: Path) -> None:
    assert (decoder.sample_rate, decoder.vocab_size, decoder.token_rate) == (22050, VOCAB, RATE)
    assert decoder.hop_length == 256
    modules = build_decoder_modules(model_dir / "config.yaml")
    flow_state = torch.load(model_dir / "flow.pt", weights_only=True)
    modules.flow.load_state_dict(flow_state, strict=True)  # raises on any missing/unexpected key
    modules.hift.load_state_dict(torch.load(model_dir / "hift.pt", weights_only=True), strict=True)
    assert torch.equal(decoder.flow.input_embedding.weight, flow_state["input_embedding.weight"])


def test_missing_files_are_named(tmp_path: Path, model_dir: Path) -> None:
    (tmp_path / "config.yaml").write_text((model_dir / "config.yaml").read_text())
    with pytest.raises(FileNotFoundError, match=r"flow\.pt.*hift\.pt"):
        CosyVoiceDecoder.from_dir(tmp_path)


def _renamed_key(state: dict[str, torch.Tensor]) -> None:
    state["encoder_proj.renamed"] = state.pop("encoder_proj.weight")


def _resized_tensor(state: dict[str, torch.Tensor]) -> None:
    state["encoder_proj.weight"] = state["encoder_proj.weight"][:, :-1]


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_renamed_key, r"flow\.pt.*encoder_proj\.weight.*encoder_proj\.renamed"),
        (_resized_tensor, r"(?s)flow\.pt.*size mismatch for encoder_proj\.weight"),
    ],
)
def test_mismatched_weights_are_reported(
    tmp_path: Path, model_dir: Path, corrupt: Callable[[dict[str, torch.Tensor]], None], message: str
) -> None:
    for name in ("config.yaml", "hift.pt"):
        (tmp_path / name).write_bytes((model_dir / name).read_bytes())
    state = torch.load(model_dir / "flow.pt", weights_only=True)
    corrupt(state)
    torch.save(state, tmp_path / "flow.pt")
    with pytest.raises(ValueError, match=message):
        CosyVoiceDecoder.from_dir(tmp_path)


# --- config loading ------------------------------------------------------------------------------


def test_config_ignores_foreign_sections_and_reads_yaml12_floats(tmp_path: Path, model_dir: Path) -> None:
    extra = "llm: !new:cosyvoice.llm.llm.TransformerLM\n    text_token_size: 51866\n"
    text = (model_dir / "config.yaml").read_text() + extra
    root = parse_config(text)
    assert root["flow"].value["decoder"].value["cfm_params"].value["content"]["sigma_min"] == 1e-06
    (tmp_path / "config.yaml").write_text(text)
    assert build_decoder_modules(tmp_path / "config.yaml").flow.vocab_size == VOCAB


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("!new:cosyvoice.flow.decoder.ConditionalDecoder", "!new:cosyvoice.flow.DiT.dit.DiT", "unknown class"),
        ("spk_embed_dim: !ref <spk_embed_dim>", "spk_embed_dim: !apply:int [192]", "unsupported tag"),
        ("spk_embed_dim: !ref <spk_embed_dim>", "spk_embed_dim: !ref <nowhere>", "points at nothing"),
        ("hift: !new:", "vocoder: !new:", "missing section"),
    ],
)
def test_config_errors_are_clear(tmp_path: Path, model_dir: Path, old: str, new: str, message: str) -> None:
    text = (model_dir / "config.yaml").read_text()
    assert old in text
    (tmp_path / "config.yaml").write_text(text.replace(old, new))
    with pytest.raises(ConfigError, match=message):
        build_decoder_modules(tmp_path / "config.yaml")


# --- one-shot decode -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 13, 40])
def test_decode_length_and_values(decoder: CosyVoiceDecoder, n: int) -> None:
    audio = decoder.decode(_codes(n))
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == decoder.num_samples(n)
    assert abs(len(audio) - n / RATE * 22050) <= decoder.hop_length
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 0.99
    assert audio.std() > 0


def test_decode_is_deterministic(decoder: CosyVoiceDecoder) -> None:
    codes = _codes(8, seed=3)
    np.testing.assert_array_equal(decoder.decode(codes), decoder.decode(codes))
    assert not np.array_equal(decoder.decode(codes), decoder.decode(_codes(8, seed=4)))


def test_decode_with_prompt_covers_only_the_target(decoder: CosyVoiceDecoder) -> None:
    prompt = _codes(7, seed=5)
    prompt_mel = np.random.default_rng(6).normal(size=(decoder.mel_frames(7), 80)).astype(np.float32)
    audio = decoder.decode(_codes(9), prompt_codes=prompt, prompt_mel=prompt_mel)
    expected = (decoder.mel_frames(16) - decoder.mel_frames(7)) * decoder.hop_length
    assert len(audio) == expected and np.isfinite(audio).all()
    with pytest.raises(ValueError, match="prompt_mel"):
        decoder.decode(_codes(5), prompt_mel=prompt_mel)


@pytest.mark.parametrize(
    "codes",
    [np.array([0, VOCAB]), np.array([-1, 3]), np.array([1.0, 2.0]), np.zeros((2, 3), dtype=np.int64)],
    ids=["too_large", "negative", "float", "two_dimensional"],
)
def test_invalid_codes_raise(decoder: CosyVoiceDecoder, codes: np.ndarray) -> None:
    with pytest.raises(ValueError, match="codes"):
        decoder.decode(codes)
    with pytest.raises(ValueError, match="codes"):
        decoder.stream_decoder().push(codes)


def test_empty_input_gives_empty_audio(decoder: CosyVoiceDecoder) -> None:
    assert decoder.decode(np.array([], dtype=np.int64)).shape == (0,)
    stream = decoder.stream_decoder()
    assert stream.push(np.array([], dtype=np.int64)).shape == (0,)
    assert stream.flush().shape == (0,)


# --- streaming -----------------------------------------------------------------------------------


def _stream(decoder: CosyVoiceDecoder, codes: np.ndarray, chunk: int) -> tuple[list[np.ndarray], np.ndarray]:
    stream = decoder.stream_decoder()
    assert isinstance(stream, StreamingDecoder)
    pieces = [stream.push(codes[i : i + chunk]) for i in range(0, len(codes), chunk)]
    pieces.append(stream.flush())
    return pieces, np.concatenate(pieces)


def test_stream_length_equals_full_decode(decoder: CosyVoiceDecoder) -> None:
    codes = _codes(83, seed=7)
    pieces, streamed = _stream(decoder, codes, chunk=7)
    full = decoder.decode(codes)
    assert len(streamed) == len(full) == decoder.num_samples(len(codes))
    assert np.isfinite(streamed).all()
    # GLM-4-Voice's blocks: >= 10 codes (14 pushed), then >= 20 (35 pushed), then >= 40 (77 pushed)
    assert [i for i, p in enumerate(pieces[:-1]) if len(p)] == [1, 4, 10]


def test_short_stream_is_the_one_shot_decode(decoder: CosyVoiceDecoder) -> None:
    codes = _codes(9, seed=10)  # below the first block: everything is decoded at flush, with no prompt
    _, streamed = _stream(decoder, codes, chunk=4)
    np.testing.assert_array_equal(streamed, decoder.decode(codes))


def test_glm4voice_schedule_constants() -> None:
    """web_demo.py blocks [10, 20, 40] and flow_inference.py's 5-token overlap -> int(5/12.5*22050/256) = 34
    mel frames; CosyVoice's 50 Hz model uses a 20-token overlap, the same 34 frames."""
    assert StreamSchedule.glm4voice(12.5, 22050, 256) == StreamSchedule((10, 20, 40), 34)
    assert StreamSchedule.glm4voice(50, 22050, 256) == StreamSchedule((40, 80, 160), 34)


def test_stream_flush_emits_held_back_tail(decoder: CosyVoiceDecoder) -> None:
    codes = _codes(10, seed=8)  # exactly one non-final block, nothing pending at flush
    pieces, streamed = _stream(decoder, codes, chunk=10)
    assert len(pieces[0]) > 0 and len(pieces[1]) > 0
    assert len(streamed) == decoder.num_samples(10)


def test_stream_decoder_is_reusable_after_flush(decoder: CosyVoiceDecoder) -> None:
    codes = _codes(12, seed=9)
    stream = decoder.stream_decoder()
    first = np.concatenate([stream.push(codes), stream.flush()])
    second = np.concatenate([stream.push(codes), stream.flush()])
    np.testing.assert_array_equal(first, second)


# --- numerics pinned to upstream formulas --------------------------------------------------------


def _upstream_rel_shift(x: torch.Tensor) -> torch.Tensor:
    """cosyvoice.transformer.attention.RelPositionMultiHeadedAttention.rel_shift."""
    zero_pad = torch.zeros((*x.size()[:3], 1), dtype=x.dtype)
    x_padded = torch.cat([zero_pad, x], dim=-1).view(*x.size()[:2], x.size(3) + 1, x.size(2))
    return x_padded[:, :, 1:].view_as(x)[:, :, :, : x.size(-1) // 2 + 1]


def _upstream_pos_table(size: int, d_model: int, max_len: int = 64) -> torch.Tensor:
    """cosyvoice.transformer.embedding.EspnetRelPositionalEncoding: extend_pe + position_encoding."""
    position = torch.arange(0, max_len, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model))
    pos, neg = torch.zeros(max_len, d_model), torch.zeros(max_len, d_model)
    pos[:, 0::2], pos[:, 1::2] = torch.sin(position * div_term), torch.cos(position * div_term)
    neg[:, 0::2], neg[:, 1::2] = torch.sin(-1 * position * div_term), torch.cos(-1 * position * div_term)
    pe = torch.cat([torch.flip(pos, [0]).unsqueeze(0), neg[1:].unsqueeze(0)], dim=1)
    return pe[:, pe.size(1) // 2 - size + 1 : pe.size(1) // 2 + size]


@pytest.mark.parametrize("t", [1, 2, 9])
def test_relative_positions_match_upstream(t: int) -> None:
    scores = torch.randn(2, 3, t, 2 * t - 1)
    torch.testing.assert_close(RelPositionMultiHeadedAttention.rel_shift(scores), _upstream_rel_shift(scores))
    torch.testing.assert_close(
        our_table(t, 16, torch.float32, torch.device("cpu")), _upstream_pos_table(t, 16), rtol=0, atol=0
    )


def test_block_mask_matches_glm_grid_mask() -> None:
    """GLM-4-Voice's _create_grid_mask: lower triangle plus the query's whole block."""
    size, block = 23, 10
    grid = torch.tril(torch.ones(size, size)).bool()
    for i in range(size):
        start = (i // block) * block
        grid[i, start : start + block] = True
    assert torch.equal(chunk_attention_mask(size, block, torch.device("cpu")), grid)


class _EchoEstimator(torch.nn.Module):
    """Velocity = mu: the conditional pass sees mu, the unconditional one zeros."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
        return mu


@pytest.mark.parametrize(("rate", "scale"), [(0.7, 1.7), (0.0, 1.0)])
def test_classifier_free_guidance_blend(rate: float, scale: float) -> None:
    params = {"solver": "euler", "t_scheduler": "cosine", "inference_cfg_rate": rate}
    cfm = ConditionalCFM(240, params, spk_emb_dim=80, estimator=_EchoEstimator())  # type: ignore[arg-type]
    mu = torch.randn(1, 80, 5)
    out = cfm(mu, torch.ones(1, 1, 5), 3, torch.zeros_like(mu), torch.zeros(1, 80), torch.zeros_like(mu))
    # Euler over the cosine schedule t: 0 -> 1 integrates a constant velocity exactly.
    torch.testing.assert_close(out, scale * mu)


def test_stream_schedule_rejects_too_small_first_block(decoder: CosyVoiceDecoder) -> None:
    with pytest.raises(ValueError, match="first block"):
        BlockStreamingDecoder(decoder, StreamSchedule(block_tokens=(3, 20), mel_overlap_len=34))
