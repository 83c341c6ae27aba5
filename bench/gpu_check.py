"""One-command device check (issue #15): correctness of the fast paths, then training, decoding and codec speed.

Why one script: a GPU is lent to this project rarely and briefly. Everything that can only be verified or measured
on one (FlexAttention kernels, bf16 training, MFU at production shape, decoding latency, codec throughput) runs
from one command, and whatever breaks or hangs costs only its own time budget: every part runs in a child
process that is killed when its budget runs out (a hung kernel or an illegal memory access, which poisons a
CUDA context, cannot stop the parts after it), and is recorded as ok / skipped (with the reason) / failed (with
the error). Parts:

- correctness_attention: on a packed batch with several documents and audio spans (the project's collator),
  the FlexAttention mask (`ttt_model.core.attention.mask_mod_for` / `flex_block_mask`) equals the SDPA boolean
  oracle entry for entry, its block sparsity skips exactly the empty tiles, and `forward_hidden` under
  flex_attention gives the logits of sdpa in fp32 and bf16 (and the same gradients, on CUDA: FlexAttention
  has no CPU backward);
- correctness_sampler: greedy decoding with the KV cache gives the tokens of the full-recompute oracle, for
  every decode mode (ttt, ar, nar), on a batch of prompts of different lengths (float64: see
  tests/ttt_model/test_sampler.py, a greedy tie must not flip between the two paths);
- correctness_train_step: one `ttt_model.training.loop.optimizer_step` (the function the loop runs) in bf16
  autocast and in fp32 from the same weights on the same batch: finite, and loss and gradient norm close;
- training_throughput: the loop's step at production shape (Qwen2.5-1.5B architecture, random weights, the
  production vocabulary, packed rows of 4096 with audio spans, bf16 autocast, flex attention on CUDA, activation
  checkpointing): tokens/s and MFU (`ttt_model.training.telemetry.FlopsModel`, `peak_flops`);
- decode_latency: the TtT sampler after a 512-token prompt, batch 1 and 16: time to the first 26-code audio
  block, audio tokens/s;
- codec_throughput: the GLM-4-Voice tokenizer architecture (production size, random weights): audio seconds
  encoded per second at a batch size.

`--smoke` runs every part with tiny shapes on whatever device exists (small-model throughput; tokenizer subset
vocabulary), well under a minute on CPU: the test's mode. Writes runs/bench/gpu_check.json and .md.

    python bench/gpu_check.py                      # full check on the detected device (CUDA when present)
    python bench/gpu_check.py --smoke              # tiny shapes, < 60 s on CPU
    python bench/gpu_check.py --parts decode_latency codec_throughput --budget decode_latency=300
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import multiprocessing as mp
import os
import platform
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
import yaml
from torch.nn.attention.flex_attention import create_mask

from tokenization.codecs.base import CodecIdentity
from tokenization.codecs.glm4voice import load_codec
from tokenization.codecs.whisper_vq import make_random_whisper_vq
from tokenization.sequence import Part, Turn, build_chat, spans_to_pylist
from tokenization.text import load_text_tokenizer
from tokenization.text_subset import subset_tokenizer
from tokenization.vocab import EOA_FINAL, SOA_FINAL, UnifiedVocab
from ttt_model.core.attention import flex_block_mask, mask_mod_for, sdpa_mask
from ttt_model.core.collator import PackedBatch, TtTCollator
from ttt_model.core.loss import combine
from ttt_model.core.model import build_model, forward_hidden, lm_head_weight
from ttt_model.core.objective import MODES, ObjectiveConfig
from ttt_model.decoding.events import AudioBlock, LogitsContext
from ttt_model.decoding.sampler_config import SamplerConfig
from ttt_model.decoding.ttt_sampler import TtTSampler
from ttt_model.training.loop import LossModule, batch_shape_stats, optimizer_step
from ttt_model.training.optim import build_optimizer, build_scheduler
from ttt_model.training.settings import TrainSettings, parse_settings
from ttt_model.training.telemetry import FlopsModel, StepTimer, mfu, peak_flops

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "workflows" / "conf"
# GLM-4-Voice's tokenizer: 16,384 codes at 12.5 Hz (the production codebook; only its size matters to the LM).
GLM_CODEC = CodecIdentity("glm4voice-bench", "1", 12.5, 16384, 16000, 22050, "")
SMOKE_TEXT_IDS = 1700  # a Qwen BPE subset (as bench/train_throughput.py --quick): the smoke vocabulary stays small
# Tiny decoder for smoke shapes; head_dim 16.
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 4096, "tie_word_embeddings": True}
_WORDS = ["the", "of", "and", "to", "in", "is", "it", "that", "was", "for", "on", "are", "with", "they", "at", "be"]
# Relative tolerances (max |difference| / max |reference|): flex and sdpa differ only by kernel rounding in fp32;
# bf16 rounds every activation to 8 bits of mantissa.
LOGIT_TOL = {"float32": 1e-4, "bfloat16": 3e-2}
GRAD_TOL = {"float32": 1e-3, "bfloat16": 1e-1}
TRAIN_LOSS_TOL, TRAIN_GRAD_NORM_TOL = 2e-2, 1e-1


class Skip(Exception):  # a part's outcome, not an error
    """Raised by a part (or a check inside one) that cannot run on this device; the message is the reason."""


@dataclass(frozen=True)
class Settings:
    """What every part needs; plain data, so it crosses into the part's child process."""

    smoke: bool
    device: str
    seed: int
    threads: int
    peak_tflops: float | None
    throughput_rows: int
    throughput_steps: int


# ---- shared fixtures ------------------------------------------------------------------------------------------


def _vocab(s: Settings) -> UnifiedVocab:
    """Production vocabulary (Qwen BPE + GLM-4-Voice codes) in full mode, a BPE subset with the same codes in smoke."""
    base = load_text_tokenizer()
    return UnifiedVocab(base if not s.smoke else subset_tokenizer(base, range(SMOKE_TEXT_IDS)), GLM_CODEC)


def _arch(name: str, layers: int | None = None) -> dict[str, Any]:
    """The `config` block of a workflows/conf/model preset, optionally with fewer layers (same per-layer shapes)."""
    arch = dict(yaml.safe_load((CONF / "model" / f"{name}.yaml").read_text())["config"])
    if layers is not None:
        arch["num_hidden_layers"] = layers
    return arch


def _model(arch: dict[str, Any], vocab: UnifiedVocab, impl: str, s: Settings, dtype: str = "float32") -> Any:
    """Random weights from the seed, so two builds with different attention implementations hold the same weights."""
    cfg = {"init": "random", "config": arch, "attn_implementation": impl, "dtype": dtype, "seed": s.seed}
    return build_model(cfg, vocab, device=s.device)


def _samples(vocab: UnifiedVocab, n: int, seed: int, codes: tuple[int, int]) -> list[dict[str, Any]]:
    """Speech chats with audio on both sides: a text prompt and user audio, an assistant reply in text and a final
    audio span, so a packed row holds several documents and several bidirectional audio blocks."""
    rng = np.random.default_rng(seed)

    def text() -> Part:
        return Part(text=" ".join(rng.choice(_WORDS, size=int(rng.integers(4, 12)))))

    def audio(final: bool) -> Part:
        return Part.audio(rng.integers(0, vocab.codebook_size, int(rng.integers(*codes))), final=final)

    out = []
    for i in range(n):
        seq = build_chat(vocab, [Turn("user", [text(), audio(False)]), Turn("assistant", [text(), audio(True)])])
        out.append({"sample_id": f"chat-{i}", "input_ids": np.asarray(seq.input_ids, dtype=np.int64),
                    "spans": spans_to_pylist(seq.spans)})
    return out


def _batch(vocab: UnifiedVocab, n: int, max_tokens: int, s: Settings, codes: tuple[int, int]) -> PackedBatch:
    """The project's collator (strategies, noising, packing) over `n` synthetic chats."""
    return TtTCollator(vocab, ObjectiveConfig(), max_tokens, s.seed)(_samples(vocab, n, s.seed, codes), 0)


def _train_settings() -> TrainSettings:
    """The production preset's settings (optimiser, loss chunking), its run paths filled in (they only name dirs)."""
    raw = yaml.safe_load((CONF / "train" / "a100x32.yaml").read_text())
    raw.update(seed=0)
    raw["checkpoint"]["storage_path"] = raw["logging"]["dir"] = tempfile.gettempdir()
    return parse_settings(raw)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, in float64."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _check(value: float, tol: float, **extra: Any) -> dict[str, Any]:
    return {"value": value, "tol": tol, "passed": bool(np.isfinite(value) and value <= tol), **extra}


# ---- part 1: correctness ----------------------------------------------------------------------------------


def correctness_attention(s: Settings) -> dict[str, Any]:
    """FlexAttention vs the SDPA boolean-mask oracle on one packed batch (see the module docstring)."""
    device = torch.device(s.device)
    vocab = _vocab(s)
    # A row length that is no multiple of the 128-token tile: the mask_mod's out-of-range tail is exercised.
    length = 300 if s.smoke else 2000
    batch = _batch(vocab, 6 if s.smoke else 24, length, s, (20, 60) if s.smoke else (60, 200)).to(device)
    rows, docs = batch.doc_ids.shape[0], int((batch.doc_ids.max(dim=1).values + 1).sum())
    blocks = int((batch.block_ids.max(dim=1).values + 1).sum())
    dense = sdpa_mask(batch.doc_ids, batch.block_ids)
    flex_dense = create_mask(mask_mod_for(batch.doc_ids, batch.block_ids), rows, None, length, length, device=device)
    checks: dict[str, Any] = {"mask_equal": {"passed": bool(torch.equal(flex_dense.bool(), dense))}}
    tile = 128
    padded = torch.zeros(rows, 1, -(-length // tile) * tile, -(-length // tile) * tile, dtype=torch.bool, device=device)
    padded[..., :length, :length] = dense
    n = padded.shape[-1] // tile
    tiles = padded.reshape(rows, 1, n, tile, n, tile).any(dim=5).any(dim=3)
    block_mask = flex_block_mask(batch.doc_ids, batch.block_ids, tile)
    checks["block_sparsity_equal"] = {"passed": bool(torch.equal(block_mask.to_dense().bool(), tiles)),
                                      "tiles_computed": int(tiles.sum()), "tiles": int(tiles.numel())}
    # 1.5B per-layer shapes (head_dim 128, GQA 6:1) in full mode, two layers; the tiny model in smoke.
    arch = TINY if s.smoke else _arch("qwen2.5-1.5b", layers=2)
    if device.type == "cpu" and s.smoke:
        reason = ("smoke on CPU: transformers runs flex_attention through torch.compile (an inductor C++ build on "
                  "first call), too slow for a smoke run on a shared CPU, and FlexAttention has no CPU backward; "
                  "full mode tries the fp32 forward on CPU, CUDA checks logits and gradients in fp32 and bf16")
        checks.update({f"logits_{d}": {"skipped": reason} for d in LOGIT_TOL})
    else:
        for dtype in LOGIT_TOL:
            try:
                checks[f"logits_{dtype}"], grads = _flex_vs_sdpa(arch, vocab, batch, dtype, s)
            except Skip as e:
                checks[f"logits_{dtype}"], grads = {"skipped": str(e)}, None
            checks[f"grads_{dtype}"] = grads or {"skipped": "FlexAttention has no CPU backward; gradients on CUDA"}
    return {"rows": rows, "row_length": length, "documents": docs, "audio_blocks": blocks,
            "target_positions": int((batch.loss_kind > 0).sum()), "checks": checks}


def _flex_vs_sdpa(arch: dict[str, Any], vocab: UnifiedVocab, batch: PackedBatch, dtype: str,
                  s: Settings) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Logits at the target positions (and, on CUDA, every parameter gradient of the hybrid loss) of the same
    weights under flex_attention and sdpa."""
    device = torch.device(s.device)
    if dtype == "bfloat16" and device.type == "cpu":
        raise Skip("bf16 FlexAttention on CPU is not a supported inductor path; bf16 checked on CUDA")
    models = {impl: _model(arch, vocab, impl, s, dtype) for impl in ("sdpa", "flex_attention")}
    grad = device.type == "cuda"
    pos = torch.nonzero(batch.loss_kind.reshape(-1) > 0).squeeze(1)[:1024]
    logits, grads = {}, {}
    for impl, model in models.items():
        with torch.set_grad_enabled(grad):
            hidden = forward_hidden(model, batch)
            flat = hidden.reshape(-1, hidden.shape[-1])[pos]
            logits[impl] = (flat @ lm_head_weight(model).T).detach().float()
        if grad:
            module = LossModule(model, None, 4096, False)
            loss, _, _ = combine(module(batch), max(batch.n_ar, 1), max(batch.n_maskable, 1))
            loss.backward()
            grads[impl] = torch.cat([p.grad.reshape(-1).float() for p in model.parameters()])
    out = _check(_rel(logits["flex_attention"], logits["sdpa"]), LOGIT_TOL[dtype], positions=int(pos.numel()))
    if not grad:
        return out, None
    diff = float((grads["flex_attention"] - grads["sdpa"]).norm() / grads["sdpa"].norm())
    return out, _check(diff, GRAD_TOL[dtype], metric="||g_flex - g_sdpa|| / ||g_sdpa||")


def correctness_sampler(s: Settings) -> dict[str, Any]:
    """Greedy cached decoding vs the full-recompute oracle, token for token, per decode mode."""
    device = torch.device(s.device)
    vocab = _vocab(s)
    model = _model(TINY, vocab, "sdpa", s).to(torch.float64).eval()
    rng = np.random.default_rng(s.seed)
    prompts = [build_chat(vocab, [Turn("user", [Part(text=" ".join(rng.choice(_WORDS, size=k))),
                                                Part.audio(rng.integers(0, vocab.codebook_size, 8 * k))])],
                          add_generation_prompt=True).input_ids for k in (3, 5, 8)]
    checks: dict[str, Any] = {}
    for mode in MODES:
        ids: dict[str, list[list[int]]] = {}
        for backend in ("cache", "recompute"):
            cfg = SamplerConfig(block_length=8, steps_per_block=4, max_span=24, max_new_tokens=40, backend=backend,
                                decode=mode)
            ids[backend] = [g.ids for g in TtTSampler(model, vocab, cfg, _span_shape(vocab)).generate(prompts)]
        audio = sum(vocab.audio_offset <= t < vocab.audio_offset + vocab.codebook_size for r in ids["cache"] for t in r)
        checks[mode] = {"passed": ids["cache"] == ids["recompute"], "tokens": sum(map(len, ids["cache"])),
                        "audio_tokens": audio}
    return {"device": str(device), "dtype": "float64", "prompts": len(prompts), "checks": checks}


def _span_shape(vocab: UnifiedVocab) -> Callable[[LogitsContext, torch.Tensor], torch.Tensor]:
    """Random weights rarely open or close spans: force an opener first, keep the closer out of the span until
    max_span (so every block is filled), then end the turn. nar's response logits are left to the model."""
    opener, eos = vocab.id(SOA_FINAL), vocab.eos_id

    def process(ctx: LogitsContext, logits: torch.Tensor) -> torch.Tensor:
        if ctx.mode == "audio":
            return torch.cat([logits[:, :-1], torch.full_like(logits[:, -1:], float("-inf"))], dim=-1)
        if ctx.mode != "text":
            return logits
        out = torch.full_like(logits, float("-inf"))
        out[:, eos if ctx.generated else opener] = 0.0
        return out

    return process


def correctness_train_step(s: Settings) -> dict[str, Any]:
    """One loop step in bf16 autocast vs fp32 from the same weights on the same batch."""
    device = torch.device(s.device)
    vocab = _vocab(s)
    settings = _train_settings()
    arch = TINY if s.smoke else _arch("qwen2.5-1.5b", layers=2)
    batch = _batch(vocab, 6 if s.smoke else 16, 512 if s.smoke else 2048, s, (20, 60) if s.smoke else (60, 200))
    batch = batch.to(device)  # the loss reads the batch where the hidden states are (the loop moves it first too)
    base = _model(arch, vocab, "sdpa", s)
    out: dict[str, Any] = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        module = LossModule(copy.deepcopy(base), None, settings.loss.chunk_size, settings.loss.checkpoint).train()
        optimizer = build_optimizer(module, settings.optim)
        scheduler = build_scheduler(optimizer, settings.optim, 10)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            losses, _, grad_norm, finite = optimizer_step(module, optimizer, scheduler, [batch], 1,
                                                          settings.optim.grad_clip, device, StepTimer())
        out[name] = {"loss": float(losses.sum()), "grad_norm": float(grad_norm), "finite": finite}
    ref = out["fp32"]
    checks = {
        "finite": {"passed": all(v["finite"] and np.isfinite(v["loss"]) for v in out.values())},
        "loss": _check(abs(out["bf16"]["loss"] - ref["loss"]) / abs(ref["loss"]), TRAIN_LOSS_TOL),
        "grad_norm": _check(abs(out["bf16"]["grad_norm"] - ref["grad_norm"]) / ref["grad_norm"], TRAIN_GRAD_NORM_TOL),
    }
    return {"tokens": batch.n_tokens, "rows": int(batch.input_ids.shape[0]), **out, "checks": checks}


# ---- parts 2-4: speed ---------------------------------------------------------------------------------------


def training_throughput(s: Settings) -> dict[str, Any]:
    """tokens/s and MFU of the loop's optimizer step at production shape (small model in smoke)."""
    device = torch.device(s.device)
    vocab = _vocab(s)
    settings = _train_settings()
    cuda = device.type == "cuda"
    # sdpa on CPU: FlexAttention has no CPU backward.
    model = _model(_arch("small" if s.smoke else "qwen2.5-1.5b"), vocab, "flex_attention" if cuda else "sdpa", s)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    module = LossModule(model, None, settings.loss.chunk_size, settings.loss.checkpoint).train()
    optimizer = build_optimizer(module, settings.optim)
    warmup, timed = (1, 1) if s.smoke else (2, s.throughput_steps)
    scheduler = build_scheduler(optimizer, settings.optim, warmup + timed)
    length = 512 if s.smoke else 4096
    # ~330-token chats (smoke ~130): enough of them to fill `throughput_rows` rows.
    per_row = length // (130 if s.smoke else 330)
    codes = (20, 60) if s.smoke else (100, 250)
    batches = [_batch(vocab, per_row * s.throughput_rows, length, s, codes).to(device) for _ in range(warmup + timed)]
    timer = StepTimer(lambda: _sync(device))
    seconds, losses = 0.0, []
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for i, batch in enumerate(batches):
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss, _, _, finite = optimizer_step(module, optimizer, scheduler, [batch], 1, settings.optim.grad_clip,
                                                device, timer)
        _sync(device)
        if i >= warmup:
            seconds += time.perf_counter() - start
        losses.append(float(loss.sum()))
        if not finite:
            raise RuntimeError(f"non-finite gradient norm at step {i}")
    measured = batches[warmup:]
    tokens = sum(b.n_tokens for b in measured)
    shape = [batch_shape_stats(b) for b in measured]
    flops = FlopsModel(model.config).step_flops(tokens, sum(t for t, _ in shape), sum(q for _, q in shape))
    peak = peak_flops(device, s.peak_tflops)
    return {
        "model": "small" if s.smoke else "qwen2.5-1.5b", "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_rows": vocab.padded_size(), "attention": model.config._attn_implementation, "precision": "bf16 autocast",
        "activation_checkpointing": True, "row_length": length, "rows_per_step": int(measured[0].input_ids.shape[0]),
        "timed_steps": timed, "warmup_steps": warmup, "tokens_per_s": tokens / seconds, "step_s": seconds / timed,
        "padding_fraction": sum(b.n_padding for b in measured) / (tokens + sum(b.n_padding for b in measured)),
        "model_tflops_per_s": flops / seconds / 1e12, "peak_tflops": peak / 1e12 if peak else None,
        "mfu": mfu(flops, seconds, 1, peak), "losses": losses,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
    }


def decode_latency(s: Settings) -> dict[str, Any]:
    """Time to the first 26-code audio block after a 512-token prompt (batch 1 and 16), audio tokens/s."""
    device = torch.device(s.device)
    vocab = _vocab(s)
    arch = TINY if s.smoke else _arch("qwen2.5-1.5b")
    model = _model(arch, vocab, "sdpa", s, "float32" if device.type == "cpu" else "bfloat16").eval()
    conf = yaml.safe_load((CONF / "sampler" / "default.yaml").read_text())
    blocks, prompt_len = (1, 64) if s.smoke else (4, 512)
    cfg = SamplerConfig.from_mapping({**conf, "block_length": 26, "max_span": 26 * blocks,
                                      "max_new_tokens": 26 * blocks + 4, "decode": "ttt"})
    sampler = TtTSampler(model, vocab, cfg, _span_shape(vocab))
    rng = np.random.default_rng(s.seed)
    prompt = rng.integers(0, vocab.text.vocab_size - 30, prompt_len).tolist()  # plain BPE ids, no specials
    _timed_decode(sampler, [prompt], device)  # one-off costs (allocator, kernels) out of the timed runs
    results = {f"batch_{b}": _timed_decode(sampler, [prompt] * b, device) for b in ((1, 2) if s.smoke else (1, 16))}
    return {"model": "tiny" if s.smoke else "qwen2.5-1.5b", "dtype": str(model.dtype).removeprefix("torch."),
            "prompt_tokens": prompt_len, "block_length": 26, "steps_per_block": cfg.steps_per_block,
            "span_codes": 26 * blocks, **results}


def _timed_decode(sampler: TtTSampler, prompts: list[list[int]], device: torch.device) -> dict[str, Any]:
    run = sampler.start(prompts)
    _sync(device)
    start = time.perf_counter()
    first: dict[int, float] = {}
    for ev in run:
        if isinstance(ev, AudioBlock) and ev.row not in first:
            first[ev.row] = time.perf_counter() - start
    _sync(device)
    total = time.perf_counter() - start
    done = [g for g in run.results() if g.ids[-2:] == [sampler.vocab.id(EOA_FINAL), sampler.vocab.eos_id]]
    if len(first) != len(prompts) or len(done) != len(prompts):
        raise RuntimeError(f"decode did not take its shape: {len(first)} rows reached audio, {len(done)} closed it")
    return {"first_audio_block_s": min(first.values()), "first_audio_block_all_rows_s": max(first.values()),
            "total_s": total, "audio_tokens": run.stats.audio_tokens,
            "audio_tokens_per_s": run.stats.audio_tokens / total, "forward_passes": run.stats.forward_passes}


def codec_throughput(s: Settings) -> dict[str, Any]:
    """Audio seconds encoded per wall second by the GLM-4-Voice tokenizer architecture, random weights."""
    device = torch.device(s.device)
    shape = ({"d_model": 64, "layers": 2, "heads": 2, "ffn_dim": 128} if s.smoke
             else {"d_model": 1280, "layers": 16, "heads": 20, "ffn_dim": 5120})  # the release's size
    batch, seconds, repeats = (2, 3.0, 1) if s.smoke else (32, 30.0, 3)
    with tempfile.TemporaryDirectory(prefix="gpu-check-codec-") as tmp:
        codec = load_codec({"kind": "glm4voice", "tokenizer_path": str(make_random_whisper_vq(tmp, **shape)),
                            "device": s.device, "dtype": "float32", "batch_size": batch})
        rng = np.random.default_rng(s.seed)
        waves = [(rng.standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32) for _ in range(batch)]
        codes = codec.encode_batch(waves, [16000] * batch)  # warm-up: one-off costs out of the timed runs
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            codes = codec.encode_batch(waves, [16000] * batch)
        _sync(device)
        wall = time.perf_counter() - start
    return {"shape": shape, "dtype": "float32", "batch_size": batch, "clip_s": seconds, "repeats": repeats,
            "codes_per_clip": len(codes[0]), "audio_s_per_s": batch * seconds * repeats / wall,
            "wall_s": wall}


PARTS: dict[str, Callable[[Settings], dict[str, Any]]] = {
    "correctness_attention": correctness_attention,
    "correctness_sampler": correctness_sampler,
    "correctness_train_step": correctness_train_step,
    "training_throughput": training_throughput,
    "decode_latency": decode_latency,
    "codec_throughput": codec_throughput,
}
# Seconds per part: full mode fits one lent GPU session; smoke mode only guards against a hang.
BUDGETS = {"correctness_attention": 150, "correctness_sampler": 60, "correctness_train_step": 90,
           "training_throughput": 240, "decode_latency": 150, "codec_throughput": 120}
SMOKE_BUDGET = 45


# ---- running parts time-boxed ---------------------------------------------------------------------------------


def _child(name: str, s: Settings, conn: Any) -> None:
    """A part in its own process; sends (status, payload) back: result dict, skip reason or traceback."""
    torch.set_num_threads(s.threads)
    try:
        result = PARTS[name](s)
        failed = [k for k, v in result.get("checks", {}).items() if v.get("passed") is False]
        conn.send(("failed", {"result": result, "error": f"checks failed: {failed}"}) if failed
                  else ("ok", {"result": result}))
    except Skip as e:
        conn.send(("skipped", {"reason": str(e)}))
    except BaseException:  # every error of a part is its record; the next part still runs
        conn.send(("failed", {"error": traceback.format_exc(limit=8)[-4000:]}))
    finally:
        conn.close()


def run_part(name: str, s: Settings, budget: float, ctx: Any) -> dict[str, Any]:
    """Run one part in a child process, killed after `budget` seconds (recorded as failed: timed out)."""
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(name, s, send), daemon=True)
    start = time.perf_counter()
    proc.start()
    send.close()
    if recv.poll(budget):
        try:
            status, payload = recv.recv()
        except EOFError:  # killed (out of memory, a signal) before it could answer
            proc.join(5)
            status, payload = "failed", {"error": f"the part's process died without a result (exit {proc.exitcode})"}
    else:
        status, payload = "failed", {"error": f"timed out after {budget:.0f} s (budget)"}
        proc.kill()
    proc.join(5)  # a part that answered only has to exit; one that hangs in teardown is not waited for
    if proc.is_alive():
        proc.kill()
        proc.join()
    return {"status": status, "seconds": time.perf_counter() - start, "budget_s": budget, **payload}


def device_info(device: str) -> dict[str, Any]:
    dev = torch.device(device)
    return {"device": device, "name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
            or platform.machine(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers.__version__, "platform": platform.platform(), "cpu_count": os.cpu_count()}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    s = Settings(smoke=args.smoke, device=device, seed=args.seed, threads=args.threads, peak_tflops=args.peak_tflops,
                 throughput_rows=args.rows, throughput_steps=args.steps)
    budgets = {name: float(SMOKE_BUDGET if args.smoke else BUDGETS[name]) for name in PARTS}
    for item in args.budget:
        name, _, value = item.partition("=")
        if name not in PARTS:
            raise SystemExit(f"--budget {item}: unknown part (one of {', '.join(PARTS)})")
        budgets[name] = float(value)
    # fork is quick (torch is imported once) and safe while this process has not touched CUDA; a CUDA context does
    # not survive a fork, so on CUDA every part starts a fresh interpreter.
    ctx = mp.get_context("spawn" if torch.device(device).type == "cuda" else "fork")
    report = {"name": "gpu_check", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "mode": "smoke" if args.smoke else "full", "settings": asdict(s), "machine": device_info(device),
              "parts": {}, "units": UNITS}
    for name in args.parts or list(PARTS):
        print(f"[gpu_check] {name} (budget {budgets[name]:.0f} s) ...", flush=True)
        report["parts"][name] = part = run_part(name, s, budgets[name], ctx)
        print(f"[gpu_check] {name}: {part['status']} in {part['seconds']:.1f} s", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return 0


UNITS = {"*_s": "seconds (wall)", "*tokens_per_s": "tokens per second (wall; training: non-pad tokens)",
         "audio_s_per_s": "seconds of 16 kHz audio encoded per wall second", "mfu": "model FLOPs / (time x peak)",
         "*tflops*": "10^12 FLOP/s", "peak_memory_gib": "GiB (torch.cuda.max_memory_allocated)",
         "checks.*.value": "relative difference (see each part), compared with tol"}


def markdown(report: dict[str, Any]) -> str:
    """A short human summary: one row per part, the scalar numbers flattened."""
    m = report["machine"]
    lines = [f"# gpu_check ({report['mode']}) — {report['date']}", "",
             f"Device: {m['name']} ({m['device']}), torch {m['torch']}, CUDA {m['cuda']}, transformers "
             f"{m['transformers']}.", "", "| part | status | s | numbers / reason |", "|---|---|---|---|"]
    for name, part in report["parts"].items():
        detail = (part.get("reason") or part.get("error", "") if part["status"] != "ok"
                  else "; ".join(f"{k} {_fmt(v)}" for k, v in _flat(part["result"]).items()))
        if part["status"] == "failed" and "result" in part:
            detail += " — " + "; ".join(f"{k} {_fmt(v)}" for k, v in _flat(part["result"]).items())
        detail = " ".join(str(detail).split()).replace("|", "\\|")
        lines.append(f"| {name} | {part['status']} | {part['seconds']:.1f} | {detail[:1500]} |")
    return "\n".join(lines) + "\n"


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif not isinstance(v, list):
            out[f"{prefix}{k}"] = v
    return out


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench", help="directory for gpu_check.json and gpu_check.md")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on whatever device exists: < 60 s on CPU")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--parts", nargs="+", choices=list(PARTS), help="run only these parts (default: all)")
    p.add_argument("--budget", nargs="*", default=[], metavar="PART=SECONDS", help="override a part's time budget")
    p.add_argument("--rows", type=int, default=4, help="training_throughput: packed rows per step")
    p.add_argument("--steps", type=int, default=5, help="training_throughput: timed steps (full mode)")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 TFLOPS when the device is not known")
    p.add_argument("--threads", type=int, default=2, help="torch threads per part")
    p.add_argument("--seed", type=int, default=0)
    return p


if __name__ == "__main__":
    raise SystemExit(main())
