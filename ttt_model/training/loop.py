"""The per-worker training loop that Ray Train runs on every rank: `train_loop_per_worker({"plan": RunPlan})`.

One code path for CPU and GPU. The model is sharded with FSDP2 (`fully_shard` on every decoder layer, then
on the root), on gloo for CPU workers and NCCL for GPUs; DDP is not used at all. Why FSDP2 on CPU too: the
multi-worker CPU tests then exercise exactly what a 32-GPU run executes (sharding, DTensor gradient clipping,
the full-state gather for the HF checkpoint, DCP optimizer shards, resume), instead of a DDP stand-in whose
checkpoints look different. The price is FSDP's per-layer all-gathers over gloo, which DDP would not need on
CPU (bench/train_scaling.py), and that made 2 single-thread workers no faster than one. So the embedded
`train=cpu` runs ONE worker with both cores' threads, and a single rank is left unwrapped: there FSDP2 shards
nothing and would only copy (`shard`; bench/train_throughput.py measures it). bf16 compute is FSDP2's
MixedPrecisionPolicy across ranks and `torch.autocast` on one unwrapped rank (`LossModule`); the master
weights, optimizer state and checkpoints stay float32 either way.

An optimizer step, on every rank:
1. take the step's rows (all `accumulation` micro-batches) from this rank's deterministic stream and
   collate them all (TtTCollator: strategies, noising, packing), optionally one step ahead in a thread;
2. one all-reduce of (N_AR, N_maskable) over the step's micro-batches and ranks (`loss.global_counts`),
   so the loss is normalised by GLOBAL counts whatever the micro-batch split (docs/paper-to-code.md, weakness 6);
3. per micro-batch: forward, `loss.combine`, backward of loss × world size (FSDP averages gradients over
   ranks; the product makes the accumulated gradient that of the global loss);
4. clip the global gradient norm, AdamW step, scheduler step. A non-finite norm skips the update (logged).
Then one all-reduce of the step's statistics, the metric sinks and progress line on rank 0, and every
`logging.report_every_steps` / `checkpoint.every_steps` a `ray.train.report` (a barrier on all ranks) that
carries the checkpoint when one is due. The run ends with a checkpoint.

Messages go through `logging` rather than `print`, which Ray Train's print patch would echo twice to the
driver (ttt_model.training.telemetry explains how).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from ttt_model.core.collator import PackedBatch, TtTCollator
from ttt_model.core.loss import LossSums, combine, diffusion_vocab, global_counts, hybrid_loss_sums
from ttt_model.core.model import build_model, forward_hidden, lm_head_weight
from ttt_model.core.objective import ObjectiveConfig
from ttt_model.training.data import READ_COLUMNS, Prefetcher, StepRows, rank_stream, training_vocab
from ttt_model.training.optim import build_optimizer, build_scheduler
from ttt_model.training.plan import RunPlan
from ttt_model.training.resume_checkpoint import (
    MODEL_DIR,
    TrainState,
    load_train_state,
    restore_optimizer,
    restore_rng,
    save_train_checkpoint,
)
from ttt_model.training.settings import ParallelSettings
from ttt_model.training.telemetry import (
    FlopsModel,
    MetricSinks,
    MlflowSink,
    StepTimer,
    log_progress,
    mfu,
    peak_flops,
    rewind_jsonl,
)
from ttt_model.training.validation import read_validation_rows, task_losses

logger = logging.getLogger(__name__)

LM_ATTR = "lm"
SAMPLE_TRACE_DIR = "samples"
# train.parallel.mixed_precision -> the autocast dtype of an unwrapped rank
COMPUTE_DTYPES: dict[str | None, torch.dtype | None] = {None: None, "bf16": torch.bfloat16}
# Per-step sums all-reduced across ranks, in this order (one collective per step).
_SUMS = ("loss_ar", "loss_diffusion", "tokens", "padding", "targets", "sum_sq_lengths", "rows", "samples",
         "dropped", "truncated", "banom", "ppm", "sst", "masked", "p_sum")


class LossModule(torch.nn.Module):
    """The language model plus the hybrid loss in one forward, so FSDP2's root hooks gather the (tied)
    embedding / LM head for the loss as well as for the input layer.

    `autocast`: a dtype to compute in under `torch.autocast` (float32 weights and gradients, matmuls and
    attention in that dtype, norms, softmax and the loss's cross-entropy in float32), or None. The loop sets it
    for bf16 on one unwrapped rank, where FSDP2's MixedPrecisionPolicy is not there to cast. On the embedded
    box's AMX cores it runs the small model's training 1.6x faster than float32 end to end (bench/RESULTS.md)."""

    def __init__(self, lm: torch.nn.Module, diffusion_ids: torch.Tensor | None, chunk_size: int,
                 checkpoint: bool, autocast: torch.dtype | None = None) -> None:
        super().__init__()
        self.lm = lm
        self.diffusion_ids, self.chunk_size, self.checkpoint = diffusion_ids, chunk_size, checkpoint
        self.autocast = autocast

    def forward(self, batch: PackedBatch) -> LossSums:
        device_type = lm_head_weight(self.lm).device.type
        with torch.autocast(device_type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
            hidden = forward_hidden(self.lm, batch)
            return hybrid_loss_sums(hidden, lm_head_weight(self.lm), batch, diffusion_ids=self.diffusion_ids,
                                    chunk_size=self.chunk_size, checkpoint=self.checkpoint)


def shard(module: LossModule, parallel: ParallelSettings, device: torch.device) -> bool:
    """FSDP2 full sharding: one unit per decoder layer (its parameters are gathered only while it runs) and
    the root (embedding / LM head, final norm). bf16 compute with float32 gradient reduction when asked
    (MixedPrecisionPolicy).
    Gradients are reduce-scattered after every micro-batch (FSDP2's default), so accumulation holds sharded,
    not full, gradients: the memory of a 3B model's full float32 gradients (12 GB) is never needed.

    One rank is left unwrapped (returns False; bf16 is then `torch.autocast`, see LossModule): there FSDP2
    shards nothing, yet its all-gather / reduce-scatter copies of every unit and the sharded-gradient
    accumulation made the small model's float32 CPU step 43 % slower (the same 3 steps side by side, full
    vocabulary, 2 threads: 18.6 s wrapped, 13.0 s unwrapped, 11.7 s for a bare HF loop). Everything after this
    works on both: DCP state dicts, gradient clipping (plain or DTensor norm) and the loop's collectives on the
    one-rank group."""
    world = dist.get_world_size()
    if world == 1:
        return False
    mesh = init_device_mesh(device.type, (world,))
    if parallel.mixed_precision == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        policy = MixedPrecisionPolicy()
    for layer in module.lm.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=parallel.reshard_after_forward)
    # The root's parameters (embedding = LM head, final norm) are the last used in forward and the first in
    # backward: resharding them in between would only all-gather them again.
    fully_shard(module, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    return True


def compile_layers(lm: torch.nn.Module, device: torch.device) -> bool:
    """`torch.compile` every decoder layer in place (state-dict keys unchanged, so checkpoints are the same) and
    return True; on CPU without a C++ compiler for inductor, warn and leave the model eager (False).

    Per layer, as torchtitan does: the layers share one compiled graph (parameters are graph inputs), so the
    cost is one layer's compile (~15 s cold on 2 cores, seconds from inductor's cache), and the embedding, loss
    and mask code stay eager. On the embedded model (bf16, rows of 320) it fuses the norms, rotary and SwiGLU
    elementwise work: 1.4x the eager step. Before FSDP2 wraps the layers, as torchtitan orders it."""
    if device.type == "cpu":
        try:
            # inductor's own compiler lookup (CXX, then g++), so this check agrees with what compiling will use
            from torch._inductor.cpp_builder import get_cpp_compiler
            get_cpp_compiler()
        except Exception as e:  # whatever the lookup raises, inductor could not build its kernels
            logger.warning("train.parallel.compile: no C++ compiler for inductor on CPU (%s); training runs eager, "
                           "~1.4x slower (install g++ or set CXX)", e)
            return False
    for layer in lm.model.layers:
        layer.compile()
    return True


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively; on a CPU without AVX512-BF16 or AMX (bf16 is then emulated, slower
    than float32) warn and say how to turn it off. The embedded preset's bf16 was measured on AMX cores."""
    if device.type != "cpu" or torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        return True
    logger.warning("train.parallel.mixed_precision=bf16 on a CPU without AVX512-BF16 or AMX: bf16 is emulated and "
                   "likely slower than float32 here; set train.parallel.mixed_precision=null")
    return False


def batch_shape_stats(batch: PackedBatch) -> tuple[int, int]:
    """(target positions, sum over packed samples of length²): the LM-head and attention terms of FlopsModel."""
    targets = int((batch.loss_kind > 0).sum())
    rows, length = batch.doc_ids.shape
    real = batch.doc_ids >= 0
    keys = (torch.arange(rows)[:, None] * length + batch.doc_ids)[real]
    sizes = torch.bincount(keys) if keys.numel() else torch.zeros(0, dtype=torch.long)
    return targets, int((sizes.double() ** 2).sum())


@dataclass
class PreparedStep:
    batches: list[PackedBatch]
    rows: StepRows
    collate_s: float


class TrainWorker:
    """One rank's run: set up (fresh or from the latest checkpoint), loop over steps, checkpoint."""

    def __init__(self, plan: RunPlan, rank: int, world: int, device: torch.device) -> None:
        self.plan, self.s, self.rank, self.world, self.device = plan, plan.settings, rank, world, device
        self.vocab = training_vocab(plan.text_tokenizer, plan.vocab_layout, plan.vocab_manifest)
        self.objective = ObjectiveConfig.from_mapping(plan.objective)
        self.collator = TtTCollator(self.vocab, self.objective, self.s.max_tokens, self.s.seed, self.s.packing,
                                    self.s.row_tokens)
        # Held-out losses are reported unweighted, so curves of runs with different task weights compare.
        self.val_collator = TtTCollator(self.vocab, replace(self.objective, task_weights={}), self.s.max_tokens,
                                        self.s.seed, self.s.packing, self.s.row_tokens)
        self._sync = torch.cuda.synchronize if device.type == "cuda" and self.s.logging.sync_timings else None
        self.log_dir = Path(plan.log_dir)
        self.sinks: MetricSinks | None = None
        self._step_s_ema: float | None = None
        self._last_checkpointed = False

    # ---- setup -------------------------------------------------------------------------------------------

    def setup(self, ckpt_dir: Path | None) -> None:
        """Model, FSDP, optimizer, scheduler and loop state, restored from `ckpt_dir` when given."""
        model_cfg = dict(self.plan.model_cfg)
        if ckpt_dir is not None:
            self.state, sched_state = load_train_state(ckpt_dir)
            if self.state.world_size != self.world:
                raise RuntimeError(f"checkpoint {ckpt_dir} was written by {self.state.world_size} workers, this run "
                                   f"has {self.world}: the data split would differ, resume with the same count")
            model_cfg.update(init="pretrained", path=str(ckpt_dir / MODEL_DIR))
            if self.state.total_steps != self.plan.total_steps and self.rank == 0:
                logger.warning("resuming at step %d: the run's length changed from %d to %d steps, so the lr "
                               "schedule continues on the new horizon", self.state.step, self.state.total_steps,
                               self.plan.total_steps)
            self.state.total_steps = self.plan.total_steps
        else:
            self.state = TrainState(rows_in_epoch=[0] * self.world, world_size=self.world,
                                    total_steps=self.plan.total_steps, seed=self.s.seed)
        lm = build_model(model_cfg, self.vocab, device=self.device)
        if self.s.parallel.activation_checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.s.parallel.compile:
            compile_layers(lm, self.device)
        self.lm_config = lm.config
        self.flops = FlopsModel(lm.config)
        self.peak = peak_flops(self.device, self.s.logging.peak_tflops)
        self.module = LossModule(lm, diffusion_vocab(self.vocab, self.objective), self.s.loss.chunk_size,
                                 self.s.loss.checkpoint)
        self.module.train()
        if not shard(self.module, self.s.parallel, self.device):
            self.module.autocast = COMPUTE_DTYPES[self.s.parallel.mixed_precision]
            if self.rank == 0:
                if self.module.autocast is not None:
                    native_bf16(self.device)
                logger.info("one rank: the model is not wrapped in FSDP2 (it would shard nothing); compute in %s",
                            self.module.autocast or torch.float32)
        self.optimizer = build_optimizer(self.module, self.s.optim)
        self.scheduler = build_scheduler(self.optimizer, self.s.optim, self.plan.total_steps)
        if ckpt_dir is not None:
            restore_optimizer(ckpt_dir, self.module, self.optimizer)
            self.scheduler.load_state_dict(sched_state)
            restore_rng(ckpt_dir, self.rank)
        self._last_checkpointed = ckpt_dir is not None  # nothing new to save until a step runs
        v = self.s.validation
        self.val_rows = (read_validation_rows(self.plan.shard_files, v.fraction, v.max_per_task, READ_COLUMNS)
                         if v.every_steps > 0 else {})
        if self.rank == 0:
            self.sinks = self._open_sinks()
        if self.s.logging.sample_trace:
            self._rewind_trace()

    def _open_sinks(self) -> MetricSinks:
        mlflow = None
        if self.plan.mlflow and os.environ.get("MLFLOW_TRACKING_URI"):
            params = {k: self.plan.config[k] for k in ("seed", "train", "model", "objective") if k in self.plan.config}
            mlflow = MlflowSink(self.s.logging.mlflow_experiment, self.s.name, self.state.mlflow_run_id, params)
            self.state.mlflow_run_id = mlflow.run_id
        return MetricSinks(self.log_dir, self.state.step, self.s.logging.tensorboard, mlflow)

    def _trace_path(self) -> Path:
        return self.log_dir / SAMPLE_TRACE_DIR / f"rank_{self.rank}.jsonl"

    def _rewind_trace(self) -> None:
        self._trace_path().parent.mkdir(parents=True, exist_ok=True)
        rewind_jsonl(self._trace_path(), self.state.step)

    # ---- data ----------------------------------------------------------------------------------------------

    def _collate(self, rows: StepRows, epoch: int) -> PreparedStep:
        start = time.perf_counter()
        batches = [self.collator(micro, epoch) for micro in rows.micro]
        return PreparedStep(batches, rows, time.perf_counter() - start)

    def _epoch_steps(self, shard_it: Any, epoch: int) -> Prefetcher[PreparedStep]:
        """This rank's steps of `epoch`, from its data position (rows consumed before a restore)."""
        skip = self.state.rows_in_epoch[self.rank]
        batches = shard_it.iter_batches(batch_size=self.s.data.read_batch_rows, batch_format="pyarrow",
                                        prefetch_batches=1)
        steps = rank_stream(batches, self.s, epoch, self.rank, skip)
        return Prefetcher(steps, lambda rows: self._collate(rows, epoch), self.s.data.prefetch_steps)

    def _all_ranks(self, ok: bool) -> bool:
        flag = torch.tensor([1 if ok else 0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    # ---- the loop ------------------------------------------------------------------------------------------

    def run(self, shard_it: Any) -> None:
        state, plan = self.state, self.plan
        while state.step < plan.total_steps and state.epoch < self.s.epochs:
            if state.step_in_epoch < plan.steps_per_epoch:
                self._run_epoch(shard_it)
            if state.step < plan.total_steps:
                state.next_epoch()
        if not self._last_checkpointed:
            self._report({}, checkpoint=True)
        if self.sinks is not None:
            self.sinks.close()

    def _run_epoch(self, shard_it: Any) -> None:
        state, plan = self.state, self.plan
        steps = self._epoch_steps(shard_it, state.epoch)
        try:
            while state.step < plan.total_steps and state.step_in_epoch < plan.steps_per_epoch:
                wait_start = time.perf_counter()
                prepared = steps.next()
                if not self._all_ranks(prepared is not None):
                    if self.rank == 0:
                        logger.warning("epoch %d: a rank ran out of data after %d of %d steps; starting the next "
                                       "epoch", state.epoch, state.step_in_epoch, plan.steps_per_epoch)
                    return
                self._inject_fault()
                self._train_step(prepared, time.perf_counter() - wait_start)
        finally:
            steps.close()

    def _inject_fault(self) -> None:
        """Tests only (train.fault_injection): a real process death, once per log directory."""
        fi = self.s.fault_injection
        if fi.step is None or self.rank != fi.rank or self.state.step + 1 != fi.step:
            return
        marker = self.log_dir / f".fault_injected_step_{fi.step}"
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        logger.warning("rank %d: fault injection, exiting the worker process before step %d", self.rank, fi.step)
        os._exit(1)

    def _train_step(self, prepared: PreparedStep, wait_s: float) -> None:
        timer = StepTimer(self._sync)
        timer.seconds["data"] = wait_s
        step_start = time.perf_counter() - wait_s
        lr = self.scheduler.get_last_lr()[0]
        batches = prepared.batches
        losses, counts, grad_norm, finite = optimizer_step(self.module, self.optimizer, self.scheduler, batches,
                                                           self.world, self.s.optim.grad_clip, self.device, timer)
        counts[_SUMS.index("rows") - 2] = prepared.rows.n_rows
        step_s = time.perf_counter() - step_start
        state = self.state
        state.step += 1
        state.step_in_epoch += 1
        state.rows_in_epoch[self.rank] += prepared.rows.n_rows
        totals = torch.cat([losses, counts.to(self.device)])
        dist.all_reduce(totals)
        if self.s.logging.sample_trace:
            self._trace(prepared.rows)
        metrics = self._metrics(totals.cpu(), lr, float(grad_norm), finite, step_s, timer, prepared.collate_s)
        due_ckpt = state.step % self.s.checkpoint.every_steps == 0 or state.step == self.plan.total_steps
        if self.val_rows and (state.step % self.s.validation.every_steps == 0 or state.step == self.plan.total_steps):
            with timer.phase("validation"):
                metrics.update(self._validation())
            metrics["time/validation"] = timer.seconds["validation"]
        due_report = state.step % self.s.logging.report_every_steps == 0
        self._last_checkpointed = False
        if due_ckpt or due_report:
            phase = "checkpoint" if due_ckpt else "report"
            with timer.phase(phase):
                self._report(metrics, checkpoint=due_ckpt)
            metrics[f"time/{phase}"] = timer.seconds[phase]
        if self.sinks is not None and (state.step % self.s.logging.every_steps == 0 or due_ckpt):
            self.sinks.write(state.step, metrics)
            log_progress(state.step, self.plan.total_steps, state.epoch, metrics, self._eta(step_s))

    def _validation(self) -> dict[str, float]:
        """Held-out loss per task (ttt_model/training/validation.py), a collective over all ranks."""
        losses = task_losses(self.module, self.val_collator, self.val_rows, self.s.batch.micro_size, self.rank,
                             self.world, self.device, control=self.s.validation.control)
        return {f"val/{task}/{term}": value for task, terms in losses.items() for term, value in terms.items()}

    def _gather_rows(self) -> list[int]:
        """Every rank's data position (rows consumed this epoch), for the checkpoint (collective)."""
        mine = torch.tensor([self.state.rows_in_epoch[self.rank]], dtype=torch.int64, device=self.device)
        out = [torch.zeros_like(mine) for _ in range(self.world)]
        dist.all_gather(out, mine)
        return [int(t.item()) for t in out]

    def _trace(self, rows: StepRows) -> None:
        with self._trace_path().open("a") as f:
            f.write(json.dumps({"step": self.state.step, "epoch": self.state.epoch, "ids": rows.sample_ids}) + "\n")

    def _metrics(self, totals: torch.Tensor, lr: float, grad_norm: float, finite: bool, step_s: float,
                 timer: StepTimer, collate_s: float) -> dict[str, float]:
        t = dict(zip(_SUMS, totals.tolist(), strict=True))
        samples = max(t["samples"], 1.0)
        flops = self.flops.step_flops(t["tokens"], t["targets"], t["sum_sq_lengths"])
        m: dict[str, float] = {
            "epoch": float(self.state.epoch),
            "loss": t["loss_ar"] + t["loss_diffusion"],
            "loss_ar": t["loss_ar"],
            "loss_diffusion": t["loss_diffusion"],
            "lr": lr,
            "grad_norm": grad_norm,
            "skipped_update": 0.0 if finite else 1.0,
            "step_s": step_s,
            "tokens_per_s": t["tokens"] / step_s,
            "tokens": t["tokens"],
            "samples": t["samples"],
            "padding_fraction": t["padding"] / max(t["tokens"] + t["padding"], 1.0),
            "model_tflops": flops / 1e12,
            "rate/banom": t["banom"] / samples,
            "rate/ppm": t["ppm"] / samples,
            "rate/sst": t["sst"] / samples,
            "rate/truncated": t["truncated"] / samples,
            "data/dropped": t["dropped"],
            "noise/mean_p": t["p_sum"] / samples,
            "noise/masked": t["masked"],
            "time/collate": collate_s,
            **{f"time/{k}": v for k, v in timer.seconds.items()},
        }
        utilisation = mfu(flops, step_s, self.world, self.peak)
        if utilisation is not None:
            m["mfu"] = utilisation
        return m

    def _eta(self, step_s: float) -> float:
        self._step_s_ema = step_s if self._step_s_ema is None else 0.9 * self._step_s_ema + 0.1 * step_s
        return self._step_s_ema * (self.plan.total_steps - self.state.step)

    # ---- checkpoint / report -------------------------------------------------------------------------------

    def _report(self, metrics: dict[str, float], checkpoint: bool) -> None:
        """ray.train.report on every rank (a barrier); with `checkpoint`, each rank stages its part first."""
        import ray.train

        payload = {"step": self.state.step, "epoch": self.state.epoch, **metrics}
        if not checkpoint:
            ray.train.report(payload)
            return
        self.state.rows_in_epoch = self._gather_rows()
        with TemporaryDirectory(prefix="ttt-ckpt-") as tmp:
            save_train_checkpoint(tmp, module=self.module, lm_prefix=f"{LM_ATTR}.", lm_config=self.lm_config,
                                  optimizer=self.optimizer, scheduler=self.scheduler, state=self.state,
                                  vocab_manifest=self.plan.vocab_manifest, rank=self.rank,
                                  objective=self.plan.objective)
            ray.train.report(payload, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint_{self.state.step:08d}")
        self._last_checkpointed = True


def optimizer_step(module: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                   batches: list[PackedBatch], world: int, grad_clip: float, device: torch.device,
                   timer: StepTimer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """One optimizer step over this rank's collated micro-batches (steps 2-4 of the module docstring).

    A function, not a TrainWorker method, so bench/train_throughput.py times exactly what the loop runs.
    Returns (the two loss terms [2] float64 on `device`, this rank's _SUMS counts after the losses with rows
    left 0, the global gradient norm, whether it was finite and the update applied)."""
    n_ar, n_mask = global_counts(batches, device)
    losses = torch.zeros(2, dtype=torch.float64, device=device)  # summed on the device: no sync per micro
    counts = torch.zeros(len(_SUMS) - 2, dtype=torch.float64)
    for batch in batches:
        with timer.phase("forward"):
            loss, loss_ar, loss_diff = combine(module(batch), n_ar, n_mask)
        with timer.phase("backward"):
            (loss * world).backward()
        losses += torch.stack([loss_ar.detach(), loss_diff.detach()]).double()
        counts += torch.tensor(_batch_counts(batch), dtype=torch.float64)
    with timer.phase("optimizer"):
        grad_norm = _clip(module, grad_clip)
        finite = bool(torch.isfinite(grad_norm))
        if finite:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return losses, counts, grad_norm, finite


def _clip(module: torch.nn.Module, grad_clip: float) -> torch.Tensor:
    """Global gradient norm (all shards, all ranks), clipped to grad_clip when > 0."""
    max_norm = grad_clip if grad_clip > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def _batch_counts(batch: PackedBatch) -> list[float]:
    """This micro-batch's entries of _SUMS after the two losses (rows are filled in per step)."""
    targets, sq = batch_shape_stats(batch)
    st = batch.stats
    return [batch.n_tokens, batch.n_padding, targets, sq, 0.0, st["samples"], st["dropped"], st["truncated"],
            st["banom"], st["ppm"], st["sst"], st["masked"], st["p_sum"]]


def _device() -> torch.device:
    """This worker's device; on GPU also made current, so NCCL and FSDP2's device mesh use it."""
    import ray.train.torch

    device = torch.device(ray.train.torch.get_device())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def _checkpoint_dir(ckpt: Any) -> Iterator[Path | None]:
    if ckpt is None:
        yield None
        return
    with ckpt.as_directory() as d:
        yield Path(d)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point (every rank): {"plan": RunPlan} from workflows/train.py."""
    import ray.train

    plan: RunPlan = config["plan"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if plan.settings.scaling.threads_per_worker > 0:
        torch.set_num_threads(plan.settings.scaling.threads_per_worker)
    np.random.seed(plan.settings.seed + rank)
    torch.manual_seed(plan.settings.seed + rank)
    worker = TrainWorker(plan, rank, world, _device())
    with _checkpoint_dir(ray.train.get_checkpoint()) as ckpt_dir:
        worker.setup(ckpt_dir)
    worker.run(ray.train.get_dataset_shard("train"))


__all__ = ["LM_ATTR", "LossModule", "TrainWorker", "batch_shape_stats", "optimizer_step", "shard",
           "train_loop_per_worker"]
