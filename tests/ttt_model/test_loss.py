from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tokenization.codecs.base import CodecIdentity
from tokenization.sequence import Part, Turn, build_chat, spans_to_pylist
from tokenization.text import load_text_tokenizer
from tokenization.vocab import UnifiedVocab
from ttt_model.core.attention import sdpa_mask
from ttt_model.core.collator import PackedBatch, TtTCollator, as_spans
from ttt_model.core.loss import (
    LossSums,
    chunked_cross_entropy,
    combine,
    diffusion_vocab,
    global_counts,
    hybrid_loss_sums,
)
from ttt_model.core.objective import IGNORE, KIND_AR, KIND_DIFFUSION, ObjectiveConfig

torch.set_num_threads(1)
VOCAB = UnifiedVocab(load_text_tokenizer(), CodecIdentity("test", "1", 25.0, 512, 16000, 16000, "h"))


class ToyLM(nn.Module):
    """Embedding + position embedding + one attention layer using the batch's mask: enough for packing,
    masking or position-id mistakes to change the loss."""

    def __init__(self, vocab_size: int, hidden: int = 8, max_positions: int = 512) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab_size, hidden)
        self.pos = nn.Embedding(max_positions, hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.head = nn.Parameter(torch.randn(vocab_size, hidden) * 0.3)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        x = self.embed(batch.input_ids) + self.pos(batch.position_ids)
        q, k, v = self.qkv(x)[:, None].chunk(3, dim=-1)
        return x + F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask(batch.doc_ids, batch.block_ids))[:, 0]


def samples(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        seq = build_chat(
            VOCAB,
            [
                Turn("user", [Part.audio(rng.integers(0, 512, int(rng.integers(3, 20))))]),
                Turn(
                    "assistant",
                    [
                        Part(text=" ".join(["ok"] * int(rng.integers(1, 8)))),
                        Part.audio(rng.integers(0, 512, 26)),
                        Part.audio(rng.integers(0, 512, int(rng.integers(4, 40))), final=True),
                    ],
                ),
            ],
        )
        out.append({"sample_id": f"s{i}", "input_ids": seq.input_ids, "spans": spans_to_pylist(seq.spans)})
    return out


DATA = samples(8)
# The toy model works on a compact id space (the ids DATA uses) so the tests do not score ~150k-entry logits.
USED = sorted({*np.concatenate([s["input_ids"] for s in DATA]).tolist(), VOCAB.mask_id, VOCAB.pad_id})
TABLE = torch.full((VOCAB.size,), -1, dtype=torch.long)
TABLE[USED] = torch.arange(len(USED))


def compact(batch: PackedBatch) -> PackedBatch:
    labels = torch.where(batch.labels == IGNORE, IGNORE, TABLE[batch.labels.clamp(min=0)])
    return replace(batch, input_ids=TABLE[batch.input_ids], labels=labels)


@pytest.fixture(scope="module")
def model() -> ToyLM:
    return ToyLM(len(USED)).double()


def step(model: ToyLM, batches: list[PackedBatch]) -> tuple[float, list[torch.Tensor]]:
    """One optimizer step's loss and gradients, accumulated over micro-batches."""
    model.zero_grad()
    n_ar, n_maskable = global_counts(batches)
    total = 0.0
    for b in batches:
        loss, _, _ = combine(hybrid_loss_sums(model(b), model.head, b), n_ar, n_maskable)
        loss.backward()
        total += float(loss.detach())
    return total, [p.grad.clone() for p in model.parameters()]


def test_loss_and_gradient_do_not_depend_on_the_micro_batch_split(model: ToyLM) -> None:
    collator = TtTCollator(VOCAB, ObjectiveConfig(), 256, seed=5)
    results = {}
    for n_micro in (1, 2, 4):
        size = len(DATA) // n_micro
        results[n_micro] = step(
            model, [compact(collator(DATA[i : i + size], epoch=3)) for i in range(0, len(DATA), size)]
        )
    unpacked = TtTCollator(VOCAB, ObjectiveConfig(), 256, seed=5, packing=False)
    results["padded"] = step(model, [compact(unpacked(DATA, epoch=3))])
    loss, grads = results[1]
    assert loss > 0 and any(g.abs().sum() > 0 for g in grads)
    for other_loss, other_grads in results.values():
        assert other_loss == pytest.approx(loss, rel=1e-10)
        for g, h in zip(grads, other_grads, strict=True):
            torch.testing.assert_close(g, h, rtol=1e-9, atol=1e-12)


def naive_sums(hidden: torch.Tensor, weight: torch.Tensor, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """All B × L × V logits, then the same sums: what the gathered, chunked loss must equal."""
    ce = F.cross_entropy((hidden @ weight.T).transpose(1, 2), batch.labels, reduction="none", ignore_index=IGNORE)
    weighted = ce * batch.loss_weight
    return weighted[batch.loss_kind == KIND_AR].sum(), weighted[batch.loss_kind == KIND_DIFFUSION].sum()


@pytest.mark.parametrize(("chunk_size", "checkpoint"), [(1, False), (7, True), (4096, False)])
def test_gathered_chunked_loss_equals_full_logits(model: ToyLM, chunk_size: int, checkpoint: bool) -> None:
    batch = compact(TtTCollator(VOCAB, ObjectiveConfig(), 128, seed=1)(DATA[:2], epoch=0))
    hidden = model(batch)
    sums = hybrid_loss_sums(hidden, model.head, batch, chunk_size=chunk_size, checkpoint=checkpoint)
    ar, diff = naive_sums(hidden, model.head, batch)
    assert sums.ar_count == int((batch.loss_kind == KIND_AR).sum()) > 0
    assert sums.diff_count == int((batch.loss_kind == KIND_DIFFUSION).sum()) > 0
    torch.testing.assert_close(sums.ar_sum, ar)
    torch.testing.assert_close(sums.diff_sum, diff)
    grad = torch.autograd.grad(sums.ar_sum + sums.diff_sum, model.head)[0]
    torch.testing.assert_close(grad, torch.autograd.grad(ar + diff, model.head)[0])


def test_task_weights_scale_each_samples_targets_and_nothing_else(model: ToyLM) -> None:
    """One sample per row (packing off), so row i is sample i: its weights are the unweighted ones times its task's
    weight, noise and targets are untouched, and the loss sums are the task-weighted sums of the plain ones."""
    tasks = ["asr", "tts", "text_chat", None] * 2  # text_chat has no weight (1); None: a row without a task column
    data = [{**s, "task": t} if t else s for s, t in zip(DATA, tasks, strict=True)]
    weights = {"asr": 0.5, "tts": 3.0}
    plain = compact(TtTCollator(VOCAB, ObjectiveConfig(), 256, seed=5, packing=False)(data, epoch=1))
    cfg = ObjectiveConfig(task_weights=weights)
    weighted = compact(TtTCollator(VOCAB, cfg, 256, seed=5, packing=False)(data, epoch=1))
    for name in ("input_ids", "labels", "loss_kind", "block_ids"):
        assert torch.equal(getattr(plain, name), getattr(weighted, name)), name
    assert (plain.n_ar, plain.n_maskable) == (weighted.n_ar, weighted.n_maskable)
    factor = torch.tensor([weights.get(t, 1.0) if t else 1.0 for t in tasks])[:, None]
    torch.testing.assert_close(weighted.loss_weight, plain.loss_weight * factor)
    with torch.no_grad():
        hidden = model(plain)
        ce = F.cross_entropy((hidden @ model.head.T).transpose(1, 2), plain.labels, reduction="none",
                             ignore_index=IGNORE)
        sums = hybrid_loss_sums(hidden, model.head, weighted)
    scaled = ce * plain.loss_weight * factor
    torch.testing.assert_close(sums.ar_sum, scaled[plain.loss_kind == KIND_AR].sum())
    torch.testing.assert_close(sums.diff_sum, scaled[plain.loss_kind == KIND_DIFFUSION].sum())
    assert any(t == "tts" for t in tasks) and (plain.loss_kind[1] == KIND_AR).any()  # the weights did bite


def test_restricted_audio_head() -> None:
    cfg = ObjectiveConfig(audio_head="restricted")
    ids = diffusion_vocab(VOCAB, cfg)
    assert diffusion_vocab(VOCAB, ObjectiveConfig()) is None
    assert len(ids) == VOCAB.codebook_size + 3 and bool((ids.diff() > 0).all())
    batch = TtTCollator(VOCAB, cfg, 96, seed=1)(DATA[:1], epoch=0)
    full_vocab_model = ToyLM(VOCAB.size, hidden=4)
    hidden = full_vocab_model(batch)
    head = full_vocab_model.head
    sums = hybrid_loss_sums(hidden, head, batch, diffusion_ids=ids)
    pos, ar = batch.loss_kind == KIND_DIFFUSION, batch.loss_kind == KIND_AR
    target = torch.searchsorted(ids, batch.labels[pos])
    expected = F.cross_entropy(hidden[pos] @ head[ids].T, target, reduction="none") * batch.loss_weight[pos]
    torch.testing.assert_close(sums.diff_sum, expected.sum())
    torch.testing.assert_close(sums.ar_sum, F.cross_entropy(hidden[ar] @ head.T, batch.labels[ar], reduction="sum"))
    bad = ids[ids != batch.labels[pos][0]]
    with pytest.raises(ValueError, match="restricted"):
        hybrid_loss_sums(hidden, head, batch, diffusion_ids=bad)


def hand_batch() -> PackedBatch:
    def t(*rows: list) -> torch.Tensor:
        return torch.tensor(rows)

    return PackedBatch(
        input_ids=t([0, 1, 2]),
        position_ids=t([0, 1, 2]),
        doc_ids=t([0, 0, 0]),
        block_ids=t([-1, 0, 0]),
        labels=t([2, 3, IGNORE]),
        loss_kind=t([KIND_AR, KIND_DIFFUSION, 0]),
        loss_weight=t([1.0, 2.5, 0.0]),
        n_ar=1,
        n_maskable=3,
        n_tokens=3,
        n_padding=0,
    )


def test_exact_value_on_a_hand_built_batch() -> None:
    hidden = torch.tensor([[[1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 0.0, 3.0], [5.0, 5.0, 5.0, 5.0]]], dtype=torch.float64)
    weight = torch.eye(4, dtype=torch.float64)  # logits = hidden

    def ce(row: list[float], label: int) -> float:
        return math.log(sum(math.exp(x) for x in row)) - row[label]

    sums = hybrid_loss_sums(hidden, weight, hand_batch())
    assert sums.ar_count == 1 and sums.diff_count == 1
    assert float(sums.ar_sum) == pytest.approx(ce([1, 0, 2, 0], 2))
    assert float(sums.diff_sum) == pytest.approx(2.5 * ce([0, 1, 0, 3], 3))
    loss, loss_ar, loss_diff = combine(sums, 4, 10)
    assert float(loss_ar) == pytest.approx(ce([1, 0, 2, 0], 2) / 4)
    assert float(loss_diff) == pytest.approx(2.5 * ce([0, 1, 0, 3], 3) / 10)
    assert float(loss) == pytest.approx(float(loss_ar + loss_diff))


def test_zero_counts_and_inconsistent_counts() -> None:
    hidden = torch.zeros(1, 3, 4, requires_grad=True)
    empty = PackedBatch(**{**hand_batch().__dict__, "loss_kind": torch.zeros(1, 3, dtype=torch.long)})
    sums = hybrid_loss_sums(hidden, torch.eye(4), empty)
    loss, loss_ar, loss_diff = combine(sums, 0, 0)
    assert float(loss.detach()) == float(loss_ar.detach()) == float(loss_diff.detach()) == 0.0
    loss.backward()
    assert torch.isfinite(hidden.grad).all()
    real = hybrid_loss_sums(torch.zeros(1, 3, 4), torch.eye(4), hand_batch())
    with pytest.raises(ValueError, match="global AR count"):
        combine(real, 0, 10)
    with pytest.raises(ValueError, match="global maskable count"):
        combine(real, 4, 0)


def test_loss_sums_add_and_global_counts() -> None:
    a = LossSums(torch.tensor(1.0), 2, torch.tensor(3.0), 4)
    total = a + a
    assert (float(total.ar_sum), total.ar_count, float(total.diff_sum), total.diff_count) == (2.0, 4, 6.0, 8)
    assert global_counts([hand_batch(), hand_batch()]) == (2, 6)
    assert chunked_cross_entropy(torch.zeros(0, 4), torch.eye(4), torch.zeros(0, dtype=torch.long)).shape == (0,)


def prompt_only() -> dict:
    """DATA[0]'s first (user) turn alone: a sample with no target token at all."""
    spans = [s for s in as_spans(DATA[0]["spans"]) if s.turn == 0]
    assert not any(s.is_target for s in spans)
    return {"sample_id": "prompt", "input_ids": DATA[0]["input_ids"][: spans[-1].end], "spans": spans_to_pylist(spans)}


@pytest.mark.parametrize(
    "cfg",
    [ObjectiveConfig(), *(ObjectiveConfig(mode=m, banom=False, ppm=False, sst=False) for m in ("ar", "nar"))],
    ids=["ttt", "ar", "nar"],
)
def test_prompt_only_sample_has_no_targets_and_a_finite_loss(model: ToyLM, cfg: ObjectiveConfig) -> None:
    batch = compact(TtTCollator(VOCAB, cfg, 128, seed=0)([prompt_only()], epoch=0))
    assert batch.n_tokens == len(prompt_only()["input_ids"]) and batch.stats["samples"] == 1
    assert batch.n_ar == batch.n_maskable == 0 and (batch.loss_kind == 0).all() and (batch.labels == IGNORE).all()
    hidden = model(batch)
    assert torch.isfinite(hidden).all()
    loss, loss_ar, loss_diff = combine(hybrid_loss_sums(hidden, model.head, batch), *global_counts([batch]))
    assert float(loss.detach()) == float(loss_ar.detach()) == float(loss_diff.detach()) == 0.0
    model.zero_grad()
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    with_targets = compact(TtTCollator(VOCAB, cfg, 256, seed=0)([prompt_only(), DATA[1]], epoch=0))
    alone = compact(TtTCollator(VOCAB, cfg, 256, seed=0)([DATA[1]], epoch=0))
    assert (with_targets.n_ar, with_targets.n_maskable) == (alone.n_ar, alone.n_maskable)  # adds nothing to normalise
