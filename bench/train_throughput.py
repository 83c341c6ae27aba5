"""Training throughput: the project's per-worker optimizer step vs a bare single-process loop, side by side.

Why: the project's trainer (Ray Train → ttt_model/training/loop.py) once ran 3–4× slower than a plain loop over the
same model on the same cores. This benchmark keeps that gap visible. Both sides train the same model
(workflows/conf/model/small.yaml shapes, same initial weights) on the same packed batches, alternating step by
step in one process, so machine load (the box is shared) hits both sides alike and the ratio is meaningful:

- project: `ttt_model.training.loop.optimizer_step` — the function the real loop calls every step — on a
  `LossModule` passed through `ttt_model.training.loop.shard` on a one-rank gloo group, as `train=cpu` runs (one
  rank: left unwrapped, `project_fsdp2` in the report), in the preset's precision (bf16 autocast) with its
  compiled decoder layers, the project's AdamW, grad clipping and scheduler (`ttt_model.training.optim`) and the
  `train=cpu` loss settings;
- bare: HF `Qwen2ForCausalLM` forward with the same boolean 4-D SDPA mask, in the same precision with the same
  layers compiled, plain cross-entropy at the same target positions with the same weights and normalisers,
  `torch.optim.AdamW` step; no FSDP, no process group.

Batches come from the project's collator (`TtTCollator`: strategies, noising, packing) over synthetic ASR-like
samples (~15 prompt tokens, ~130 audio codes, ~12 transcript tokens), grouped as `train=cpu` groups them (its
micro-batches and accumulation at world size 1; rows of `--row-tokens`, at most `--max-tokens`). Collation is
timed separately (the loop collates before the step). Two vocabularies: the full one (Qwen BPE, 155k+ text
rows) and a ~6k-row one (a BPE subset, the size of the embedded corpus's text subset).

Writes runs/bench/train_throughput.json (tokens/s of both sides, the ratio, padding, per-phase seconds).

    python bench/train_throughput.py            # both vocabularies, 6 timed steps each
    python bench/train_throughput.py --quick    # < 60 s: small vocabulary, 2 timed steps (the smoke test)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml

from tokenization.codecs.base import CodecIdentity
from tokenization.sequence import Part, Turn, build_chat, spans_to_pylist
from tokenization.text import load_text_tokenizer
from tokenization.text_subset import subset_tokenizer
from tokenization.vocab import UnifiedVocab
from ttt_model.core.attention import sdpa_mask
from ttt_model.core.collator import PackedBatch, TtTCollator
from ttt_model.core.loss import global_counts
from ttt_model.core.model import build_model
from ttt_model.core.objective import KIND_AR, KIND_DIFFUSION, ObjectiveConfig
from ttt_model.training.data import step_rows
from ttt_model.training.loop import COMPUTE_DTYPES, LossModule, compile_layers, optimizer_step, shard
from ttt_model.training.optim import build_optimizer, build_scheduler
from ttt_model.training.settings import parse_settings
from ttt_model.training.telemetry import StepTimer

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "workflows" / "conf"
_WORDS = ["the", "of", "and", "to", "in", "is", "it", "that", "was", "for", "on", "are", "with", "they", "at", "be",
          "this", "from", "have", "one", "had", "not", "but", "what", "all", "when", "we", "there", "can", "your"]
# The embedded codec's codebook size (4096 codes); nothing else of the codec matters to training.
_CODEC = CodecIdentity("bench", "1", 50.0, 4096, 16000, 16000, "")
SMALL_TEXT_IDS = 1700  # + byte/special closure and 4096 codes: a ~6k-row unified vocabulary


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    vocabs = ["small"] if args.quick else args.vocab
    steps = 2 if args.quick else args.steps
    settings = _train_settings(args.train_conf, args.max_tokens, args.row_tokens)
    _init_single_rank()
    try:
        results = {name: measure(_vocab(name), settings, steps, args) for name in vocabs}
    finally:
        dist.destroy_process_group()
    report = {
        "name": "train_throughput",
        "config": {**{k: v for k, v in vars(args).items() if k != "out"}, "timed_steps": steps,
                   "max_tokens": settings.max_tokens, "row_tokens": settings.row_tokens,
                   "precision": settings.parallel.mixed_precision or "fp32", "compile": settings.parallel.compile,
                   "accumulation": settings.accumulation,
                   "micro_batch": f"{settings.batch.micro_size} {settings.batch.unit}"},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "load_average": list(os.getloadavg()), "torch": torch.__version__},
        "results": results,
        "units": {"*tokens_per_s": "non-pad tokens per second (wall, step only; collation excluded)",
                  "*_s": "seconds (wall)", "padding_fraction": "pad tokens / row tokens",
                  "ratio": "project tokens/s / bare tokens/s"},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for name, r in results.items():
        print(f"vocab {name} ({r['vocab_rows']} rows): project {r['project_tokens_per_s']:.0f} tok/s, bare "
              f"{r['bare_tokens_per_s']:.0f} tok/s, ratio {r['ratio']:.2f}, padding {r['padding_fraction']:.1%}, "
              f"collate {r['collate_tokens_per_s']:.0f} tok/s")
    print(f"wrote {out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench/train_throughput.json")
    p.add_argument("--quick", action="store_true", help="small vocabulary, 2 timed steps: < 60 s")
    p.add_argument("--vocab", nargs="+", default=["full", "small"], choices=["full", "small"])
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps per side")
    p.add_argument("--threads", type=int, default=2, help="torch threads (both sides)")
    p.add_argument("--train-conf", default="cpu", help="a workflows/conf/train preset: batch and loss settings")
    # The synthetic samples average ~167 tokens (chat template included): three fill a 512-token row (~7 %
    # padding) where train=cpu's 320 suits the embedded shards' ~150-token samples (11 %) but would hold one of
    # these. The row length is part of the workload, not of what is compared.
    p.add_argument("--max-tokens", type=int, default=1408, help="longest sample (overrides the preset's)")
    p.add_argument("--row-tokens", type=int, default=512, help="packed row length (overrides the preset's)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per side first (compiling included)")
    p.add_argument("--seed", type=int, default=0)
    return p


def _train_settings(name: str, max_tokens: int, row_tokens: int) -> Any:
    """The preset's TrainSettings with its interpolations filled in (they only name run paths)."""
    raw = yaml.safe_load((CONF / "train" / f"{name}.yaml").read_text())
    raw.update(seed=0, max_tokens=max_tokens, row_tokens=row_tokens)
    raw["scaling"]["num_workers"] = 1  # one rank does the whole global step
    raw["checkpoint"]["storage_path"] = "/tmp"
    raw["logging"]["dir"] = "/tmp"
    return parse_settings(raw)


def _init_single_rank() -> None:
    """A one-rank gloo group: what FSDP2 and the loop's collectives run on with `train=cpu` (world size 1)."""
    store = Path(tempfile.mkdtemp(prefix="ttt-bench-")) / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)


def _vocab(name: str) -> UnifiedVocab:
    base = load_text_tokenizer()
    if name == "full":
        return UnifiedVocab(base, _CODEC)
    return UnifiedVocab(subset_tokenizer(base, range(SMALL_TEXT_IDS)), _CODEC)


def make_samples(vocab: UnifiedVocab, n: int, seed: int) -> list[dict[str, Any]]:
    """ASR-like chats: a ~15-token text prompt and ~130 audio codes from the user, a ~12-token transcript."""
    rng = np.random.default_rng(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(_WORDS, size=int(rng.integers(lo, hi))))

    out = []
    for i in range(n):
        codes = rng.integers(0, vocab.codebook_size, int(rng.integers(100, 160)))
        seq = build_chat(vocab, [Turn("user", [Part(text=text(8, 16)), Part.audio(codes)]),
                                 Turn("assistant", [Part(text=text(8, 16))])])
        out.append({"sample_id": f"asr-{i}", "input_ids": np.asarray(seq.input_ids, dtype=np.int64),
                    "spans": spans_to_pylist(seq.spans)})
    return out


def _step_batches(vocab: UnifiedVocab, settings: Any, n_steps: int, seed: int) -> tuple[list[list[PackedBatch]], float]:
    """`n_steps` steps of collated micro-batches, grouped as the loop groups rows (world size 1), and the
    collation seconds."""
    # A token-budget preset: every sample has more than 100 tokens, so this many samples always fill a step.
    per_step = settings.batch.global_size if settings.batch.unit == "samples" else settings.batch.global_size // 100
    rows = make_samples(vocab, per_step * n_steps + 1, seed)
    collator = TtTCollator(vocab, ObjectiveConfig(), settings.max_tokens, seed, settings.packing, settings.row_tokens)
    start = time.perf_counter()
    steps = [[collator(micro, 0) for micro in group.micro] for group in step_rows(rows, settings)][:n_steps]
    return steps, time.perf_counter() - start


def measure(vocab: UnifiedVocab, settings: Any, n_timed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Alternate project and bare steps over the same batches; tokens/s of each side and their ratio."""
    steps, collate_s = _step_batches(vocab, settings, args.warmup + n_timed, args.seed)
    model_cfg = yaml.safe_load((CONF / "model" / "small.yaml").read_text())
    model_cfg.update(init="random", attn_implementation="sdpa", seed=args.seed)
    torch.manual_seed(args.seed)
    bare = build_model(model_cfg, vocab).train()
    lm = copy.deepcopy(bare)
    if settings.parallel.compile:
        compile_layers(lm, torch.device("cpu"))
        compile_layers(bare, torch.device("cpu"))
    module = LossModule(lm, None, settings.loss.chunk_size, settings.loss.checkpoint).train()
    fsdp = shard(module, settings.parallel, torch.device("cpu"))
    dtype = COMPUTE_DTYPES[settings.parallel.mixed_precision]
    module.autocast = None if fsdp else dtype
    optimizer = build_optimizer(module, settings.optim)
    scheduler = build_scheduler(optimizer, settings.optim, len(steps))
    o = settings.optim
    bare_opt = torch.optim.AdamW(bare.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                 weight_decay=o.weight_decay)
    seconds = {"project": 0.0, "bare": 0.0}
    phases: dict[str, float] = {}
    first = {"project": 0.0, "bare": 0.0}  # same weights, same batches: the two losses must agree (a check)
    for i, batches in enumerate(steps):
        timed = i >= args.warmup
        timer = StepTimer()
        start = time.perf_counter()
        loss, _, _, _ = optimizer_step(module, optimizer, scheduler, batches, 1, o.grad_clip, torch.device("cpu"),
                                       timer)
        elapsed = time.perf_counter() - start
        if timed:
            seconds["project"] += elapsed
            for k, v in timer.seconds.items():
                phases[k] = phases.get(k, 0.0) + v
        start = time.perf_counter()
        bare_loss = bare_step(bare, bare_opt, batches, dtype)
        if timed:
            seconds["bare"] += time.perf_counter() - start
        if i == 0:
            first = {"project": float(loss.sum()), "bare": bare_loss}
    timed_batches = [b for s in steps[args.warmup:] for b in s]
    tokens = sum(b.n_tokens for b in timed_batches)
    padding = sum(b.n_padding for b in timed_batches)
    all_tokens = sum(b.n_tokens for s in steps for b in s)
    project, bare_tps = tokens / seconds["project"], tokens / seconds["bare"]
    return {
        "vocab_rows": vocab.padded_size(), "timed_steps": n_timed, "project_fsdp2": fsdp,
        "micro_batches_per_step": len(steps[0]), "rows_per_micro_batch": int(steps[0][0].input_ids.shape[0]),
        "tokens_per_step": tokens / n_timed, "padding_fraction": padding / (tokens + padding),
        "project_tokens_per_s": project, "bare_tokens_per_s": bare_tps, "ratio": project / bare_tps,
        "project_s": seconds["project"], "bare_s": seconds["bare"],
        "project_phase_s": phases, "collate_s": collate_s, "collate_tokens_per_s": all_tokens / collate_s,
        "first_step_loss": first,
    }


def bare_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: list[PackedBatch],
              dtype: torch.dtype | None) -> float:
    """Plain accumulation over the micro-batches: HF forward with the 4-D bool mask (under autocast to `dtype`
    when given), CE at the target positions (1/p weights on diffusion targets, each term over its step count),
    backward, AdamW step."""
    n_ar, n_mask = global_counts(batches)
    total = 0.0
    for b in batches:
        mask = sdpa_mask(b.doc_ids, b.block_ids)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            hidden = model.model(input_ids=b.input_ids, position_ids=b.position_ids, use_cache=False,
                                 attention_mask=dict.fromkeys(model.config.layer_types, mask)).last_hidden_state
            kind = b.loss_kind.reshape(-1)
            pos = torch.nonzero(kind > 0).squeeze(1)
            logits = model.lm_head(hidden.reshape(-1, hidden.shape[-1])[pos])
        ce = F.cross_entropy(logits.float(), b.labels.reshape(-1)[pos], reduction="none")
        k = kind[pos]
        scale = torch.where(k == KIND_AR, 1.0 / max(n_ar, 1), b.loss_weight.reshape(-1)[pos] / max(n_mask, 1))
        loss = (ce * scale * ((k == KIND_AR) | (k == KIND_DIFFUSION))).sum()
        loss.backward()
        total += float(loss.detach())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


if __name__ == "__main__":
    raise SystemExit(main())
