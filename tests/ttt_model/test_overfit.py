"""The whole training path (collator → model → hybrid loss → AdamW) can fit a few samples: 200 steps drive both
the AR (text) and the diffusion (audio) loss far down.

Batches are RE-COLLATED every step (epoch = step): each step draws fresh t, masks, BANOM/PPM/SST, exactly as
training does. A fixed batch would only show that the model can memorise one masking pattern; fresh draws show
that it learns the audio of a span from its context whatever is masked. Progress is measured on a fixed set of
held-out draws (epochs never used for training), before and after, so the comparison is not noise from 1/p
weights of one draw.

Speed: the batch's ids are remapped onto a compact vocabulary of the ids these samples can contain (their tokens,
the specials, padding), so the model keeps ~200 embedding rows instead of 152k. The model never knows what an id means,
so this changes nothing but the cost of the LM head.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch

from tokenization.codecs.base import CodecIdentity
from tokenization.sequence import Part, Turn, build_chat, build_document, spans_to_pylist
from tokenization.text import load_text_tokenizer
from tokenization.vocab import UnifiedVocab
from ttt_model.core.collator import PackedBatch, TtTCollator
from ttt_model.core.loss import LossSums, combine, hybrid_loss_sums
from ttt_model.core.model import build_model, forward_hidden, lm_head_weight
from ttt_model.core.objective import IGNORE, ObjectiveConfig

STEPS = 200
ROW = 160
EVAL_EPOCHS = range(10_000, 10_008)
SMALL = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 512, "tie_word_embeddings": True}


def make_samples(vocab: UnifiedVocab) -> list[dict]:
    rng = np.random.default_rng(0)

    def codes(n: int) -> np.ndarray:
        return rng.integers(0, vocab.codebook_size, n)

    seqs = [
        build_chat(vocab, [Turn("user", [Part(text="Please read: the river is green today.")]),  # TTS-like
                           Turn("assistant", [Part(text="The river is"), Part.audio(codes(10)),
                                              Part(text="green today."), Part.audio(codes(12), final=True)])]),
        build_chat(vocab, [Turn("user", [Part(text="Transcribe this."), Part.audio(codes(16))]),  # ASR-like
                           Turn("assistant", [Part(text="seven quick answers about the weather")])]),
        build_document(vocab, [Part(text="A spoken story begins"), Part.audio(codes(8)),  # interleaved document
                               Part(text="and then it ends"), Part.audio(codes(6))]),
    ]
    return [{"sample_id": f"overfit-{i}", "input_ids": s.input_ids, "spans": spans_to_pylist(s.spans)}
            for i, s in enumerate(seqs)]


def compact_ids(vocab: UnifiedVocab, samples: list[dict]) -> torch.Tensor:
    """Lookup table unified id -> compact id over every id a collated batch of these samples can hold."""
    used = np.unique(np.concatenate([*(s["input_ids"] for s in samples), list(vocab.specials.values())]))
    table = torch.full((vocab.padded_size(),), -1, dtype=torch.long)
    table[torch.from_numpy(used)] = torch.arange(len(used))
    return table


def remap(batch: PackedBatch, table: torch.Tensor) -> PackedBatch:
    labels = torch.where(batch.labels == IGNORE, IGNORE, table[batch.labels.clamp(min=0)])
    return replace(batch, input_ids=table[batch.input_ids], labels=labels)


def eval_losses(model: torch.nn.Module, batches: list[PackedBatch]) -> tuple[float, float]:
    """(loss_ar, loss_diffusion) over all held-out draws together, normalised as one optimizer step would be."""
    with torch.no_grad():
        sums = [hybrid_loss_sums(forward_hidden(model, b), lm_head_weight(model), b) for b in batches]
    total = sum(sums[1:], sums[0])
    assert isinstance(total, LossSums)
    _, ar, diff = combine(total, sum(b.n_ar for b in batches), sum(b.n_maskable for b in batches))
    return float(ar), float(diff)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny matmuls: intra-op threads cost more than they give (and the CI box is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_two_hundred_steps_drive_both_losses_down() -> None:
    torch.manual_seed(0)
    vocab = UnifiedVocab(load_text_tokenizer(), CodecIdentity("test", "1", 25.0, 512, 16000, 16000, "h"))
    samples = make_samples(vocab)
    table = compact_ids(vocab, samples)
    collate = TtTCollator(vocab, ObjectiveConfig(), ROW, seed=0)
    model = build_model({"init": "random", "config": SMALL, "seed": 0}, vocab)
    model.resize_token_embeddings(int(table.max()) + 1, pad_to_multiple_of=64)  # keep the first, random rows
    held_out = [remap(collate(samples, epoch=e), table) for e in EVAL_EPOCHS]
    assert all(b.input_ids.shape[0] == 1 for b in held_out)  # the three samples share one packed row
    ar0, diff0 = eval_losses(model, held_out)

    # Clipping + cosine decay, as in training: a draw with small p weighs its few masked tokens by up to
    # 1/eps = 1000, and without clipping such a step can undo much of what the previous ones learned.
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, STEPS)
    model.train()
    for step in range(STEPS):
        batch = remap(collate(samples, epoch=step), table)
        loss, _, _ = combine(hybrid_loss_sums(forward_hidden(model, batch), lm_head_weight(model), batch),
                             batch.n_ar, batch.n_maskable)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
    model.eval()
    ar1, diff1 = eval_losses(model, held_out)
    assert ar0 > 3.0 and diff0 > 3.0  # started near chance over the compact vocabulary
    assert ar1 < 0.3 * ar0, (ar0, ar1)
    assert diff1 < 0.3 * diff0, (diff0, diff1)
