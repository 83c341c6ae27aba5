"""AdamW with the paper's settings and its learning-rate schedule.

Weight decay (decoupled, AdamW) applies to every matrix and to nothing one-dimensional: biases (Qwen2's
q/k/v projections have them) and RMSNorm gains are excluded; the (tied) embedding / LM head is decayed.
This is the rule of the Hugging Face Trainer, which the reference implementation trained with, so our
runs match the paper's optimisation. Why not also exempt the embedding, as some recipes do: it is tied to
the LM head, so exempting it exempts the output layer too, and at the paper's lr 2e-5 × wd 0.01 a row
shrinks by 2e-7 of itself per step, which cannot hurt rarely seen rows (the worry behind exempting
embeddings). Norm gains and biases are exempt because decaying them pulls towards 0 rather than towards
"no effect" (a gain of 1), which is a bias, not a regulariser.

The rule is by dimensionality, not by parameter name, so it holds for any architecture and for FSDP2's
DTensor parameters (whose `ndim` is that of the full tensor).

Schedule: linear warmup over ceil(warmup_ratio × total) steps, then cosine decay to 0 at `total` steps,
from transformers (`get_scheduler`), again identical to what the reference ran.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_scheduler

from ttt_model.training.settings import OptimSettings


def split_decay(named_params: Iterable[tuple[str, torch.nn.Parameter]]
                ) -> tuple[list[tuple[str, torch.nn.Parameter]], list[tuple[str, torch.nn.Parameter]]]:
    """(decayed, not decayed) trainable parameters with their names: matrices vs one-dimensional tensors
    (biases, norm gains). A tied weight appears once; frozen parameters are left out."""
    decay: list[tuple[str, torch.nn.Parameter]] = []
    no_decay: list[tuple[str, torch.nn.Parameter]] = []
    seen: set[int] = set()
    for name, p in named_params:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 else no_decay).append((name, p))
    return decay, no_decay


def param_groups(named_params: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """The two AdamW parameter groups: matrices with `weight_decay`, one-dimensional tensors without."""
    decay, no_decay = split_decay(named_params)
    return [{"params": [p for _, p in decay], "weight_decay": weight_decay},
            {"params": [p for _, p in no_decay], "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, cfg: OptimSettings) -> torch.optim.AdamW:
    """AdamW over `model`'s parameters (call after FSDP sharding, so it holds the sharded parameters).

    The fused kernel (CPU and CUDA, plain and DTensor parameters): one pass per parameter instead of a dozen
    foreach ops, 4x faster on the embedded model's 7.7M parameters (0.004 s vs 0.016 s a step, 2 threads)."""
    groups = param_groups(model.named_parameters(), cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=True)


def warmup_steps(total: int, warmup_ratio: float) -> int:
    """ceil(ratio × total), the Hugging Face Trainer's rounding (a tiny run still warms up for one step)."""
    return math.ceil(total * warmup_ratio)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimSettings, total: int) -> LambdaLR:
    """The per-step learning-rate schedule over `total` optimizer steps (stepped once after each step)."""
    return get_scheduler(cfg.schedule, optimizer, num_warmup_steps=warmup_steps(total, cfg.warmup_ratio),
                         num_training_steps=total)


__all__ = ["build_optimizer", "build_scheduler", "param_groups", "split_decay", "warmup_steps"]
