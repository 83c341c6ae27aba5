"""Training targets and noising for TtT and the two baselines of the paper (Table 1).

Alignment: next-token aligned everywhere (Dream style). The logits at position i predict token i + 1 —
for text (autoregressive) and for masked audio (diffusion) alike. Why:
- the pretrained LM head keeps its meaning (it was trained to predict the next token), so a Qwen
  initialisation starts from a sensible audio/text head instead of having to relearn "predict myself";
- every position has AT MOST ONE target. The reference let masked audio predict the SAME position and
  text the NEXT one, so a masked end marker followed by text got two targets on one logit.

For an audio span [s, e) = [opener, codes..., closer] of a target turn (TtT mode):
- the opener (token s) is an AR target, predicted by position s - 1 (causal), as at inference where
  text decoding emits the opener and then switches to diffusion;
- tokens s + 1 .. e - 1 (codes and closer) are the "maskable" tokens: each is replaced by [M] with
  probability p, and a masked token is predicted by the position before it (s .. e - 2). That is why the
  opener belongs to the span's bidirectional block: position s predicts the first code and must see
  the whole span;
- the token after the span (text) is an AR target predicted by position e - 1 (the closer).
Token 0 of a sample has no position before it and is never a target.

Modes (`ObjectiveConfig.mode`):
- `ttt`: AR on text targets + absorbing diffusion on target audio spans (each span one block);
- `ar`: every target token, text and audio, is AR; causal attention everywhere (no blocks, no masking);
- `nar`: every target token, text and audio, is diffused. Each contiguous run of target tokens of one
  turn (an assistant turn's content + <|im_end|>, or a whole document) is one bidirectional block that
  also holds the position just before the run (it predicts the run's first token); prompt audio spans
  stay bidirectional blocks of their own, as in TtT, so only the treatment of targets differs.
Prompt (non-target) tokens are never masked and never predicted in any mode.

Audio attention (`ObjectiveConfig.audio_attention`, TtT mode only):
- `bidirectional` (the paper): each audio span is one bidirectional block, as above;
- `block_causal` (BD3-LM / SDAR / Fast-dLLM v2 style): span token i (opener = 0) sits in attention block
  i // audio_block: bidirectional inside a block, causal across blocks (and to everything before the span).
  With next-token alignment the codes of decoding block j (span tokens jB + 1 .. (j + 1)B, B = audio_block)
  are predicted by positions jB .. (j + 1)B - 1, which is exactly attention block j: every prediction of one
  decoding block sees the same tokens, and nothing of a later block. So a finished block's keys/values never
  change again and the sampler appends them to its KV cache exactly (ttt_model/decoding/block_diffusion.py).
  Noising, one block per span (`draw_noised_blocks`): at decoding, block j is predicted from CLEAN earlier
  blocks (they are final) and never sees a later one. A single copy of the sequence can only give that to one
  block of a span at a time: each diffused span noises exactly one decoding block j, drawn uniformly from the
  sample's "block" stream, with the sample's p; its earlier blocks stay clean (no loss) and its later blocks
  stay clean too, which block j cannot see (they are causal-after). So the loss of block j sees exactly what
  decoding block j sees: clean tokens before it, its own tokens partly masked. (BD3-LM's two-copy sequence,
  noisy + clean, would train every block per pass at twice the length; one block per span keeps packing,
  masks and the loss unchanged at the price of fewer diffusion targets per sample.) Text after a diffused span
  sees the span with its one noised block, as in bidirectional TtT (BANOM trains text after clean audio).
  Prompt audio spans get the same block structure, so the model sees every audio span one way.
"""

from __future__ import annotations

import math
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from tokenization.sequence import Span
from ttt_common.config_tools import reject_unknown_keys

IGNORE = -100  # label of a position with no target (the cross-entropy ignore index convention)
KIND_NONE, KIND_AR, KIND_DIFFUSION = 0, 1, 2

MODES = ("ttt", "ar", "nar")
T_SAMPLING = ("uniform", "stratified", "antithetic")
AUDIO_HEADS = ("full", "restricted")
AUDIO_ATTENTION = ("bidirectional", "block_causal")


@dataclass(frozen=True)
class ObjectiveConfig:
    """Mirrors workflows/conf/objective/*.yaml."""

    mode: str = "ttt"
    eps: float = 1e-3  # p = (1 - eps) t + eps keeps the 1/p weight bounded by 1/eps
    banom: bool = True
    p_mix: float = 0.3
    ppm: bool = True
    p_prefix: float = 0.3
    sst: bool = True
    p_trunc: float = 0.5
    trunc_keep: tuple[float, float] = (0.3, 0.9)
    sst_min_codes: int = 5  # SST keeps at least this many codes (and drops one), so shorter spans are skipped
    t_sampling: str = "uniform"
    audio_head: str = "full"
    audio_attention: str = "bidirectional"  # bidirectional (paper) | block_causal (blocks of audio_block tokens)
    audio_block: int = 32  # block_causal: attention/decoding block length; the sampler's block_length must match
    # Loss weight per task (a shard row's `task`), absent = 1: every AR and diffusion target of the sample is
    # multiplied by it; the normalisers stay target counts, so {} is the paper's unweighted loss exactly.
    task_weights: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"objective mode must be one of {MODES}, got {self.mode!r}")
        if self.t_sampling not in T_SAMPLING:
            raise ValueError(f"t_sampling must be one of {T_SAMPLING}, got {self.t_sampling!r}")
        if self.audio_head not in AUDIO_HEADS:
            raise ValueError(f"audio_head must be one of {AUDIO_HEADS}, got {self.audio_head!r}")
        if self.audio_attention not in AUDIO_ATTENTION:
            raise ValueError(f"audio_attention must be one of {AUDIO_ATTENTION}, got {self.audio_attention!r}")
        if self.audio_block < 1:
            raise ValueError(f"audio_block must be at least 1, got {self.audio_block}")
        if not 0.0 < self.eps < 1.0:
            raise ValueError(f"eps must be in (0, 1), got {self.eps}")
        for name in ("p_mix", "p_prefix", "p_trunc"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")
        lo, hi = self.trunc_keep
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(f"trunc_keep must satisfy 0 < lo <= hi < 1, got {self.trunc_keep}")
        if self.sst_min_codes < 1:
            raise ValueError(f"sst_min_codes must be at least 1, got {self.sst_min_codes}")
        for task, w in self.task_weights.items():
            if not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
                raise ValueError(f"task_weights[{task!r}] must be a finite number >= 0, got {w!r}")
        if self.mode != "ttt" and (self.banom or self.ppm or self.sst):
            raise ValueError(f"BANOM/PPM/SST are TtT strategies; switch them off for mode {self.mode!r}")
        if self.mode != "ttt" and self.audio_head == "restricted":
            raise ValueError("audio_head=restricted needs mode ttt (only TtT diffuses audio alone)")
        if self.mode != "ttt" and self.audio_attention != "bidirectional":
            raise ValueError("audio_attention=block_causal needs mode ttt (the AR and NAR baselines decode audio "
                             "their own way: token by token, or in one response block)")

    @property
    def span_block(self) -> int | None:
        """The attention block length audio spans are split into; None = each span is one bidirectional block."""
        return self.audio_block if self.audio_attention == "block_causal" else None

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> ObjectiveConfig:
        """Build from a Hydra/OmegaConf node or dict; unknown keys are an error (typos must not pass)."""
        known = {f.name for f in fields(cls)}
        reject_unknown_keys(cfg, known, "objective", what="objective config keys")
        values = {k: cfg[k] for k in cfg}
        if "trunc_keep" in values:
            values["trunc_keep"] = tuple(float(x) for x in values["trunc_keep"])
        if "task_weights" in values:  # a weight of 1 is no weight: the config that lists every task equals {}
            values["task_weights"] = {str(k): v for k, v in (values["task_weights"] or {}).items() if v != 1}
        return cls(**values)

    def task_weight(self, task: str | None) -> float:
        """The loss weight of a sample of `task` (1 for a task without a weight, or a row without a task)."""
        return float(self.task_weights.get(task, 1.0)) if task is not None else 1.0


@dataclass(frozen=True)
class TargetPlan:
    """What the loss may do with each token of one sample, before noising.

    `ar_target[j]`: token j is predicted autoregressively by position j - 1.
    `maskable[j]`: token j is noised (masked with probability p); when masked it is predicted by
    position j - 1 by diffusion. The two are disjoint.
    `block_ids[j]`: the sample-local bidirectional block of token j, -1 for causal tokens.
    """

    ar_target: np.ndarray
    maskable: np.ndarray
    block_ids: np.ndarray


def span_blocks(length: int, span_block: int | None) -> np.ndarray:
    """Span-local attention block of each token of an audio span [opener, codes..., closer] of `length` tokens:
    all 0 (one bidirectional block) or, block-causal, token i in block i // span_block (see the module
    docstring: attention block j holds the positions that predict decoding block j)."""
    if span_block is None:
        return np.zeros(length, dtype=np.int64)
    return np.arange(length, dtype=np.int64) // span_block


def decoding_blocks(length: int, span_block: int) -> int:
    """How many decoding blocks a span of `length` tokens has: its targets (tokens 1 .. length - 1, the codes
    and the closer) in runs of `span_block`, the last one possibly short."""
    return -(-(length - 1) // span_block)


def decoding_block_targets(length: int, span_block: int, block: int) -> slice:
    """Span-local slice of the targets of decoding block `block`: tokens 1 + jB .. min((j + 1)B, length - 1)."""
    if not 0 <= block < decoding_blocks(length, span_block):
        raise ValueError(f"a span of {length} tokens has no decoding block {block} (block length {span_block})")
    return slice(1 + block * span_block, min(1 + (block + 1) * span_block, length))


def draw_noised_blocks(spans: Sequence[Span], diffused: Container[int], span_block: int,
                       rng: np.random.Generator) -> dict[int, int]:
    """Block-causal noising: the one decoding block noised in each diffused span (span index -> block), uniform
    over the span's blocks. One uniform is drawn per target audio span, diffused or not, so which spans PPM or
    BANOM leave clean does not shift the draws of the others."""
    out: dict[int, int] = {}
    for k, s in enumerate(spans):
        if s.kind != "audio" or not s.is_target:
            continue
        u = rng.random()
        if k in diffused and len(s) > 1:
            out[k] = int(u * decoding_blocks(len(s), span_block))
    return out


def plan_targets(spans: Sequence[Span], n: int, mode: str, diffused: Container[int] | None = None,
                 span_block: int | None = None, noised_blocks: Mapping[int, int] | None = None) -> TargetPlan:
    """The target plan of one sample. `diffused` holds the indices (into `spans`) of the target audio
    spans that are noised in `ttt` mode (the strategies decide which, see strategies.diffused_spans);
    None = all of them. `span_block` (ttt only): block-causal audio spans of that block length, where each
    diffused span k noises only its decoding block `noised_blocks[k]` (draw_noised_blocks); None = each
    audio span is one bidirectional block and noised whole."""
    if span_block is not None and mode != "ttt":
        raise ValueError(f"block-causal audio spans need mode ttt, got {mode!r}")
    ar = np.zeros(n, dtype=bool)
    maskable = np.zeros(n, dtype=bool)
    blocks = np.full(n, -1, dtype=np.int32)
    n_blocks = 0
    if mode == "ar":
        for s in spans:
            ar[s.start : s.end] = s.is_target
    elif mode == "ttt":
        for k, s in enumerate(spans):
            if s.kind == "audio":
                blocks[s.start : s.end] = n_blocks + span_blocks(len(s), span_block)
                n_blocks = int(blocks[s.end - 1]) + 1
            if not s.is_target:
                continue
            if s.kind == "text":
                ar[s.start : s.end] = True
                continue
            ar[s.start] = True
            if diffused is not None and k not in diffused:
                continue
            if span_block is None:
                maskable[s.start + 1 : s.end] = True
            elif len(s) > 1:
                if noised_blocks is None or k not in noised_blocks:
                    raise ValueError(f"block-causal span {k} is diffused but has no noised block")
                local = decoding_block_targets(len(s), span_block, noised_blocks[k])
                maskable[s.start + local.start : s.start + local.stop] = True
    elif mode == "nar":
        for s in spans:
            if s.kind == "audio" and not s.is_target:
                blocks[s.start : s.end] = n_blocks
                n_blocks += 1
        for start, end in _target_runs(spans):
            start = max(start, 1)
            if start >= end:
                continue
            # The position before the run predicts its first token, so it joins the run's block; if it
            # already sits in a block (a prompt audio span), the two blocks merge.
            block = blocks[start - 1] if blocks[start - 1] >= 0 else n_blocks
            n_blocks += int(block == n_blocks)
            blocks[start - 1 : end] = block
            maskable[start:end] = True
    else:
        raise ValueError(f"unknown objective mode {mode!r}")
    ar[0] = maskable[0] = False
    return TargetPlan(ar, maskable, blocks)


def _target_runs(spans: Sequence[Span]) -> list[tuple[int, int]]:
    """Maximal runs [start, end) of consecutive target spans of the same turn."""
    runs: list[tuple[int, int]] = []
    prev_turn: int | None = None
    for s in spans:
        if not s.is_target:
            prev_turn = None
            continue
        if runs and prev_turn == s.turn and runs[-1][1] == s.start:
            runs[-1] = (runs[-1][0], s.end)
        else:
            runs.append((s.start, s.end))
        prev_turn = s.turn
    return runs


def noise_level(t: np.ndarray | float, eps: float) -> np.ndarray:
    """p = (1 - eps) t + eps: the masking probability, in [eps, 1] for t in [0, 1]."""
    return (1.0 - eps) * np.asarray(t, dtype=np.float64) + eps


def draw_t(u: np.ndarray, keys: Sequence[int], how: str) -> np.ndarray:
    """Per-sample diffusion times from per-sample uniforms `u` (one per sample of a micro-batch).

    - uniform: t = u, independent per sample (and independent of the batch composition);
    - stratified: one t per stratum [r/n, (r+1)/n) of the micro-batch, r = the sample's rank by `keys`;
    - antithetic: samples paired by rank; the second of each pair gets 1 - t of the first.
    The two variance-reduction options couple the samples of one micro-batch by construction. `keys` must
    be drawn afresh per sample per epoch (TtTCollator takes them from the sample's stream): a fixed key
    (a hash of the sample id) would give a sample the same rank, hence the same stratum, every epoch, so
    a sample with a small key would only ever be trained at small t.
    """
    u = np.asarray(u, dtype=np.float64)
    if how == "uniform":
        return u
    order = np.argsort(np.asarray(keys, dtype=np.uint64), kind="stable")
    t = u.copy()
    if how == "stratified":
        t[order] = (np.arange(len(u)) + u[order]) / max(len(u), 1)
    elif how == "antithetic":
        first, second = order[0 : len(order) - 1 : 2], order[1::2]
        t[second] = 1.0 - u[first]
    else:
        raise ValueError(f"unknown t_sampling {how!r}")
    return t


@dataclass(frozen=True)
class NoisedSample:
    """One sample after noising, with next-token-aligned per-position targets."""

    input_ids: np.ndarray  # int64 [n], masked tokens replaced by the mask id
    labels: np.ndarray  # int64 [n], IGNORE where the position has no target
    loss_kind: np.ndarray  # int8 [n], KIND_NONE / KIND_AR / KIND_DIFFUSION
    loss_weight: np.ndarray  # float32 [n], w for AR, w/p for diffusion, 0 otherwise (w: the task weight)
    block_ids: np.ndarray  # int32 [n]
    n_ar: int
    n_maskable: int
    n_masked: int


def noise_sample(ids: np.ndarray, plan: TargetPlan, p: float, u: np.ndarray, mask_id: int,
                 task_weight: float = 1.0) -> NoisedSample:
    """Mask each maskable token where u < p and write the targets; `u` holds one uniform per token, `task_weight`
    scales every target's loss weight (ObjectiveConfig.task_weights)."""
    ids = np.asarray(ids, dtype=np.int64)
    masked = plan.maskable & (np.asarray(u) < p)
    labels = np.full(len(ids), IGNORE, dtype=np.int64)
    kind = np.zeros(len(ids), dtype=np.int8)
    weight = np.zeros(len(ids), dtype=np.float32)
    ar_pos = np.flatnonzero(plan.ar_target) - 1
    diff_pos = np.flatnonzero(masked) - 1
    labels[ar_pos], kind[ar_pos], weight[ar_pos] = ids[ar_pos + 1], KIND_AR, task_weight
    labels[diff_pos], kind[diff_pos], weight[diff_pos] = ids[diff_pos + 1], KIND_DIFFUSION, task_weight / p
    return NoisedSample(
        input_ids=np.where(masked, mask_id, ids),
        labels=labels,
        loss_kind=kind,
        loss_weight=weight,
        block_ids=plan.block_ids,
        n_ar=len(ar_pos),
        n_maskable=int(plan.maskable.sum()),
        n_masked=len(diff_pos),
    )


def first_target(s: NoisedSample) -> int:
    """The first position with a target (it predicts the sample's first target token): everything before it is the
    sample's prompt. A sample without targets is all prompt (its length)."""
    hits = np.flatnonzero(s.loss_kind != KIND_NONE)
    return int(hits[0]) if len(hits) else len(s.input_ids)


def splice_prompt(donor: NoisedSample, target: NoisedSample, max_len: int) -> NoisedSample:
    """`target` with its prompt replaced by `donor`'s: the input of a conditioning control.

    The result is donor[:first_target(donor)] followed by target[first_target(target):], so it holds exactly the
    target's targets with the same (already noised) inputs, labels, kinds and weights: its loss differs from the
    target's only through the prompt. A model that ignores its prompt scores the same on both; the gap is what the
    prompt is worth (validation's `<term>_control`). The donor's prompt loses its beginning when the result would
    exceed `max_len`; its blocks keep their ids and the target's are shifted past them, so no block spans the seam.
    """
    cut_t, cut_d = first_target(target), first_target(donor)
    keep = max(0, min(cut_d, max_len - (len(target.input_ids) - cut_t)))
    head, tail = slice(cut_d - keep, cut_d), slice(cut_t, None)
    offset = int(donor.block_ids[head].max(initial=-1)) + 1
    tail_blocks = np.where(target.block_ids[tail] >= 0, target.block_ids[tail] + offset, -1)

    def join(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.concatenate([a[head], b[tail]]).astype(b.dtype, copy=False)

    return NoisedSample(
        input_ids=join(donor.input_ids, target.input_ids),
        labels=join(donor.labels, target.labels),
        loss_kind=join(donor.loss_kind, target.loss_kind),
        loss_weight=join(donor.loss_weight, target.loss_weight),
        block_ids=np.concatenate([donor.block_ids[head], tail_blocks]).astype(target.block_ids.dtype, copy=False),
        n_ar=target.n_ar,
        n_maskable=target.n_maskable,
        n_masked=target.n_masked,
    )
