"""Training-step benchmark: packed rows with the function-derived mask vs the reference's padded layout.

The same samples (a realistic task mix, 100–1500 tokens each) and the same loss code go through two layouts:

- packed (ours): `TtTCollator(packing=True)` fills rows of `--seq-len` tokens with several samples; the mask
  comes from the span table via `build_attention` once per micro-batch (a bool [B, 1, L, L] tensor for SDPA
  on CPU, a FlexAttention BlockMask on CUDA) and is shared by all layers (`forward_hidden`);
- reference: one sample per row padded to `--seq-len` (2048, as the reference trains), and every forward
  rebuilds a dense additive float mask [B, 1, L, L] from the input ids (bidirectional runs of audio-class
  tokens, causal elsewhere, padded keys masked), handed to SDPA (docs/paper-to-code.md; such a mask rules out flash
  kernels). It is built vectorised here, which is faster than the reference's own construction.

Both run forward + hybrid loss (`hybrid_loss_sums`, LM head only at target positions) + backward over
micro-batches of `--rows` rows; the optimizer step is not timed (identical for both). Noise draws depend only
on each sample's id, so both layouts see identical targets, and their losses agree (reported as a check).

Measured per layout, each in a fresh process: effective (non-pad) tokens/s over all timed micro-batches, and
peak memory of the forward + backward above the state before the first timed step (model, gradients, batch):
- CPU: peak resident set size minus the RSS before the first timed step (Linux: the peak is reset through
  /proc/self/clear_refs, then read as VmHWM), after a tiny warm-up step has allocated the gradients (torch
  keeps no CPU allocator statistics, and tracemalloc does not see tensor memory);
- CUDA: `torch.cuda.max_memory_allocated()` minus `memory_allocated()` before the first timed step (after
  `--warmup` untimed micro-batches, which also compile FlexAttention).

Model FLOPs (useful work only, the same for both layouts, so padding is never counted as work):
    flops = 6 · N · T + 6 · H · V · T_loss + 12 · n_layers · d_attn · P
N: non-embedding parameters; T: non-pad tokens; H · V: the LM head, applied at the T_loss target positions
only; d_attn = n_heads · head_dim; P: (query, key) pairs each sample's mask allows (causal triangle plus the
extra pairs of its bidirectional audio spans). 6 = 2 (multiply-add) × 3 (forward + backward of both inputs);
attention: QKᵀ and AV cost 2 · d_attn per pair each in the forward, twice that in the backward.
MFU = flops / time / peak (`--peak-tflops`, default 989: H100 SXM dense bf16).

Reading the memory numbers: a micro-batch has the same shape in both layouts, but a packed one holds ~4x
the real tokens and targets. With a ~156k-row vocabulary the LM head's float32 logits for one chunk of target
positions (`ttt_model.core.loss`, up to 1024 × V × 4 bytes, plus their gradient) dominate a small model's peak,
so the packed peak per micro-batch is higher while its peak per real token is lower; both maxima per
micro-batch are reported next to it.

    python bench/train_step.py                                   # CPU, small model
    python bench/train_step.py --device cuda --shape qwen2.5-1.5b --dtype bf16 --rows 4 --samples 256
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from tokenization.codecs.base import CodecIdentity
from tokenization.sequence import Part, Turn, build_chat, build_document, spans_to_pylist
from tokenization.text import load_text_tokenizer
from tokenization.vocab import UnifiedVocab
from ttt_model.core.collator import PackedBatch, TtTCollator
from ttt_model.core.loss import combine, hybrid_loss_sums
from ttt_model.core.model import build_model, forward_hidden, lm_head_weight
from ttt_model.core.objective import IGNORE, ObjectiveConfig

ROOT = Path(__file__).resolve().parents[1]
MODEL_CONF = ROOT / "workflows" / "conf" / "model"
LAYOUTS = ("packed", "reference")
_TENSORS = ("input_ids", "position_ids", "doc_ids", "block_ids", "labels", "loss_kind", "loss_weight")
_WORDS = ["the", "of", "and", "to", "in", "is", "it", "that", "was", "for", "on", "are", "with", "they", "at", "be",
          "this", "from", "have", "one", "had", "not", "but", "what", "all", "when", "we", "there", "can", "your",
          "which", "said", "if", "do", "will", "each", "about", "how", "many", "some", "would", "other", "people",
          "water", "long", "little", "very", "after", "words", "called", "just", "where", "most", "know"]
# Task mix: (name, weight). Lengths in tokens; audio at the codec's token rate (12.5–25 codes/s).
_TASKS = (("asr", 0.3), ("tts", 0.3), ("audio_chat", 0.2), ("text_chat", 0.1), ("interleaved", 0.1))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.codebook_size is None:
        args.codebook_size = 4096 if args.shape == "small" else 16384
    # One child process per layout, so the peak memory of one never includes the other's. Forked, not spawned:
    # this process has built nothing and not touched CUDA yet, and a fork does not re-import this script.
    ctx = multiprocessing.get_context("fork")
    results = {}
    for layout in LAYOUTS:
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            results[layout] = pool.submit(measure, layout, vars(args)).result()
    packed, ref = results["packed"], results["reference"]
    report = {
        "name": "train_step",
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "load_average": list(os.getloadavg()), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
        "results": results,
        "speedup_tokens_per_s": packed["tokens_per_s"] / ref["tokens_per_s"],
        "memory_ratio": packed["peak_memory_mb"] / ref["peak_memory_mb"] if ref["peak_memory_mb"] else None,
        "loss_abs_diff": abs(packed["loss"] - ref["loss"]),
        "units": {"tokens_per_s": "non-pad tokens per second (wall)", "*_s": "seconds (wall)",
                  "peak_memory_mb": f"MiB, {packed['memory_method']}", "model_tflops_per_s": "1e12 FLOP/s",
                  "mfu": "fraction of --peak-tflops (CUDA only)"},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for layout in LAYOUTS:
        r = results[layout]
        mfu = f"  MFU {r['mfu']:.1%}" if r["mfu"] is not None else ""
        print(f"{layout:9s} {r['tokens_per_s']:9.1f} tok/s  {r['peak_memory_mb']:8.1f} MiB  padding "
              f"{r['padding_fraction']:.1%}  {r['model_tflops_per_s']:.3f} TFLOP/s{mfu}  loss {r['loss']:.4f}")
    print(f"speedup x{report['speedup_tokens_per_s']:.2f}; wrote {out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench/train_step.json")
    p.add_argument("--device", default="cpu")
    p.add_argument("--shape", default="small", help="a workflows/conf/model preset (small, qwen2.5-1.5b, ...)")
    p.add_argument("--dtype", default="float32", help="parameter dtype: float32 | bf16")
    p.add_argument("--seq-len", type=int, default=2048, help="row length (the reference pads every sample to it)")
    p.add_argument("--rows", type=int, default=1, help="rows per micro-batch (both layouts)")
    p.add_argument("--samples", type=int, default=12, help="samples in the workload")
    p.add_argument("--codebook-size", type=int, default=None,
                   help="audio codes (default: 4096 for small, like the embedded codec; 16384, GLM-4-Voice's, else)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed micro-batches first (default: 2 on CUDA, 0 on CPU)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="device peak for MFU (H100 SXM dense bf16)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p


def measure(layout: str, args: dict[str, Any]) -> dict[str, Any]:
    """Time forward + loss + backward of every micro-batch of one layout (runs in its own process)."""
    torch.set_num_threads(args["threads"])
    device = torch.device(args["device"])
    vocab = UnifiedVocab(load_text_tokenizer(),
                         CodecIdentity("bench", "1", 12.5, args["codebook_size"], 16000, 16000, ""))
    model_cfg = yaml.safe_load((MODEL_CONF / f"{args['shape']}.yaml").read_text())
    arch = model_cfg["config"]
    model_cfg.update(init="random", dtype=args["dtype"], attn_implementation="auto" if layout == "packed" else "sdpa",
                     config={**arch, "max_position_embeddings": max(args["seq_len"], arch["max_position_embeddings"])})
    model = build_model(model_cfg, vocab, device=device).train()
    samples = make_samples(vocab, args["samples"], args["seed"])
    batch = TtTCollator(vocab, ObjectiveConfig(), args["seq_len"], seed=args["seed"],
                        packing=layout == "packed")(samples, epoch=0)
    # Equal-shape micro-batches (the last one topped up with empty rows, as a static-shape trainer does): a
    # new shape would recompile FlexAttention on CUDA, inside the timed region.
    micro = [_pad_rows(_rows(batch, i, i + args["rows"]), args["rows"], vocab.pad_id)
             for i in range(0, batch.input_ids.shape[0], args["rows"])]
    audio_class = _audio_class_lut(vocab, device)

    def step(mb: PackedBatch) -> tuple[float, float]:
        _sync(device)
        start = time.perf_counter()
        mb = mb.to(device)
        if layout == "packed":
            hidden = forward_hidden(model, mb)
        else:
            mask = reference_dense_mask(mb.input_ids, mb.doc_ids >= 0, audio_class, model.dtype)
            hidden = model.model(input_ids=mb.input_ids, position_ids=mb.position_ids, use_cache=False,
                                 attention_mask=dict.fromkeys(model.config.layer_types, mask)).last_hidden_state
        loss, _, _ = combine(hybrid_loss_sums(hidden, lm_head_weight(model), mb), batch.n_ar, batch.n_maskable)
        loss.backward()
        _sync(device)
        return time.perf_counter() - start, float(loss.detach())

    cuda = device.type == "cuda"
    if not cuda:  # allocates gradients and lazy state with tiny activations, so RSS growth is the step's own
        step(_cols(micro[0], 0, min(128, args["seq_len"])))
    for mb in micro[: 2 if args["warmup"] is None and cuda else args["warmup"] or 0]:
        step(mb)
    model.zero_grad(set_to_none=False)
    base_mem = _memory_now(device)
    timed = [step(mb) for mb in micro]
    peak_mb = (_memory_peak(device) - base_mem) / 2**20
    seconds = sum(t for t, _ in timed)
    tokens = batch.n_tokens
    flops = model_flops(model, batch)
    return {
        "layout": layout, "micro_batches": len(micro), "rows": int(batch.input_ids.shape[0]),
        "samples": len(samples), "tokens": tokens, "padding_tokens": batch.n_padding,
        "padding_fraction": 1 - tokens / sum(mb.input_ids.numel() for mb in micro),
        "loss_positions": int((batch.loss_kind > 0).sum()), "time_s": seconds,
        "max_tokens_per_micro_batch": max(int((mb.doc_ids >= 0).sum()) for mb in micro),
        "max_loss_positions_per_micro_batch": max(int((mb.loss_kind > 0).sum()) for mb in micro),
        "tokens_per_s": tokens / seconds, "peak_memory_mb": peak_mb,
        "memory_method": "CUDA max_memory_allocated growth" if cuda else "peak RSS (VmHWM) growth",
        "model_flops": flops, "model_tflops_per_s": flops / seconds / 1e12,
        "mfu": flops / seconds / (args["peak_tflops"] * 1e12) if cuda else None,
        "loss": sum(loss for _, loss in timed),
        "attn_implementation": model.config._attn_implementation,
    }


def reference_dense_mask(input_ids: torch.Tensor, valid: torch.Tensor, audio_class: torch.Tensor,
                         dtype: torch.dtype) -> torch.Tensor:
    """The reference's per-forward mask: additive float [B, 1, L, L], 0 = attend, dtype-min = blocked.

    A run of consecutive audio-class tokens (codes, [M], span markers) is one bidirectional block; all else is
    causal; padded keys are blocked (a query may always see itself, so no softmax row is empty).
    """
    audio = audio_class[input_ids]
    starts = audio & ~torch.nn.functional.pad(audio[:, :-1], (1, 0), value=False)
    run = torch.where(audio, torch.cumsum(starts, dim=1), -1)
    pos = torch.arange(input_ids.shape[1], device=input_ids.device)
    causal = pos[None, :, None] >= pos[None, None, :]
    same_run = (run[:, :, None] == run[:, None, :]) & (run[:, :, None] >= 0)
    allowed = ((causal | same_run) & valid[:, None, :]) | (pos[:, None] == pos[None, :])
    mask = torch.zeros(allowed.shape, dtype=dtype, device=input_ids.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def model_flops(model: torch.nn.Module, batch: PackedBatch) -> float:
    """Useful training FLOPs of one pass over `batch` (see the module docstring)."""
    cfg = model.config
    n_emb = model.get_input_embeddings().weight.numel()
    non_embedding = sum(p.numel() for p in model.parameters()) - n_emb
    if not cfg.tie_word_embeddings:
        non_embedding -= model.get_output_embeddings().weight.numel()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    d_attn = cfg.num_attention_heads * head_dim
    pairs = 0
    for doc, block in zip(batch.doc_ids, batch.block_ids, strict=True):
        for d in doc.unique():
            if d < 0:
                continue
            n = int((doc == d).sum())
            sizes = torch.unique(block[(doc == d) & (block >= 0)], return_counts=True)[1].long()
            pairs += n * (n + 1) // 2 + int((sizes * (sizes - 1) // 2).sum())
    n_loss = int((batch.loss_kind > 0).sum())
    return (6.0 * non_embedding * batch.n_tokens + 6.0 * cfg.hidden_size * cfg.vocab_size * n_loss
            + 12.0 * cfg.num_hidden_layers * d_attn * pairs)


def make_samples(vocab: UnifiedVocab, n: int, seed: int) -> list[dict]:
    """`n` samples of the task mix, each 100–1500 tokens (drawn again until it fits)."""
    rng = np.random.default_rng(seed)
    names, weights = zip(*_TASKS, strict=True)
    out: list[dict] = []
    while len(out) < n:
        task = str(rng.choice(names, p=np.asarray(weights) / sum(weights)))
        seq = _sample(vocab, rng, task)
        if 100 <= len(seq.input_ids) <= 1500:
            out.append({"sample_id": f"{task}-{len(out)}", "input_ids": seq.input_ids,
                        "spans": spans_to_pylist(seq.spans)})
    return out


def _sample(vocab: UnifiedVocab, rng: np.random.Generator, task: str) -> Any:
    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(_WORDS, size=int(rng.integers(lo, hi))))

    def audio(lo: int, hi: int, final: bool = False) -> Part:
        return Part.audio(rng.integers(0, vocab.codebook_size, int(rng.integers(lo, hi))), final=final)

    def spoken_answer(n_chunks: int) -> list[Part]:
        """GLM-4-Voice style: 13 text tokens (~10 words) then 26 codes, repeated; a final variable span."""
        parts = [p for _ in range(n_chunks) for p in (Part(text=text(9, 11)), audio(26, 27))]
        return [*parts, Part(text=text(3, 10)), audio(20, 200, final=True)]

    if task == "asr":
        return build_chat(vocab, [Turn("user", [Part(text=text(4, 10)), audio(100, 700)]),
                                  Turn("assistant", [Part(text=text(10, 120))])])
    if task == "tts":
        return build_chat(vocab, [Turn("user", [Part(text=text(10, 120))]),
                                  Turn("assistant", spoken_answer(int(rng.integers(1, 12))))])
    if task == "audio_chat":
        return build_chat(vocab, [Turn("user", [audio(50, 400)]),
                                  Turn("assistant", spoken_answer(int(rng.integers(1, 10))))])
    if task == "text_chat":
        return build_chat(vocab, [Turn("system", [Part(text=text(5, 20))]), Turn("user", [Part(text=text(10, 200))]),
                                  Turn("assistant", [Part(text=text(50, 700))])])
    parts = [p for _ in range(int(rng.integers(2, 8))) for p in (Part(text=text(8, 40)), audio(17, 150))]
    return build_document(vocab, parts)


def _rows(batch: PackedBatch, lo: int, hi: int) -> PackedBatch:
    return replace(batch, **{f: getattr(batch, f)[lo:hi] for f in _TENSORS})


def _pad_rows(batch: PackedBatch, rows: int, pad_id: int) -> PackedBatch:
    """Top a micro-batch up to `rows` rows with empty ones (all padding, no targets)."""
    extra = rows - batch.input_ids.shape[0]
    if extra == 0:
        return batch
    fill = {"input_ids": pad_id, "position_ids": 0, "doc_ids": -1, "block_ids": -1, "labels": IGNORE,
            "loss_kind": 0, "loss_weight": 0.0}
    return replace(batch, **{f: torch.cat([getattr(batch, f), torch.full_like(getattr(batch, f)[:1], fill[f])
                                           .expand(extra, -1)]) for f in _TENSORS})


def _cols(batch: PackedBatch, lo: int, hi: int) -> PackedBatch:
    return replace(batch, **{f: getattr(batch, f)[:, lo:hi] for f in _TENSORS})


def _audio_class_lut(vocab: UnifiedVocab, device: torch.device) -> torch.Tensor:
    """id -> is an audio-class token (codes, mask, span markers): what the reference treats as audio."""
    lut = torch.zeros(vocab.padded_size(), dtype=torch.bool)
    lut[vocab.audio_offset:vocab.audio_offset + vocab.codebook_size] = True
    lut[[vocab.mask_id, *vocab.opener_ids(), *vocab.closer_ids()]] = True
    return lut.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _memory_now(device: torch.device) -> int:
    """Bytes in use now, after resetting the peak counter."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (the peak RSS) to the current RSS
    return _proc_status("VmRSS")


def _memory_peak(device: torch.device) -> int:
    """Peak bytes in use since `_memory_now`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _proc_status("VmHWM")


def _proc_status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {key}: peak CPU memory needs Linux")


if __name__ == "__main__":
    raise SystemExit(main())
