"""build_model: config presets, random init, pretrained base-LLM resize + new-row init, attention backends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import Qwen2Config, Qwen2ForCausalLM

from tokenization.codecs.base import CodecIdentity
from tokenization.sequence import Part, Turn, build_chat, spans_to_pylist
from tokenization.text import load_text_tokenizer
from tokenization.text_subset import corpus_subset
from tokenization.vocab import UnifiedVocab, VocabMismatchError
from ttt_model.core.collator import TtTCollator
from ttt_model.core.model import (
    attention_backend,
    build_model,
    forward_hidden,
    lm_head_weight,
    resolve_attn_implementation,
)
from ttt_model.core.model_checkpoint import save_checkpoint
from ttt_model.core.objective import ObjectiveConfig

PRESETS = Path(__file__).resolve().parents[2] / "workflows" / "conf" / "model"
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 1024, "tie_word_embeddings": True}
QWEN_ROWS = 151_936  # Qwen2.5 pads its embedding past the tokenizer's ids with untrained rows


@pytest.fixture(scope="module")
def vocab() -> UnifiedVocab:
    return UnifiedVocab(load_text_tokenizer(), CodecIdentity("test", "1", 25.0, 512, 16000, 16000, "h"))


def preset(name: str) -> dict:
    return yaml.safe_load((PRESETS / f"{name}.yaml").read_text())


def test_random_build_has_padded_tied_vocab_and_sdpa_on_cpu(vocab: UnifiedVocab) -> None:
    model = build_model({"init": "random", "config": TINY}, vocab)
    emb = model.get_input_embeddings().weight
    assert isinstance(model, Qwen2ForCausalLM)
    assert emb.shape == (vocab.padded_size(), 64) and vocab.padded_size() >= vocab.size
    assert lm_head_weight(model) is emb  # tied
    assert model.config._attn_implementation == "sdpa" and attention_backend(model) == "sdpa"
    assert model.config.pad_token_id is None  # a padding_idx would freeze the <|endoftext|> row's gradient
    again = build_model({"init": "random", "config": TINY}, vocab)
    assert torch.equal(again.get_input_embeddings().weight, emb)  # seeded: every rank builds the same model


def test_seed_changes_weights_and_leaves_caller_rng_alone(vocab: UnifiedVocab) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build_model({"init": "random", "config": TINY, "seed": 1}, vocab)
    assert torch.equal(torch.rand(3), expected)
    b = build_model({"init": "random", "config": TINY, "seed": 2}, vocab)
    assert not torch.equal(a.get_input_embeddings().weight, b.get_input_embeddings().weight)


@pytest.mark.parametrize(("bad", "message"), [
    ({"init": "random", "config": {**TINY, "hidden_sise": 64}}, r"model\.config \(Qwen2Config\): unknown keys"),
    ({"init": "random", "config": TINY, "atn_implementation": "sdpa"}, "model: unknown keys"),
    ({"init": "random", "config": TINY, "new_rows": {"audio": 0.1}}, r"model\.new_rows: unknown keys"),
    ({"init": "random"}, "needs a `config` block"),
    ({"init": "pretrained", "config": TINY}, "needs model.path"),
    ({"init": "scratch", "config": TINY}, "must be 'random' or 'pretrained'"),
    ({"init": "random", "config": TINY, "attn_implementation": "eager"}, "attn_implementation must be"),
    ({"init": "random", "config": TINY, "dtype": "int8"}, "model.dtype must be"),
    ({"init": "random", "config": {**TINY, "use_sliding_window": True, "sliding_window": 16,
                                   "max_window_layers": 1}}, "sliding-window layers"),
])
def test_bad_configs_are_refused(vocab: UnifiedVocab, bad: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(bad, vocab)


def test_attention_implementation_follows_config_and_device(vocab: UnifiedVocab) -> None:
    assert resolve_attn_implementation("auto", "cuda:0") == "flex_attention"
    assert resolve_attn_implementation("auto", "cpu") == "sdpa"
    assert resolve_attn_implementation("auto", None) == "sdpa"
    assert resolve_attn_implementation("sdpa", "cuda") == "sdpa"
    with torch.device("meta"):
        model = build_model({"init": "random", "config": TINY, "attn_implementation": "flex_attention"}, vocab)
    assert attention_backend(model) == "flex"


@pytest.mark.parametrize(("name", "non_embedding"), [("qwen2.5-1.5b", 1.31e9), ("qwen2.5-3b", 2.77e9)])
def test_qwen_presets_have_the_published_size(vocab: UnifiedVocab, name: str, non_embedding: float) -> None:
    """Built at full size on the meta device (no memory): Qwen's published non-embedding parameter counts."""
    with torch.device("meta"):
        model = build_model(preset(name), vocab)
    emb = model.get_input_embeddings().weight
    n = sum(p.numel() for p in model.parameters()) - emb.numel()
    assert abs(n / non_embedding - 1) < 0.005
    assert emb.shape[0] == vocab.padded_size()


def test_small_preset_builds(vocab: UnifiedVocab) -> None:
    with torch.device("meta"):
        model = build_model(preset("small"), vocab)
    assert model.config.hidden_size == 256 and model.config.tie_word_embeddings


def _fake_base_llm(directory: Path, vocab: UnifiedVocab, tied: bool) -> Qwen2ForCausalLM:
    """A stand-in for a pretrained Qwen2.5 directory: trained-looking text rows (non-zero mean, per-dimension
    scales) and absurd values in the rows past the tokenizer, which must not survive."""
    config = Qwen2Config(**{**TINY, "tie_word_embeddings": tied}, vocab_size=QWEN_ROWS)
    model = Qwen2ForCausalLM(config)
    g = torch.Generator().manual_seed(0)
    scale = torch.linspace(0.01, 0.05, 64)
    shift = torch.linspace(-0.02, 0.03, 64)
    with torch.no_grad():
        for weight in {id(w): w for w in (model.get_input_embeddings().weight, lm_head_weight(model))}.values():
            weight.copy_(shift + scale * torch.randn(QWEN_ROWS, 64, generator=g))
            weight[vocab.text_vocab_size:] = 100.0
    model.save_pretrained(directory)
    return model


@pytest.mark.parametrize("tied", [True, False])
def test_pretrained_base_llm_is_resized_and_new_rows_initialised(vocab: UnifiedVocab, tmp_path: Path,
                                                                 tied: bool) -> None:
    base = _fake_base_llm(tmp_path, vocab, tied)
    model = build_model({"init": "pretrained", "path": str(tmp_path), "config": {"hidden_size": 64}}, vocab)
    n_text, rows = vocab.text_vocab_size, vocab.padded_size()
    weights = [model.get_input_embeddings().weight]
    if not tied:
        weights.append(model.get_output_embeddings().weight)
    else:
        assert lm_head_weight(model) is weights[0]
    old_weights = [base.get_input_embeddings().weight, base.get_output_embeddings().weight]
    for weight, old in zip(weights, old_weights, strict=False):
        assert weight.shape == (rows, 64)
        assert torch.isfinite(weight).all()
        assert torch.equal(weight[:n_text], old[:n_text])  # pretrained text rows untouched
        var, mu = torch.var_mean(old[:n_text], dim=0)
        sigma = var.sqrt()
        ids = np.arange(rows)
        audio = torch.from_numpy(vocab.is_audio(ids))
        specials = torch.tensor(sorted(i for i in vocab.specials.values() if i >= n_text))
        rest = torch.ones(rows, dtype=torch.bool)
        rest[:n_text] = False
        rest[audio] = False
        rest[specials] = False
        z = (weight[n_text:] - mu) / sigma  # in units of the text rows' per-dimension spread
        z_audio, z_special = z[audio[n_text:]], z[specials - n_text]
        assert abs(z_audio.std().item() - 0.1) < 0.01 and z_audio.mean().abs() < 0.01  # near the mean
        assert abs(z_special.std().item() - 1.0) < 0.3  # typical tokens, far from the audio cluster
        assert torch.equal(weight[rest], mu.expand(int(rest.sum()), 64))  # gaps/padding: the mean exactly
        assert z[vocab.mask_id - n_text].norm() > 3 * z_audio.norm(dim=1).max()  # [M] stands out from codes
    assert model.config.vocab_size == rows and model.config.eos_token_id == vocab.eos_id


def test_pretrained_base_llm_keeps_its_rows_under_a_corpus_text_vocab(vocab: UnifiedVocab, tmp_path: Path) -> None:
    """data.text_vocab=corpus: text row i of the model is the pretrained row of base id base_ids[i]."""
    base = _fake_base_llm(tmp_path, vocab, tied=False)
    text = corpus_subset(load_text_tokenizer(), ["Transcribe this audio.", "the old cat sat"])
    small = UnifiedVocab(text, CodecIdentity("test", "1", 25.0, 512, 16000, 16000, "h"))
    model = build_model({"init": "pretrained", "path": str(tmp_path), "config": {"hidden_size": 64}}, small)
    index = torch.tensor(text.base_ids)
    n_text = small.text_vocab_size
    assert model.get_input_embeddings().weight.shape == (small.padded_size(), 64)
    assert torch.equal(model.get_input_embeddings().weight[:n_text], base.get_input_embeddings().weight[index])
    assert torch.equal(model.get_output_embeddings().weight[:n_text], base.get_output_embeddings().weight[index])


def test_pretrained_shape_mismatch_is_refused(vocab: UnifiedVocab, tmp_path: Path) -> None:
    _fake_base_llm(tmp_path, vocab, tied=True)
    with pytest.raises(ValueError, match="hidden_size: preset 1536 != checkpoint 64"):
        build_model({"init": "pretrained", "path": str(tmp_path), "config": {"hidden_size": 1536}}, vocab)


def test_pretrained_from_a_ttt_checkpoint_keeps_its_rows(vocab: UnifiedVocab, tmp_path: Path) -> None:
    trained = build_model({"init": "random", "config": TINY, "seed": 7}, vocab)
    save_checkpoint(trained, vocab.manifest(), tmp_path / "ckpt")
    loaded = build_model({"init": "pretrained", "path": str(tmp_path / "ckpt")}, vocab)
    assert torch.equal(loaded.get_input_embeddings().weight, trained.get_input_embeddings().weight)
    other = UnifiedVocab(load_text_tokenizer(), CodecIdentity("other", "1", 25.0, 512, 16000, 16000, "h"))
    with pytest.raises(VocabMismatchError, match=r"codec\.name"):
        build_model({"init": "pretrained", "path": str(tmp_path / "ckpt")}, other)


def test_forward_hidden_shapes_and_backend_check(vocab: UnifiedVocab) -> None:
    model = build_model({"init": "random", "config": TINY}, vocab)
    seq = build_chat(vocab, [Turn("user", [Part(text="Read this aloud.")]),
                             Turn("assistant", [Part.audio(np.arange(20), final=True)])])
    batch = TtTCollator(vocab, ObjectiveConfig(), 64, seed=0)(
        [{"sample_id": "a", "input_ids": seq.input_ids, "spans": spans_to_pylist(seq.spans)}], epoch=0)
    hidden = forward_hidden(model, batch)
    assert hidden.shape == (1, 64, 64) and torch.isfinite(hidden).all()
    with pytest.raises(ValueError, match="does not match the model's attention"):
        forward_hidden(model, batch, backend="flex")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention has no CPU backward")
def test_flex_attention_matches_sdpa_on_cuda(vocab: UnifiedVocab) -> None:
    """The CUDA path (BlockMask + flex_attention) computes what the CPU path (bool mask + SDPA) computes."""
    seq = build_chat(vocab, [Turn("user", [Part(text="Read this aloud.")]),
                             Turn("assistant", [Part(text="Sure"), Part.audio(np.arange(40)),
                                                Part(text="and"), Part.audio(np.arange(30), final=True)])])
    sample = {"sample_id": "a", "input_ids": seq.input_ids, "spans": spans_to_pylist(seq.spans)}
    batch = TtTCollator(vocab, ObjectiveConfig(), 256, seed=0)([sample, {**sample, "sample_id": "b"}], epoch=0)
    cfg = {"init": "random", "config": TINY, "seed": 0}
    sdpa = build_model({**cfg, "attn_implementation": "sdpa"}, vocab, device="cuda")
    flex = build_model({**cfg, "attn_implementation": "auto"}, vocab, device="cuda")
    assert attention_backend(flex) == "flex"
    h_sdpa, h_flex = forward_hidden(sdpa, batch), forward_hidden(flex, batch)
    assert torch.allclose(h_flex, h_sdpa, atol=1e-4)
    h_flex.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in flex.parameters() if p.grad is not None)
