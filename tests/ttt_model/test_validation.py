"""Validation rows and per-task held-out losses (the learning curves)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.ttt_model.test_loss import DATA, VOCAB, ToyLM, compact, model  # noqa: F401 - model is a fixture
from tokenization.sequence import Part, build_document, spans_to_pylist
from ttt_model.core.collator import PackedBatch, TtTCollator
from ttt_model.core.loss import LossSums, combine, global_counts, hybrid_loss_sums
from ttt_model.core.objective import ObjectiveConfig
from ttt_model.training.validation import is_validation, read_validation_rows, rotated, task_losses, utterance_key


def test_every_view_of_an_utterance_falls_on_the_same_side() -> None:
    assert utterance_key("librispeech_tts/84-121123-0000#r2") == utterance_key("librispeech/84-121123-0000")
    ids = [f"librispeech/{i:05d}" for i in range(4000)]
    held = [i for i in ids if is_validation(i, 0.05)]
    assert 120 < len(held) < 280  # ~5 %
    assert all(is_validation(i.replace("librispeech/", "librispeech_tts/") + "#r1", 0.05) for i in held)
    assert not any(is_validation(i, 0.0) for i in ids)


def test_validation_rows_are_capped_per_task_and_carry_tokens(tmp_path: Path) -> None:
    rows = [{"sample_id": f"src/{i:04d}", "task": "asr" if i % 3 else "tts", "input_ids": [i, i + 1],
             "spans": [], "text": "x"} for i in range(600)]
    pq.write_table(pa.Table.from_pylist(rows[:300]), tmp_path / "a.parquet")
    pq.write_table(pa.Table.from_pylist(rows[300:]), tmp_path / "b.parquet")
    files = [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    got = read_validation_rows(files, 0.2, 10, ("sample_id", "input_ids", "spans"))
    assert set(got) == {"asr", "tts"} and len(got["asr"]) == 10 and 0 < len(got["tts"]) <= 10
    for task, picked in got.items():
        assert all(is_validation(r["sample_id"], 0.2) for r in picked)
        assert [r["sample_id"] for r in picked] == sorted(r["sample_id"] for r in picked)
        assert all(r["input_ids"] == [int(r["sample_id"][4:]), int(r["sample_id"][4:]) + 1] for r in picked), task
    assert read_validation_rows(files, 0.0, 10, ("sample_id",)) == {}


@pytest.mark.parametrize("micro_size", [1, 3, 100])
def test_task_losses_do_not_depend_on_the_micro_batch_split(model: ToyLM, micro_size: int) -> None:  # noqa: F811
    collator = TtTCollator(VOCAB, ObjectiveConfig(), max_tokens=512, seed=0)

    def loss_fn(batch: PackedBatch) -> LossSums:  # the toy model on the compact id space
        b = compact(batch)
        return hybrid_loss_sums(model(b), model.head, b)

    rows = {"chat": DATA[:5], "other": DATA[5:]}
    got = task_losses(loss_fn, collator, rows, micro_size, rank=0, world=1, device="cpu")
    for task, task_rows in rows.items():
        batch = collator(task_rows, 0)
        n_ar, n_mask = global_counts([batch])
        _, ar, diff = combine(loss_fn(batch), n_ar, n_mask)
        assert got[task]["ar"] == pytest.approx(float(ar.detach()), rel=1e-9)
        assert got[task]["diffusion"] == pytest.approx(float(diff.detach()), rel=1e-9)


def test_ranks_run_equal_forward_counts() -> None:
    calls: list[int] = []

    def loss_fn(batch: PackedBatch) -> LossSums:
        calls.append(batch.n_ar)
        z = torch.zeros(())
        return LossSums(z, 0, z, 0)

    collator = TtTCollator(VOCAB, ObjectiveConfig(), max_tokens=512, seed=0)
    for rank in (0, 1):
        calls.clear()
        task_losses(loss_fn, collator, {"chat": DATA[:5]}, 2, rank=rank, world=2, device="cpu")
        assert len(calls) == 4  # ceil(5 / (2 * 2)) = 2, each with its control: rank 1's second is empty
        calls.clear()
        task_losses(loss_fn, collator, {"chat": DATA[:5]}, 2, rank=rank, world=2, device="cpu", control=False)
        assert len(calls) == 2


def test_the_control_scores_the_same_targets_after_another_samples_prompt(model: ToyLM) -> None:  # noqa: F811
    """A prompt-blind loss scores the control exactly like the own prompts (same targets, noise and weights); the
    toy model, which attends to the prompt, does not; the control equals the donors' collate done by hand."""
    collator = TtTCollator(VOCAB, ObjectiveConfig(), max_tokens=512, seed=0)

    def blind(batch: PackedBatch) -> LossSums:  # a "model" that sees only the targets
        w, kind = batch.loss_weight.double(), batch.loss_kind
        return LossSums((w * (kind == 1) * batch.labels.clamp(min=0) % 7).sum(), 0,
                        (w * (kind == 2) * batch.labels.clamp(min=0) % 5).sum(), 0)

    def toy(batch: PackedBatch) -> LossSums:
        b = compact(batch)
        return hybrid_loss_sums(model(b), model.head, b)

    rows = {"chat": DATA[:5], "other": DATA[5:]}
    same = task_losses(blind, collator, rows, 2, rank=0, world=1, device="cpu")
    for terms in same.values():
        assert terms["ar_control"] == pytest.approx(terms["ar"], rel=1e-12)
        assert terms["diffusion_control"] == pytest.approx(terms["diffusion"], rel=1e-12)
    got = task_losses(toy, collator, rows, 3, rank=0, world=1, device="cpu")
    for task, task_rows in rows.items():
        donors = [task_rows[(i + len(task_rows) // 2) % len(task_rows)] for i in range(len(task_rows))]
        assert donors == rotated(task_rows) and all(d is not r for d, r in zip(donors, task_rows, strict=True))
        batch = collator(task_rows, 0, prompt_donors=donors)
        n_ar, n_mask = global_counts([collator(task_rows, 0)])
        with torch.no_grad():
            _, ar, diff = combine(toy(batch), n_ar, n_mask)
        assert got[task]["ar_control"] == pytest.approx(float(ar), rel=1e-9)
        assert got[task]["diffusion_control"] == pytest.approx(float(diff), rel=1e-9)
        assert got[task]["ar_control"] != pytest.approx(got[task]["ar"], rel=1e-6)
    one = task_losses(toy, collator, {"chat": DATA[:1]}, 2, rank=0, world=1, device="cpu")
    assert set(one["chat"]) == {"ar", "diffusion"}  # a single row has no other prompt to borrow


def test_documents_have_no_prompt_and_so_no_control() -> None:
    docs = [{"sample_id": f"d{i}", "input_ids": seq.input_ids, "spans": spans_to_pylist(seq.spans)}
            for i, seq in enumerate(build_document(VOCAB, [Part(text="some words " * (i + 1))]) for i in range(3))]
    collator = TtTCollator(VOCAB, ObjectiveConfig(), max_tokens=512, seed=0)
    assert collator(docs, 0, prompt_donors=rotated(docs)).stats["prompted"] == 0
    assert collator(DATA, 0, prompt_donors=rotated(DATA)).stats["prompted"] == len(DATA)

    def loss_fn(batch: PackedBatch) -> LossSums:
        return LossSums(batch.loss_weight.double().sum(), 0, torch.zeros((), dtype=torch.float64), 0)

    got = task_losses(loss_fn, collator, {"doc": docs, "chat": DATA[:3]}, 2, rank=0, world=1, device="cpu")
    assert set(got["doc"]) == {"ar"} and set(got["chat"]) == {"ar", "ar_control", "diffusion", "diffusion_control"}
