"""Inference benchmark: the cached TtT sampler against full-recompute decoding, in both audio attention modes.

Part 1, speed-up (random-weight model of the chosen shape, random text prompts of P tokens): the answer opens
a final audio span at once, fills it to `--span` codes (block-wise diffusion, greedy) and ends. A logits
processor fixes that shape (forces the opener, keeps the closer out of the span, forces <|im_end|> after
it) so every run does the same work: prefill + span_blocks x steps_per_block diffusion steps + one
closing pass + one text step. Per audio attention mode (`--attention`: bidirectional = the paper's span-wide
block; block_causal = blocks of `--block-length`, causal to each other, as a checkpoint trained with
`objective.audio_attention=block_causal` is decoded) and prompt length:

- ours: `TtTSampler` with the ragged KV cache: total time, first-audio-block latency, audio tokens/s,
  forward passes, tokens fed through the model. Bidirectional steps rerun the whole open span; block-causal
  steps run one block (plus, at a block's first step, the finished block it commits);
- oracle: `RecomputeBackend`, the same algorithm re-running the whole sequence for every step (it computes
  the LM head only where a token is chosen, so it isolates what the cache saves). For the prompt lengths
  in `--verify` it runs end to end and its tokens are compared with ours; for the others its time is
  estimated by timing `--samples` of its exact forward passes (evenly spaced over the run: the cost of
  a step depends only on the sequence length, which grows with the step index) and scaling each by the
  number of steps it stands for;
- reference method: like the oracle, but each forward is the full `Qwen2ForCausalLM` call with logits at
  every position over the whole vocabulary, as the reference implementation decodes (always estimated
  the same way, from the first mode's run: its cost does not depend on the mask);
- AR audio baseline: the same number of codes decoded one token per forward pass with the KV cache (what a
  pure autoregressive speech LM does): forward passes, audio tokens/s, time to its first 32 codes.

Part 2, parallel decoding and latency on a trained model (`--checkpoint` + `--codec`, default the embedded
`make run` checkpoint; skipped when absent): spoken answers to a few TTS prompts, decoded with each
`--thresholds` value (none = the fixed `steps_per_block` schedule; a probability = Fast-dLLM's commit-all-above)
in the checkpoint's own attention mode, and in the other mode too (marked `trained: false`: the weights were not
trained for it, so only its costs mean something). Per setting: forward passes and diffusion steps per second
of audio, steps per block, and the time to the first audio block and to its first waveform samples (the
codec's streaming decoder), from the start of decoding. Quality at each threshold needs the evaluation
(e.g. an eval grid with sampler.threshold overrides), not this benchmark.

    python bench/inference.py                       # CPU, small model, P = 256 / 1024 / 4096, both modes
    python bench/inference.py --quick               # a smoke-sized run (P = 64 / 256, span 96, 2 thresholds)
    python bench/inference.py --device cuda --shape qwen2.5-1.5b --dtype bf16 --prompt-lengths 1024
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from tokenization.codecs.base import CodecIdentity
from tokenization.text import load_text_tokenizer
from tokenization.vocab import EOA_FINAL, SOA_FINAL, UnifiedVocab
from ttt_model.core.attention import sdpa_mask
from ttt_model.core.model import build_model
from ttt_model.core.objective import AUDIO_ATTENTION
from ttt_model.decoding.events import AudioBlock, LogitsContext
from ttt_model.decoding.kv_cache import CachedBackend, Chunk
from ttt_model.decoding.sampler_config import SamplerConfig, SamplingParams
from ttt_model.decoding.token_sampling import choose
from ttt_model.decoding.ttt_sampler import TtTSampler

ROOT = Path(__file__).resolve().parents[1]
MODEL_CONF = ROOT / "workflows" / "conf" / "model"
EMBEDDED_CHECKPOINTS = ROOT / "runs" / "local" / "checkpoints" / "ttt-cpu"
EMBEDDED_CODEC = ROOT / "runs" / "local" / "codec" / "embedded"
# What the part-2 prompts ask the model to say (TTS prompts as the evaluation builds them).
TTS_TEXTS = (
    "The weather is nice today.",
    "Please call me back when you have a moment.",
    "Seven small boats sailed across the quiet lake before sunrise.",
)
QUICK = {"prompt_lengths": [64, 256], "span": 96, "samples": 3, "verify": [64], "thresholds": ["none", "0.7"],
         "tts_prompts": 1, "embedded_max_new": 160}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(**QUICK)  # smaller defaults; options given explicitly still win
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    vocab = UnifiedVocab(load_text_tokenizer(),
                         CodecIdentity("bench", "1", 12.5, args.codebook_size, 16000, 22050, ""))
    model_cfg = yaml.safe_load((MODEL_CONF / f"{args.shape}.yaml").read_text())
    max_pos = max(int(model_cfg["config"].get("max_position_embeddings", 0)), max(args.prompt_lengths) + args.span + 8)
    model_cfg.update(init="random", dtype=args.dtype, attn_implementation="sdpa",
                     config={**model_cfg["config"], "max_position_embeddings": max_pos})
    model = build_model(model_cfg, vocab, device=device).eval()
    cfg = SamplerConfig(block_length=args.block_length, steps_per_block=args.steps_per_block, max_span=args.span,
                        max_new_tokens=args.span + 8)
    _warm_up(model, vocab, cfg, args.attention, device)
    results = [_one_length(model, vocab, cfg, p, args, device) for p in args.prompt_lengths]
    embedded = _embedded(args, device)
    report = {
        "name": "inference",
        "config": {"shape": args.shape, "dtype": args.dtype, "device": str(device), "threads": args.threads,
                   "codebook_size": args.codebook_size, "vocab_rows": vocab.padded_size(),
                   "block_length": args.block_length, "steps_per_block": args.steps_per_block,
                   "span_tokens": args.span, "samples": args.samples, "verify": args.verify,
                   "attention": args.attention, "quick": args.quick,
                   "parameters": sum(p.numel() for p in model.parameters())},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "load_average": list(os.getloadavg()), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "results": results,
        "embedded": embedded,
        "units": {"*_s": "seconds (wall)", "cpu_s": "seconds of process CPU time",
                  "*_per_s": "tokens per second (wall)", "*_per_audio_s": "per second of generated audio"},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    _print_summary(results, embedded)
    print(f"wrote {out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench/inference.json")
    p.add_argument("--device", default="cpu")
    p.add_argument("--shape", default="small", help="a workflows/conf/model preset (small, qwen2.5-1.5b, ...)")
    p.add_argument("--dtype", default="float32", help="float32 | bf16 | fp16")
    p.add_argument("--prompt-lengths", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--span", type=int, default=640, help="audio codes in the span (the paper's max span)")
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--steps-per-block", type=int, default=10)
    p.add_argument("--attention", nargs="+", choices=AUDIO_ATTENTION, default=list(AUDIO_ATTENTION),
                   help="audio attention modes to decode with (part 1)")
    p.add_argument("--codebook-size", type=int, default=16384, help="audio codes (GLM-4-Voice: 16384)")
    p.add_argument("--samples", type=int, default=8, help="timed oracle/reference forwards per estimate")
    p.add_argument("--verify", type=int, nargs="*", default=[256],
                   help="prompt lengths where the oracle runs end to end and tokens are compared")
    p.add_argument("--checkpoint", default=None,
                   help="part 2: a trained TtT checkpoint dir (default: the newest embedded `make run` checkpoint)")
    p.add_argument("--codec", default=str(EMBEDDED_CODEC), help="part 2: the embedded codec dir the checkpoint uses")
    p.add_argument("--thresholds", nargs="+", default=["none", "0.9", "0.7", "0.5", "0.3", "0.1"],
                   help="part 2: `none` (fixed steps per block) or confidence thresholds")
    p.add_argument("--tts-prompts", type=int, default=len(TTS_TEXTS), help="part 2: how many prompts per setting")
    p.add_argument("--embedded-max-new", type=int, default=700, help="part 2: token budget per answer")
    p.add_argument("--quick", action="store_true", help=f"smoke-sized defaults: {QUICK}")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p


def attention_objective(mode: str, block_length: int) -> dict[str, Any] | None:
    """The objective record (objective.json) a checkpoint trained with audio attention `mode` carries; the
    sampler decodes as it says. None for the paper's bidirectional spans (what an unrecorded checkpoint means)."""
    if mode == "bidirectional":
        return None
    return {"mode": "ttt", "audio_attention": mode, "audio_block": block_length}


def span_shape_processor(vocab: UnifiedVocab) -> Callable[[LogitsContext, torch.Tensor], torch.Tensor]:
    """Force: opener first, no closer inside the span (so it reaches max_span), <|im_end|> after it."""
    opener, eos = vocab.id(SOA_FINAL), vocab.eos_id

    def process(ctx: LogitsContext, logits: torch.Tensor) -> torch.Tensor:
        if ctx.mode == "audio":
            return torch.cat([logits[:, :-1], torch.full_like(logits[:, -1:], float("-inf"))], dim=-1)
        forced = eos if ctx.generated else opener
        out = torch.full_like(logits, float("-inf"))
        out[:, forced] = 0.0
        return out

    return process


class _Recorder:
    """Wraps a backend and keeps every chunk it ran (with a copy of its ids), to replay for estimates."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.chunks: list[Chunk] = []

    def run(self, chunks: Sequence[Chunk]) -> list[torch.Tensor]:
        self.chunks += [Chunk(c.row, list(c.ids), np.array(c.blocks), c.keep, c.last_only) for c in chunks]
        return self.inner.run(chunks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Clock:
    """Wall and process CPU time since start. On a shared CPU the wall clock includes time other processes
    took, so both are reported; on CUDA only the wall time (after a device sync) means anything."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        _sync(device)
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        _sync(self.device)
        return time.perf_counter() - self.wall0, time.process_time() - self.cpu0


def _timed_run(sampler: TtTSampler, prompt: list[int], device: torch.device,
               record: bool) -> tuple[dict[str, Any], list[int], list[Chunk]]:
    run = sampler.start([prompt])
    recorder = _Recorder(run.backend) if record else None
    if recorder is not None:
        run.backend = recorder
    clock = _Clock(device)
    first_block = None
    for ev in run:
        if isinstance(ev, AudioBlock) and first_block is None:
            first_block = clock.read()[0]
    total, cpu = clock.read()
    gen = run.results()[0]
    stats = run.stats
    info = {"total_s": total, "cpu_s": cpu, "first_audio_block_s": first_block, "audio_tokens": stats.audio_tokens,
            "audio_tokens_per_s": stats.audio_tokens / total, "forward_passes": stats.forward_passes,
            "tokens_processed": stats.tokens_processed, "diffusion_steps": stats.diffusion_steps,
            "finish_reason": gen.finish_reason}
    return info, gen.ids, recorder.chunks if recorder is not None else []


def _replay_costs(model: torch.nn.Module, prompt_len: int, chunks: Sequence[Chunk], samples: int,
                  device: torch.device, reference: bool) -> dict[str, Any]:
    """Estimated full-recompute time for the run `chunks` came from, for the oracle and (`reference`) the
    reference method.

    Rebuilds the full sequence each sampled chunk would see (kept chunk tokens before it + itself) and
    times one forward of each kind on it.
    """
    n = len(chunks)
    picks = sorted({round(x) for x in np.linspace(0, n - 1, min(samples, n))})
    bounds = [0, *[(a + b + 1) // 2 for a, b in itertools.pairwise(picks)], n]
    oracle = np.zeros(2)
    ref = np.zeros(2)
    tokens, blocks, n_blocks, lengths = [], [], 0, []
    committed_at: list[tuple[list[int], list[int], int]] = []
    for c in chunks:
        committed_at.append((tokens, blocks, n_blocks))
        local = np.asarray(c.blocks)
        chunk_blocks = np.where(local >= 0, local + n_blocks, -1).tolist()
        lengths.append(len(tokens) + len(c))
        if c.keep:
            tokens, blocks = tokens + list(c.ids)[: c.keep], blocks + chunk_blocks[: c.keep]
            n_blocks += int(local[: c.keep].max(initial=-1)) + 1
    for k, i in enumerate(picks):
        tok, blk, nb = committed_at[i]
        c = chunks[i]
        local = np.asarray(c.blocks)
        ids = torch.tensor([tok + list(c.ids)], device=device)
        blocks_t = torch.tensor([blk + np.where(local >= 0, local + nb, -1).tolist()], device=device)
        weight = bounds[k + 1] - bounds[k]
        oracle += weight * _time_forward(model, ids, blocks_t, full_logits=False, device=device)
        if reference:
            ref += weight * _time_forward(model, ids, blocks_t, full_logits=True, device=device)
    return {"oracle": oracle.tolist(), "reference": ref.tolist() if reference else None, "forward_passes": n,
            "tokens_processed": int(sum(lengths)), "sampled_forwards": len(picks), "prompt_tokens": prompt_len}


def _time_forward(model: torch.nn.Module, ids: torch.Tensor, blocks: torch.Tensor, full_logits: bool,
                  device: torch.device) -> np.ndarray:
    """(wall, cpu) seconds of one full-sequence forward, as the oracle (hidden states) or the reference
    (`Qwen2ForCausalLM` logits at every position) runs it."""
    mask = dict.fromkeys(model.config.layer_types, sdpa_mask(torch.zeros_like(ids), blocks))
    positions = torch.arange(ids.shape[1], device=device)[None]
    with torch.inference_mode():
        clock = _Clock(device)
        if full_logits:
            model(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=False)
        else:
            model.model(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=False)
        return np.array(clock.read())


def _ar_audio_baseline(model: torch.nn.Module, vocab: UnifiedVocab, prompt: list[int], n_codes: int,
                       block_length: int, device: torch.device) -> dict[str, Any]:
    """Pure AR decoding of `n_codes` audio tokens with the KV cache (one forward per token, causal)."""
    backend = CachedBackend(model, 1, vocab.pad_id)
    head = model.get_output_embeddings().weight[vocab.audio_offset : vocab.audio_offset + vocab.codebook_size]
    greedy = SamplingParams()
    with torch.inference_mode():
        clock = _Clock(device)
        first_block = None
        ids = [*prompt, vocab.id(SOA_FINAL)]
        h = backend.run([Chunk(0, ids, np.full(len(ids), -1), keep=len(ids), last_only=True)])[0]
        for i in range(n_codes):
            code = int(choose(torch.nn.functional.linear(h[None], head).float(), greedy, None)[0][0])
            if i + 1 == block_length:
                first_block = clock.read()[0]
            if i + 1 < n_codes:
                tok = [vocab.audio_offset + code]
                h = backend.run([Chunk(0, tok, np.full(1, -1), keep=1, last_only=True)])[0]
        total, cpu = clock.read()
    return {"total_s": total, "cpu_s": cpu, "first_audio_block_s": first_block, "audio_tokens_per_s": n_codes / total,
            "forward_passes": backend.forward_passes}


def _warm_up(model: torch.nn.Module, vocab: UnifiedVocab, cfg: SamplerConfig, modes: Sequence[str],
             device: torch.device) -> None:
    """One short run of each path first: the first forward passes pay one-off costs (allocator, kernels)."""
    short = {**cfg.__dict__, "max_span": 2 * cfg.block_length, "max_new_tokens": 2 * cfg.block_length + 4}
    prompt = list(range(1000, 1064))
    for mode, backend in itertools.product(modes, ("cache", "recompute")):
        sampler = TtTSampler(model, vocab, SamplerConfig(**{**short, "backend": backend}), span_shape_processor(vocab),
                             objective=attention_objective(mode, cfg.block_length))
        _timed_run(sampler, prompt, device, record=False)


def _one_length(model: torch.nn.Module, vocab: UnifiedVocab, cfg: SamplerConfig, prompt_len: int,
                args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed + prompt_len)
    prompt = rng.integers(0, vocab.text.vocab_size - 30, prompt_len).tolist()  # plain BPE ids, no specials
    process = span_shape_processor(vocab)
    modes: dict[str, dict[str, Any]] = {}
    reference: dict[str, Any] | None = None
    for mode in args.attention:
        objective = attention_objective(mode, cfg.block_length)
        ours, our_ids, chunks = _timed_run(TtTSampler(model, vocab, cfg, process, objective=objective), prompt,
                                           device, record=True)
        assert our_ids[-1] == vocab.eos_id and our_ids[-2] == vocab.id(EOA_FINAL), "workload did not take its shape"
        estimate = _replay_costs(model, prompt_len, chunks, args.samples, device, reference=reference is None)
        if reference is None:
            reference = {"total_s": estimate["reference"][0], "cpu_s": estimate["reference"][1], "measured": False,
                         "sampled_forwards": estimate["sampled_forwards"], "from_mode": mode}
        oracle = {"total_s": estimate["oracle"][0], "cpu_s": estimate["oracle"][1], "measured": False,
                  "forward_passes": estimate["forward_passes"],
                  "tokens_processed": estimate["tokens_processed"], "tokens_equal": None,
                  "sampled_forwards": estimate["sampled_forwards"]}
        if prompt_len in args.verify:
            recompute = SamplerConfig(**{**cfg.__dict__, "backend": "recompute"})
            measured, oracle_ids, _ = _timed_run(TtTSampler(model, vocab, recompute, process, objective=objective),
                                                 prompt, device, False)
            oracle.update(total_s=measured["total_s"], cpu_s=measured["cpu_s"], measured=True,
                          estimated_s=estimate["oracle"][0], estimated_cpu_s=estimate["oracle"][1],
                          forward_passes=measured["forward_passes"], tokens_processed=measured["tokens_processed"],
                          tokens_equal=oracle_ids == our_ids)
        modes[mode] = {
            "ours": ours,
            "oracle": oracle,
            "speedup_vs_oracle": oracle["total_s"] / ours["total_s"],
            "speedup_vs_oracle_cpu": oracle["cpu_s"] / ours["cpu_s"],
            "speedup_vs_reference": reference["total_s"] / ours["total_s"],
            "speedup_vs_reference_cpu": reference["cpu_s"] / ours["cpu_s"],
        }
    assert reference is not None
    n_codes = next(iter(modes.values()))["ours"]["audio_tokens"]
    baseline = _ar_audio_baseline(model, vocab, prompt, n_codes, cfg.block_length, device)
    for m in modes.values():
        m["forward_passes_vs_ar_audio"] = m["ours"]["forward_passes"] / baseline["forward_passes"]
    return {"prompt_tokens": prompt_len, "modes": modes, "reference_method": reference, "ar_audio_baseline": baseline}


# ---- part 2: a trained model, thresholds and latency ---------------------------------------------------


def _newest_checkpoint(root: Path) -> Path | None:
    found = sorted(root.glob("checkpoint_*/model"))
    return found[-1] if found else None


def _embedded(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Part 2 (see the module docstring), or why it was skipped."""
    from pipelines.tasks import prompt_for
    from tokenization.codecs import build_codec
    from ttt_model.decoding.speech_lm import Message, SpeechLM, build_prompt

    checkpoint = Path(args.checkpoint) if args.checkpoint else _newest_checkpoint(EMBEDDED_CHECKPOINTS)
    if checkpoint is None or not checkpoint.is_dir() or not Path(args.codec).is_dir():
        return {"skipped": f"no checkpoint ({checkpoint}) or codec ({args.codec}): train one with `make run`"}
    lm = SpeechLM.load(checkpoint, build_codec({"kind": "embedded", "path": args.codec}), device=device)
    prompts = [build_prompt(lm, [Message("user", text=prompt_for("tts", "en", f"bench-{i}").format(text=text))])
               for i, text in enumerate(TTS_TEXTS[: args.tts_prompts])]
    trained = (lm.objective or {}).get("audio_attention", "bidirectional")
    block = int((lm.objective or {}).get("audio_block", 32))
    settings = []
    for mode in (trained, *(m for m in AUDIO_ATTENTION if m != trained)):
        objective = {**(lm.objective or {"mode": "ttt"}), "audio_attention": mode, "audio_block": block}
        for threshold in args.thresholds:
            cfg = SamplerConfig(block_length=block, steps_per_block=args.steps_per_block,
                                max_new_tokens=args.embedded_max_new,
                                threshold=None if threshold == "none" else float(threshold))
            runs = [_stream(lm, prompt, cfg, objective, device) for prompt in prompts]
            settings.append({"attention": mode, "trained": mode == trained, "threshold": cfg.threshold,
                             **_summarise(runs, lm.codec.identity.token_rate, block), "runs": runs})
    return {"checkpoint": str(checkpoint), "objective": lm.objective, "codec": args.codec,
            "codes_per_audio_s": lm.codec.identity.token_rate, "prompts": len(prompts), "settings": settings}


def _stream(lm: Any, prompt: list[int], cfg: SamplerConfig, objective: dict[str, Any],
            device: torch.device) -> dict[str, Any]:
    """One answer decoded as `generate_stream` would: times from the start of decoding to the first audio block
    and to the first waveform samples the codec's streaming decoder returns for it."""
    run = TtTSampler(lm.model, lm.vocab, cfg, objective=objective).start([prompt])
    decoder = lm.codec.stream_decoder()
    clock = _Clock(device)
    first_block = first_wave = None
    for ev in run:
        if not isinstance(ev, AudioBlock):
            continue
        if first_block is None:
            first_block = clock.read()[0]
        if decoder.push(ev.codes).size and first_wave is None:
            first_wave = clock.read()[0]
    total, _ = clock.read()
    gen, stats = run.results()[0], run.stats
    return {"total_s": total, "first_audio_block_s": first_block, "first_waveform_s": first_wave,
            "audio_tokens": stats.audio_tokens, "spans": stats.spans, "forward_passes": stats.forward_passes,
            "diffusion_steps": stats.diffusion_steps, "finish_reason": gen.finish_reason}


def _summarise(runs: Sequence[dict[str, Any]], codes_per_s: float, block: int) -> dict[str, Any]:
    """Totals over the prompts of one setting, per second of generated audio (None where no audio came out)."""
    audio_s = sum(r["audio_tokens"] for r in runs) / codes_per_s
    blocks = sum(-(-r["audio_tokens"] // block) for r in runs)

    def per_audio_s(key: str) -> float | None:
        return sum(r[key] for r in runs) / audio_s if audio_s else None

    def median(key: str) -> float | None:
        values = [r[key] for r in runs if r[key] is not None]
        return float(np.median(values)) if values else None

    return {"audio_s": audio_s, "forward_passes_per_audio_s": per_audio_s("forward_passes"),
            "diffusion_steps_per_audio_s": per_audio_s("diffusion_steps"),
            "steps_per_block": sum(r["diffusion_steps"] for r in runs) / blocks if blocks else None,
            "wall_s_per_audio_s": per_audio_s("total_s"), "first_audio_block_s": median("first_audio_block_s"),
            "first_waveform_s": median("first_waveform_s")}


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _print_summary(results: Sequence[dict[str, Any]], embedded: dict[str, Any]) -> None:
    for r in results:
        for mode, m in r["modes"].items():
            ours, oracle = m["ours"], m["oracle"]
            print(f"P={r['prompt_tokens']:5d} {mode:13s} ours {ours['total_s']:.2f}s  oracle {oracle['total_s']:.2f}s "
                  f"({'measured' if oracle['measured'] else 'estimated'}, tokens equal: {oracle['tokens_equal']})  "
                  f"x{m['speedup_vs_oracle']:.1f} (cpu x{m['speedup_vs_oracle_cpu']:.1f})  reference "
                  f"x{m['speedup_vs_reference']:.1f}  first audio block {ours['first_audio_block_s']:.3f}s  "
                  f"{ours['forward_passes']} passes, {ours['tokens_processed']} tokens")
    if "skipped" in embedded:
        print(f"part 2 skipped: {embedded['skipped']}")
        return
    for st in embedded["settings"]:
        print(f"{st['attention']:13s} trained={st['trained']!s:5s} threshold={st['threshold']!s:4s}  "
              f"audio {st['audio_s']:.1f}s  passes/audio-s {_fmt(st['forward_passes_per_audio_s'], '.1f')}  "
              f"steps/block {_fmt(st['steps_per_block'], '.2f')}  first block {_fmt(st['first_audio_block_s'], '.3f')}s"
              f"  first waveform {_fmt(st['first_waveform_s'], '.3f')}s")


if __name__ == "__main__":
    raise SystemExit(main())
