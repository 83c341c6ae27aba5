"""Black-box invariances of the WHOLE model (embeddings → all layers → LM head) under the TtT mask.

Batches come from the real collator (so doc/block/position metadata is what training sees); a test then
changes one input token and compares logits. Mask metadata never depends on token values, so the changed
batch has exactly the same attention pattern: any logit difference is information flow through the model.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import Qwen2ForCausalLM

from tokenization.codecs.base import CodecIdentity
from tokenization.sequence import Part, Turn, build_chat, build_document, spans_to_pylist
from tokenization.text import load_text_tokenizer
from tokenization.vocab import UnifiedVocab
from ttt_model.core.collator import PackedBatch, TtTCollator
from ttt_model.core.model import build_model, forward_hidden, lm_head_weight
from ttt_model.core.objective import ObjectiveConfig

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 1024, "tie_word_embeddings": True}
ROW = 256
ATOL = 1e-5  # "unchanged" (float32 kernels may reorder sums); real changes are orders of magnitude larger
WORDS = ["the", "a", "audio", "model", "speaks", "text", "token", "quickly", "slowly", "river", "green", "seven"]


@pytest.fixture(scope="module")
def vocab() -> UnifiedVocab:
    return UnifiedVocab(load_text_tokenizer(), CodecIdentity("test", "1", 25.0, 512, 16000, 16000, "h"))


@pytest.fixture(scope="module")
def model(vocab: UnifiedVocab) -> Qwen2ForCausalLM:
    return build_model({"init": "random", "config": TINY, "seed": 5}, vocab).eval()


def random_sample(vocab: UnifiedVocab, rng: np.random.Generator, sid: str) -> dict:
    """A chat (ASR-, TTS- or interleaved-answer-like) or a document with random text and audio pieces."""

    def text() -> str:
        return " ".join(rng.choice(WORDS, size=int(rng.integers(2, 8))))

    def audio(final: bool = False) -> Part:
        return Part.audio(rng.integers(0, vocab.codebook_size, int(rng.integers(4, 24))), final=final)

    kind = rng.integers(3)
    if kind == 0:
        seq = build_chat(vocab, [Turn("user", [audio()]), Turn("assistant", [Part(text=text())])])
    elif kind == 1:
        answer = [p for _ in range(int(rng.integers(1, 3))) for p in (Part(text=text()), audio())]
        seq = build_chat(vocab, [Turn("user", [Part(text=text())]), Turn("assistant", [*answer, audio(final=True)])])
    else:
        seq = build_document(vocab, [Part(text=text()), audio(), Part(text=text())])
    return {"sample_id": sid, "input_ids": seq.input_ids, "spans": spans_to_pylist(seq.spans)}


def collate(vocab: UnifiedVocab, samples: list[dict]) -> PackedBatch:
    return TtTCollator(vocab, ObjectiveConfig(), ROW, seed=0)(samples, epoch=0)


@torch.no_grad()
def logits(model: Qwen2ForCausalLM, batch: PackedBatch) -> torch.Tensor:
    """Logits over every 16th vocabulary row: the head is position-wise, so a subset of its rows shows every
    change of the hidden state just as well, at 1/16 of the cost of 152k-way logits."""
    return forward_hidden(model, batch) @ lm_head_weight(model)[::16].T


def one_row(batch: PackedBatch, row: int) -> PackedBatch:
    """Row `row` of a batch as a batch of its own (rows never interact, so this is what the model saw)."""
    return replace(batch, **{f: getattr(batch, f)[row:row + 1] for f in (
        "input_ids", "position_ids", "doc_ids", "block_ids", "labels", "loss_kind", "loss_weight")})


def with_token(batch: PackedBatch, row: int, pos: int, vocab: UnifiedVocab) -> PackedBatch:
    """Row `row` of the batch, as a one-row batch, with the token at `pos` replaced by another of the same kind
    (audio code or text)."""
    batch = one_row(batch, row)
    ids = batch.input_ids.clone()
    old = int(ids[0, pos])
    if vocab.is_audio(np.array([old]))[0]:
        ids[0, pos] = vocab.audio_offset + (old - vocab.audio_offset + 1) % vocab.codebook_size
    else:
        ids[0, pos] = (old + 1) % vocab.text_vocab_size
    return replace(batch, input_ids=ids)


def changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[L] bool: positions whose logits differ."""
    return (a - b).abs().amax(dim=-1) > ATOL


@pytest.fixture(scope="module", params=[0, 1, 2])
def packed(request: pytest.FixtureRequest, vocab: UnifiedVocab, model: Qwen2ForCausalLM
           ) -> tuple[PackedBatch, torch.Tensor]:
    """A random layout: several random samples packed into rows, and its logits."""
    rng = np.random.default_rng(request.param)
    batch = collate(vocab, [random_sample(vocab, rng, f"{request.param}-{i}") for i in range(6)])
    assert (batch.doc_ids.max(dim=1).values >= 1).any()  # at least one row really packs several samples
    return batch, logits(model, batch)


def test_a_future_text_token_never_changes_earlier_logits(vocab: UnifiedVocab, model: Qwen2ForCausalLM,
                                                          packed: tuple[PackedBatch, torch.Tensor]) -> None:
    batch, base = packed
    rows, cols = torch.nonzero((batch.block_ids == -1) & (batch.doc_ids >= 0), as_tuple=True)
    rng = np.random.default_rng(0)
    for k in rng.choice(len(rows), size=4, replace=False):
        r, j = int(rows[k]), int(cols[k])
        diff = changed(logits(model, with_token(batch, r, j, vocab))[0], base[r])
        assert diff[j]  # the change is visible where it is an input
        assert not diff[:j].any()  # causal: nothing before it moves
        assert not diff[batch.doc_ids[r] != batch.doc_ids[r, j]].any()  # nor any other packed sample


def test_an_audio_token_is_seen_across_its_span_but_not_before_it(vocab: UnifiedVocab, model: Qwen2ForCausalLM,
                                                                  packed: tuple[PackedBatch, torch.Tensor]) -> None:
    batch, base = packed
    audio = torch.from_numpy(vocab.is_audio(batch.input_ids.numpy()))
    rows, cols = torch.nonzero(audio & (batch.block_ids >= 0), as_tuple=True)
    rng = np.random.default_rng(1)
    for k in rng.choice(len(rows), size=4, replace=False):
        r, j = int(rows[k]), int(cols[k])
        block = batch.block_ids[r] == batch.block_ids[r, j]
        start = int(torch.nonzero(block)[0])
        diff = changed(logits(model, with_token(batch, r, j, vocab))[0], base[r])
        assert diff[block].all()  # bidirectional: every position of the span sees it, earlier ones included
        assert not diff[:start].any()  # causal to everything before the span
        assert not diff[batch.doc_ids[r] != batch.doc_ids[r, j]].any()


def test_a_sample_packed_with_others_gives_the_same_logits_as_alone(vocab: UnifiedVocab,
                                                                    model: Qwen2ForCausalLM) -> None:
    rng = np.random.default_rng(7)
    a, b, c = (random_sample(vocab, rng, f"pack-{i}") for i in range(3))
    alone = collate(vocab, [a])
    n = int((alone.doc_ids[0] == 0).sum())
    packed = collate(vocab, [b, c, a])  # a sample's noising depends on its id only, not on its neighbours
    row, start = find_sample(packed, alone.input_ids[0, :n])
    assert start > 0  # behind another sample, so its positions must restart
    assert int(packed.doc_ids[row].max()) >= 1  # really packed with another sample
    assert torch.equal(packed.position_ids[row, start:start + n], torch.arange(n))  # positions restart
    assert torch.allclose(logits(model, packed)[row, start:start + n], logits(model, alone)[0, :n], atol=ATOL)


def find_sample(batch: PackedBatch, ids: torch.Tensor) -> tuple[int, int]:
    """(row, start) of the packed sample whose tokens are `ids`."""
    for row in range(batch.doc_ids.shape[0]):
        for doc in range(int(batch.doc_ids[row].max()) + 1):
            where = torch.nonzero(batch.doc_ids[row] == doc)[:, 0]
            if len(where) == len(ids) and torch.equal(batch.input_ids[row, where], ids):
                return row, int(where[0])
    raise AssertionError("sample not found in the packed batch")


def test_forward_uses_the_batch_position_ids(vocab: UnifiedVocab, model: Qwen2ForCausalLM) -> None:
    """Stretching the positions changes every logit past the first token: the model's RoPE sees the batch's
    position ids (with packing, positions derived from the row would run on across samples)."""
    batch = collate(vocab, [random_sample(vocab, np.random.default_rng(3), "pos")])
    stretched = replace(batch, position_ids=batch.position_ids * 2)
    base = logits(model, batch)
    assert changed(logits(model, stretched)[0], base[0])[1:int((batch.doc_ids[0] >= 0).sum())].all()
