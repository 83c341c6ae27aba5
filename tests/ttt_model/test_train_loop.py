"""The training loop's parts without Ray: data order and grouping, settings, optimizer groups and schedule,
FLOPs accounting, metric sinks, the loop's optimizer step, and a training checkpoint round trip in one gloo
process (one float32 rank: not FSDP-wrapped, as train=cpu runs).
(The whole loop on Ray Train, with failures and resume, is tested in tests/workflows/test_train.py.)"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.distributed as dist
from transformers import Qwen2ForCausalLM

from tokenization.codecs.base import CodecIdentity
from tokenization.sequence import SPAN_ARROW_TYPE, Part, Turn, build_chat, spans_to_pylist
from tokenization.text import load_text_tokenizer
from tokenization.vocab import UnifiedVocab
from ttt_model.core.collator import TtTCollator
from ttt_model.core.loss import LossSums, combine, global_counts
from ttt_model.core.model import build_model
from ttt_model.core.model_checkpoint import load_checkpoint
from ttt_model.core.objective import ObjectiveConfig
from ttt_model.training.data import Prefetcher, arrow_rows, micro_batches, rank_stream, shuffled, step_rows
from ttt_model.training.loop import (
    COMPUTE_DTYPES,
    LossModule,
    batch_shape_stats,
    compile_layers,
    native_bf16,
    optimizer_step,
    shard,
)
from ttt_model.training.optim import build_optimizer, build_scheduler, split_decay, warmup_steps
from ttt_model.training.resume_checkpoint import (
    TrainState,
    load_train_state,
    restore_optimizer,
    restore_rng,
    rng_state,
    save_train_checkpoint,
)
from ttt_model.training.settings import TrainConfigError, parse_settings, steps_per_epoch, total_steps
from ttt_model.training.telemetry import FlopsModel, MetricSinks, StepTimer, format_progress, mfu, read_jsonl

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 1024, "tie_word_embeddings": True}


@pytest.fixture(scope="module")
def vocab() -> UnifiedVocab:
    return UnifiedVocab(load_text_tokenizer(), CodecIdentity("test", "1", 25.0, 512, 16000, 16000, "h"))


def settings(**train: object) -> object:
    base = {"batch": {"unit": "samples", "global_size": 8, "micro_size": 2}, "scaling": {"num_workers": 2},
            "max_tokens": 64, "data": {"shuffle_buffer": 8}}
    for k, v in train.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and k in base else v
    return parse_settings(base)


def table(n: int, length: int = 5) -> pa.Table:
    rng = np.random.default_rng(n)
    ids = [rng.integers(0, 100, length + i % 3).astype(np.int32) for i in range(n)]
    spans = [[{"kind": "text", "start": 0, "end": len(x), "role": "document", "is_target": True,
               "is_final_in_turn": False, "turn": 0}] for x in ids]
    return pa.table({"sample_id": [f"s{i:03d}" for i in range(n)], "input_ids": pa.array(ids, pa.list_(pa.int32())),
                     "spans": pa.array(spans, pa.list_(SPAN_ARROW_TYPE))})


# ---- data ------------------------------------------------------------------------------------------------

def test_arrow_rows_keep_ids_and_spans() -> None:
    t = table(4)
    rows = arrow_rows(t)
    assert [r["sample_id"] for r in rows] == t.column("sample_id").to_pylist()
    for r, ids, spans in zip(rows, t.column("input_ids").to_pylist(), t.column("spans").to_pylist(), strict=True):
        assert r["input_ids"].tolist() == ids and r["spans"] == spans


def test_rank_stream_is_a_seeded_per_epoch_permutation_that_resumes_exactly() -> None:
    s = settings()
    batches = [table(22).slice(0, 7), table(22).slice(7)]  # block boundaries must not matter

    def ids(epoch: int, skip: int = 0, blocks: list[pa.Table] = batches) -> list[str]:
        return [i for step in rank_stream(blocks, s, epoch, 0, skip) for i in step.sample_ids]

    first = ids(0)
    assert first == ids(0) == ids(0, blocks=[table(22)])  # deterministic
    assert len(first) == 20 and len(set(first)) == 20  # 5 steps of 2 micro-batches of 2; 2 rows left over
    assert first != sorted(first)  # shuffled
    assert ids(1) != first and set(ids(1)) <= {f"s{i:03d}" for i in range(22)}  # new order next epoch
    # resume: skipping the rows of consumed steps continues with exactly the same next steps
    assert ids(0, skip=8) == first[8:]
    assert [i for step in rank_stream(batches, s, 0, 1, 0) for i in step.sample_ids] != first  # per-rank stream


def test_shuffle_buffer_is_a_permutation_and_buffer_0_keeps_order() -> None:
    rng = np.random.default_rng(0)
    out = list(shuffled(range(100), 10, rng))
    assert sorted(out) == list(range(100)) and out != list(range(100))
    assert list(shuffled(range(10), 0, rng)) == list(range(10))


def test_micro_batches_by_samples_and_by_token_budget() -> None:
    rows = [{"sample_id": str(i), "input_ids": np.zeros(n)} for i, n in enumerate([5, 9, 3, 40, 8, 2])]
    assert [[r["sample_id"] for r in m] for m in micro_batches(rows, "samples", 4, 32)] == [["0", "1", "2", "3"]]
    # tokens: at most 16 per micro-batch, a sample counted at most max_tokens=16; the trailing rows are dropped
    got = [[r["sample_id"] for r in m] for m in micro_batches(rows, "tokens", 16, 16)]
    assert got == [["0", "1"], ["2"], ["3"]]
    s = settings()
    steps = list(step_rows(iter(rows * 3), s))  # 18 rows -> 4 steps of 2 micro-batches of 2, 2 rows left
    assert len(steps) == 4 and all(len(st.micro) == 2 and st.n_rows == 4 for st in steps)


def test_prefetcher_keeps_order_and_closes_the_source() -> None:
    closed = []

    def source():
        try:
            yield from range(6)
        finally:
            closed.append(True)

    for depth in (0, 2):
        p = Prefetcher(source(), lambda x: x * 10, depth)
        assert [p.next() for _ in range(3)] == [0, 10, 20]
        p.close()
    assert closed == [True, True]
    p = Prefetcher(iter(range(2)), lambda x: x, 1)
    assert [p.next(), p.next(), p.next()] == [0, 1, None]
    p.close()


# ---- settings ------------------------------------------------------------------------------------------

def test_batch_arithmetic_and_config_errors() -> None:
    s = settings()
    assert s.accumulation == 2
    assert steps_per_epoch(s, num_rows=41, clipped_tokens=0) == 5  # 20 rows per rank // (2 x 2)
    assert total_steps(s, 5) == 5 and total_steps(parse_settings({"epochs": 3, "max_steps": 7}), 5) == 7
    with pytest.raises(TrainConfigError, match=r"global_size=10 samples is not divisible by .* = 2 × 2 = 4"):
        settings(batch={"global_size": 10})
    with pytest.raises(TrainConfigError, match="below max_tokens=64"):
        settings(batch={"unit": "tokens", "global_size": 128, "micro_size": 32})
    with pytest.raises(TrainConfigError, match=r"unknown keys \['lrr'\]"):
        parse_settings({"optim": {"lrr": 1}})
    with pytest.raises(TrainConfigError, match="needs backend nccl"):
        parse_settings({"scaling": {"use_gpu": True}})
    with pytest.raises(TrainConfigError, match="row_tokens must be null or at least 2"):
        settings(row_tokens=1)
    tokens = settings(batch={"unit": "tokens", "global_size": 512, "micro_size": 128})
    assert steps_per_epoch(tokens, num_rows=0, clipped_tokens=2048) == 4  # 1024 tokens per rank // 256


# ---- optimizer -------------------------------------------------------------------------------------------

def test_weight_decay_groups_and_schedule(vocab: UnifiedVocab) -> None:
    model = build_model({"init": "random", "config": TINY}, vocab)
    decay, no_decay = split_decay(model.named_parameters())
    decay_names, no_decay_names = {n for n, _ in decay}, {n for n, _ in no_decay}
    assert "model.embed_tokens.weight" in decay_names and "lm_head.weight" not in decay_names | no_decay_names
    assert "model.layers.0.self_attn.q_proj.weight" in decay_names
    assert {"model.layers.0.self_attn.q_proj.bias", "model.layers.0.input_layernorm.weight", "model.norm.weight"} \
        <= no_decay_names
    assert len(decay) + len(no_decay) == len(list(model.parameters()))  # every parameter once (tied head once)
    s = parse_settings({"optim": {"lr": 1e-3, "warmup_ratio": 0.1}})
    opt = build_optimizer(model, s.optim)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0] and opt.defaults["betas"] == (0.9, 0.95)
    sched = build_scheduler(opt, s.optim, total=20)
    lrs = []
    for _ in range(20):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert warmup_steps(20, 0.1) == 2 and lrs[:3] == pytest.approx([0.0, 5e-4, 1e-3])
    assert all(a >= b for a, b in itertools.pairwise(lrs[2:])) and lrs[-1] < 1e-5


# ---- metrics ---------------------------------------------------------------------------------------------

def test_flops_model_counts_the_body_parameters(vocab: UnifiedVocab) -> None:
    model = build_model({"init": "random", "config": TINY}, vocab)
    body = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    f = FlopsModel(model.config)
    assert f.body_params == body
    assert f.step_flops(10, 2, 50) == 6 * body * 10 + 6 * 64 * vocab.padded_size() * 2 + 6 * 2 * 64 * 50
    assert mfu(1e12, 2.0, 2, None) is None and mfu(1e12, 2.0, 2, 1e12) == pytest.approx(0.25)


def test_batch_shape_stats_sums_packed_sample_lengths(vocab: UnifiedVocab) -> None:
    rng = np.random.default_rng(1)
    samples = []
    for i, n in enumerate((6, 10)):
        seq = build_chat(vocab, [Turn("user", [Part.audio(rng.integers(0, 512, n))]),
                                 Turn("assistant", [Part(text=f"reply {i}")])])
        samples.append({"sample_id": f"s{i}", "input_ids": seq.input_ids, "spans": spans_to_pylist(seq.spans)})
    batch = TtTCollator(vocab, ObjectiveConfig(), 64, seed=0)(samples, epoch=0)
    targets, sq = batch_shape_stats(batch)
    lengths = [len(s["input_ids"]) for s in samples]
    assert sq == sum(n * n for n in lengths) and targets == int((batch.loss_kind > 0).sum()) > 0


def test_metric_sinks_rewind_on_resume_and_progress_line(tmp_path: Path) -> None:
    sinks = MetricSinks(tmp_path, resume_step=0, tensorboard=True, mlflow=None)
    m = {"loss": 2.0, "loss_ar": 1.5, "loss_diffusion": 0.5, "lr": 1e-4, "grad_norm": 1.0, "tokens_per_s": 1000.0,
         "padding_fraction": 0.1, "step_s": 0.5, "mfu": 0.42}
    for step in range(1, 5):
        sinks.write(step, {**m, "loss": float(step)})
    sinks.close()
    resumed = MetricSinks(tmp_path, resume_step=2, tensorboard=False, mlflow=None)  # crashed after step 4, ckpt 2
    resumed.write(3, m)
    resumed.close()
    assert [r["step"] for r in read_jsonl(tmp_path)] == [1, 2, 3]
    assert any((tmp_path / "tensorboard").iterdir())
    line = format_progress(3, 10, 0, m, eta_s=75)
    assert "step 3/10" in line and "mfu 42.0%" in line and "eta 0:01:15" in line and "1,000 tok/s" in line
    timer = StepTimer()
    with timer.phase("forward"):
        pass
    assert set(timer.seconds) == {"forward"}


# ---- checkpoint ------------------------------------------------------------------------------------------

@pytest.fixture
def gloo_group(tmp_path: Path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _sample_batches(vocab: UnifiedVocab) -> list:
    rng = np.random.default_rng(2)
    samples = []
    for i in range(3):
        answer = [Part(text="Okay"), Part.audio(rng.integers(0, 512, 12), final=True)]
        seq = build_chat(vocab, [Turn("user", [Part(text=f"Say {i}.")]), Turn("assistant", answer)])
        samples.append({"sample_id": f"s{i}", "input_ids": seq.input_ids, "spans": spans_to_pylist(seq.spans)})
    return [TtTCollator(vocab, ObjectiveConfig(), 64, seed=0)(samples, epoch=0)]


def _trainer(vocab: UnifiedVocab, model_cfg: dict) -> tuple:
    s = parse_settings({"scaling": {"num_workers": 1}, "optim": {"lr": 1e-2, "warmup_ratio": 0.0}})
    module = LossModule(build_model(model_cfg, vocab), None, 1024, False)
    shard(module, s.parallel, torch.device("cpu"))
    opt = build_optimizer(module, s.optim)
    return module, opt, build_scheduler(opt, s.optim, total=10)


def _step(module: LossModule, opt: torch.optim.Optimizer, sched: object, batches: list) -> float:
    n_ar, n_mask = global_counts(batches)
    loss, _, _ = combine(module(batches[0]), n_ar, n_mask)
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()
    return float(loss.detach())


def test_training_checkpoint_round_trip_continues_identically(gloo_group: None, vocab: UnifiedVocab,
                                                              tmp_path: Path) -> None:
    batches = _sample_batches(vocab)
    module, opt, sched = _trainer(vocab, {"init": "random", "config": TINY, "seed": 1})
    _step(module, opt, sched, batches)
    state = TrainState(step=1, epoch=0, step_in_epoch=1, rows_in_epoch=[3], world_size=1, total_steps=10)
    torch.manual_seed(7)
    random.seed(7)
    save_train_checkpoint(tmp_path / "ckpt", module=module, lm_prefix="lm.", lm_config=module.lm.config,
                          optimizer=opt, scheduler=sched, state=state, vocab_manifest=vocab.manifest(), rank=0)
    expected_rng = (torch.rand(3), random.random())
    reference = [_step(module, opt, sched, batches) for _ in range(2)]

    loaded_state, sched_state = load_train_state(tmp_path / "ckpt")
    assert loaded_state == state
    hf = Qwen2ForCausalLM.from_pretrained(tmp_path / "ckpt" / "model")  # plain transformers loads it
    assert hf.get_input_embeddings().weight is hf.get_output_embeddings().weight  # still tied
    load_checkpoint(tmp_path / "ckpt" / "model", vocab.manifest())
    module2, opt2, sched2 = _trainer(vocab, {"init": "pretrained", "path": str(tmp_path / "ckpt" / "model"),
                                             "config": TINY})
    restore_optimizer(tmp_path / "ckpt", module2, opt2)
    sched2.load_state_dict(sched_state)
    assert restore_rng(tmp_path / "ckpt", rank=0) and not restore_rng(tmp_path / "ckpt", rank=1)
    assert torch.equal(torch.rand(3), expected_rng[0]) and random.random() == expected_rng[1]
    assert [_step(module2, opt2, sched2, batches) for _ in range(2)] == reference
    state_files = json.dumps(sorted(p.name for p in (tmp_path / "ckpt").iterdir()))
    assert state_files == json.dumps(["model", "optimizer", "rng"])


def test_one_float32_rank_is_unwrapped_and_the_loop_step_is_a_plain_step(gloo_group: None,
                                                                         vocab: UnifiedVocab) -> None:
    batches = _sample_batches(vocab)
    module, opt, sched = _trainer(vocab, {"init": "random", "config": TINY, "seed": 1})
    assert not any(type(m).__name__.startswith("FSDP") for m in module.modules())
    plain, opt2, sched2 = _trainer(vocab, {"init": "random", "config": TINY, "seed": 1})
    timer = StepTimer()
    losses, counts, norm, finite = optimizer_step(module, opt, sched, batches, 1, 0.0, torch.device("cpu"), timer)
    reference = _step(plain, opt2, sched2, batches)
    assert finite and float(norm) > 0 and set(timer.seconds) == {"forward", "backward", "optimizer"}
    assert float(losses.sum()) == pytest.approx(reference, rel=1e-6)
    assert counts[0] == batches[0].n_tokens and counts[1] == batches[0].n_padding
    for a, b in zip(module.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def _down_proj_dtype(module: LossModule, batch: object) -> tuple[torch.dtype, LossSums]:
    """The dtype the first MLP's output projection computed in, and the loss sums of `batch`."""
    seen: list[torch.dtype] = []
    hook = module.lm.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    try:
        sums = module(batch)
    finally:
        hook.remove()
    return seen[0], sums


def test_one_bf16_rank_is_unwrapped_and_computes_under_autocast(gloo_group: None, vocab: UnifiedVocab) -> None:
    s = parse_settings({"scaling": {"num_workers": 1}, "parallel": {"mixed_precision": "bf16"}})
    batch = _sample_batches(vocab)[0]
    lm = build_model({"init": "random", "config": TINY, "seed": 1}, vocab)
    fp32 = LossModule(copy.deepcopy(lm), None, 1024, False)
    module = LossModule(lm, None, 1024, False, autocast=COMPUTE_DTYPES[s.parallel.mixed_precision])
    assert not shard(module, s.parallel, torch.device("cpu"))  # one rank: FSDP2 would shard nothing
    dtype, sums = _down_proj_dtype(module, batch)
    ref_dtype, ref = _down_proj_dtype(fp32, batch)
    assert (dtype, ref_dtype) == (torch.bfloat16, torch.float32)
    own, base = float((sums.ar_sum + sums.diff_sum).detach()), float(ref.ar_sum + ref.diff_sum)
    assert own != base and own == pytest.approx(base, rel=2e-2)  # bf16 rounding, not another computation
    (sums.ar_sum + sums.diff_sum).backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in module.parameters())  # float32 master


def test_emulated_bf16_on_cpu_is_warned_about(monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert not native_bf16(torch.device("cpu"))
    assert "emulated" in caplog.text and "mixed_precision=null" in caplog.text
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert native_bf16(torch.device("cpu"))


def test_compiled_layers_keep_checkpoint_keys_and_losses(vocab: UnifiedVocab, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    batch = _sample_batches(vocab)[0]
    lm = build_model({"init": "random", "config": TINY, "seed": 1}, vocab)
    eager = LossModule(copy.deepcopy(lm), None, 1024, False)
    assert compile_layers(lm, torch.device("cpu"))
    compiled = LossModule(lm, None, 1024, False)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints unchanged
    for module in (compiled, eager):
        sums = module(batch)
        (sums.ar_sum + sums.diff_sum).backward()
    torch.testing.assert_close(compiled(batch).ar_sum, eager(batch).ar_sum, rtol=1e-4, atol=1e-4)
    for a, b in zip(compiled.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5)

    def no_compiler() -> str:
        raise RuntimeError("no working C++ compiler found")

    monkeypatch.setattr("torch._inductor.cpp_builder.get_cpp_compiler", no_compiler)
    other = build_model({"init": "random", "config": TINY, "seed": 1}, vocab)
    with caplog.at_level(logging.WARNING):
        assert not compile_layers(other, torch.device("cpu"))
    assert "no C++ compiler" in caplog.text and "runs eager" in caplog.text


def test_incomplete_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    with pytest.raises(FileNotFoundError, match="not a complete training checkpoint"):
        load_train_state(tmp_path)
    assert set(rng_state()) >= {"torch", "numpy", "python"}
