"""Checkpoint I/O: exact round trip, plain-transformers loading, manifest checks, atomic replacement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Qwen2ForCausalLM

import ttt_model.core.model_checkpoint as ckpt
from tokenization.codecs.base import CodecIdentity
from tokenization.sequence import Part, Turn, build_chat, spans_to_pylist
from tokenization.text import load_text_tokenizer
from tokenization.vocab import UnifiedVocab, VocabMismatchError
from ttt_model.core.checkpoint_layout import load_objective
from ttt_model.core.collator import PackedBatch, TtTCollator
from ttt_model.core.model import build_model, forward_hidden, lm_head_weight
from ttt_model.core.model_checkpoint import load_checkpoint, load_extra, save_checkpoint
from ttt_model.core.objective import ObjectiveConfig

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 1024, "tie_word_embeddings": True}


@pytest.fixture(scope="module")
def vocab() -> UnifiedVocab:
    return UnifiedVocab(load_text_tokenizer(), CodecIdentity("test", "1", 25.0, 512, 16000, 16000, "h"))


@pytest.fixture(scope="module")
def model(vocab: UnifiedVocab) -> Qwen2ForCausalLM:
    return build_model({"init": "random", "config": TINY, "seed": 3}, vocab).eval()


@pytest.fixture(scope="module")
def batch(vocab: UnifiedVocab) -> PackedBatch:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(2):
        answer = [Part(text="Okay:"), Part.audio(rng.integers(0, 512, 30)), Part(text="done"),
                  Part.audio(rng.integers(0, 512, 20), final=True)]
        seq = build_chat(vocab, [Turn("user", [Part(text=f"Say sentence number {i} please.")]),
                                 Turn("assistant", answer)])
        samples.append({"sample_id": f"s{i}", "input_ids": seq.input_ids, "spans": spans_to_pylist(seq.spans)})
    return TtTCollator(vocab, ObjectiveConfig(), 128, seed=0)(samples, epoch=0)


@torch.no_grad()
def logits(model: Qwen2ForCausalLM, batch: PackedBatch) -> torch.Tensor:
    return forward_hidden(model, batch) @ lm_head_weight(model).T


def test_round_trip_gives_identical_logits(vocab: UnifiedVocab, model: Qwen2ForCausalLM, batch: PackedBatch,
                                           tmp_path: Path) -> None:
    out = save_checkpoint(model, vocab.manifest(), tmp_path / "step_10")
    assert {"config.json", "model.safetensors", ckpt.MANIFEST_FILE} <= {p.name for p in out.iterdir()}
    loaded, manifest = load_checkpoint(out, vocab.manifest())
    assert manifest == vocab.manifest()
    assert loaded.get_input_embeddings().weight.dtype == torch.float32
    assert lm_head_weight(loaded) is loaded.get_input_embeddings().weight  # still tied
    assert torch.equal(logits(loaded.eval(), batch), logits(model, batch))
    assert load_extra(out) is None


def test_plain_transformers_loads_a_checkpoint(vocab: UnifiedVocab, model: Qwen2ForCausalLM,
                                               tmp_path: Path) -> None:
    save_checkpoint(model, vocab.manifest(), tmp_path / "ckpt")
    plain = Qwen2ForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    ids = torch.tensor([vocab.encode_text("A plain causal language model input.")])
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6)


def test_manifest_mismatch_is_refused(vocab: UnifiedVocab, model: Qwen2ForCausalLM, tmp_path: Path) -> None:
    save_checkpoint(model, vocab.manifest(), tmp_path / "ckpt")
    other = UnifiedVocab(load_text_tokenizer(), CodecIdentity("test", "2", 25.0, 512, 16000, 16000, "h"))
    with pytest.raises(VocabMismatchError, match=r"codec\.version"):
        load_checkpoint(tmp_path / "ckpt", other.manifest())


def test_missing_manifest_or_directory_is_a_clear_error(vocab: UnifiedVocab, model: Qwen2ForCausalLM,
                                                        tmp_path: Path) -> None:
    model.save_pretrained(tmp_path / "hf_only")
    with pytest.raises(FileNotFoundError, match=r"has no vocab_manifest\.json"):
        load_checkpoint(tmp_path / "hf_only", vocab.manifest())
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        load_checkpoint(tmp_path / "nowhere")


def test_model_smaller_than_its_vocabulary_is_refused(vocab: UnifiedVocab, model: Qwen2ForCausalLM,
                                                      tmp_path: Path) -> None:
    bigger = UnifiedVocab(load_text_tokenizer(), CodecIdentity("test", "1", 25.0, 4096, 16000, 16000, "h"))
    with pytest.raises(ValueError, match="embedding rows but the vocabulary has"):
        save_checkpoint(model, bigger.manifest(), tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_extra_state_round_trips(vocab: UnifiedVocab, model: Qwen2ForCausalLM, tmp_path: Path) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    extra = {"step": 10, "optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "data": {"epoch": 1}}
    save_checkpoint(model, vocab.manifest(), tmp_path / "ckpt", extra=extra)
    back = load_extra(tmp_path / "ckpt")
    assert back is not None and back["step"] == 10 and back["data"] == {"epoch": 1}
    assert torch.equal(back["rng"], extra["rng"]) and back["optimizer"]["param_groups"][0]["lr"] == 1e-3


def test_objective_record_round_trips_and_old_checkpoints_have_none(vocab: UnifiedVocab, model: Qwen2ForCausalLM,
                                                                    tmp_path: Path) -> None:
    """The training objective travels with the model (so `decode: auto` finds it); without one: no record."""
    objective = {"mode": "nar", "eps": 0.001, "banom": False, "trunc_keep": [0.3, 0.9]}
    save_checkpoint(model, vocab.manifest(), tmp_path / "nar", objective=objective)
    assert load_objective(tmp_path / "nar") == objective
    assert (tmp_path / "nar" / ckpt.OBJECTIVE_FILE).is_file()
    save_checkpoint(model, vocab.manifest(), tmp_path / "old")
    assert load_objective(tmp_path / "old") is None
    with pytest.raises(ValueError, match="mode"):
        save_checkpoint(model, vocab.manifest(), tmp_path / "bad", objective={"eps": 0.001})
    assert not (tmp_path / "bad").exists()


def test_overwrite_is_atomic_and_a_failed_save_keeps_the_old_checkpoint(
        vocab: UnifiedVocab, model: Qwen2ForCausalLM, batch: PackedBatch, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "last"
    first = build_model({"init": "random", "config": TINY, "seed": 11}, vocab).eval()
    save_checkpoint(first, vocab.manifest(), target)
    save_checkpoint(model, vocab.manifest(), target)  # replaces the whole directory
    assert torch.equal(logits(load_checkpoint(target)[0].eval(), batch), logits(model, batch))

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "write_manifest", crash)  # dies after the weights are written
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(first, vocab.manifest(), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # no temp or .old leftovers
    assert torch.equal(logits(load_checkpoint(target)[0].eval(), batch), logits(model, batch))
