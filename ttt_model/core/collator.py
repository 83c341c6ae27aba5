"""The packed training batch and the collator that builds it from shard rows.

Per sample, in this order: BANOM → SST truncation (only when the truncated span will be diffused) →
fit to the row length → PPM (on the spans that survived the fit) → (block-causal audio only: the one
noised block of each diffused span) → target plan → noising; then the micro-batch is packed into rows
(objective.py and strategies.py say why each step is as it is).
Every random draw comes from the sample's own stream (rng.sample_rng), so a sample is noised the same
way whichever micro-batch, row or rank it lands in; only the optional stratified/antithetic t sampling
couples the samples of one micro-batch, by design.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from tokenization.sequence import Span
from tokenization.vocab import UnifiedVocab
from ttt_model.core.objective import (
    IGNORE,
    NoisedSample,
    ObjectiveConfig,
    draw_noised_blocks,
    draw_t,
    first_target,
    noise_level,
    noise_sample,
    plan_targets,
    splice_prompt,
)
from ttt_model.core.packing import fit_to_length, pack
from ttt_model.core.rng import sample_rng
from ttt_model.core.strategies import (
    StrategyDraw,
    apply_sst,
    diffused_spans,
    draw_banom,
    draw_ppm,
    draw_sst,
    sst_span,
    target_audio_spans,
)

_TENSOR_FIELDS = ("input_ids", "position_ids", "doc_ids", "block_ids", "labels", "loss_kind", "loss_weight")


@dataclass
class PackedBatch:
    """One micro-batch of packed rows. Targets are next-token aligned: `labels[b, i]` is the token the
    logits at position i must predict.

    `n_ar` / `n_maskable` are this micro-batch's loss normalisers (AR targets; tokens subject to masking);
    the trainer sums them over the whole step (all micro-batches, all ranks) before loss.combine.
    `n_tokens` counts real tokens and `n_padding` padding tokens (padding fraction = n_padding / (n_tokens +
    n_padding)). `stats` holds SUMS (samples, dropped, truncated, banom, ppm, sst, masked, p_sum) so they add
    up across micro-batches and ranks; divide by `samples` for rates. banom/ppm/sst count the samples where
    the strategy took effect (a PPM draw that leaves a span clean, an SST truncation that survived the fit).
    A batch collated with prompt donors also counts `prompted`: the samples whose prompt was replaced (a
    document has none before its first target, so it is scored as it is).
    """

    input_ids: torch.Tensor  # long [B, L], after noising (masked = mask_id), padding = pad_id
    position_ids: torch.Tensor  # long [B, L], restart at 0 per packed sample
    doc_ids: torch.Tensor  # long [B, L], -1 = padding
    block_ids: torch.Tensor  # long [B, L], -1 = causal token, unique within a row
    labels: torch.Tensor  # long [B, L], IGNORE (-100) = no target
    loss_kind: torch.Tensor  # long [B, L], 0 none, 1 AR, 2 diffusion
    loss_weight: torch.Tensor  # float32 [B, L], w for AR, w/p for diffusion (w: task weight), 0 otherwise
    n_ar: int
    n_maskable: int
    n_tokens: int
    n_padding: int
    stats: dict[str, float] = field(default_factory=dict)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        moved = {f: getattr(self, f).to(device, non_blocking=non_blocking) for f in _TENSOR_FIELDS}
        rest = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _TENSOR_FIELDS}
        return PackedBatch(**moved, **rest)


def as_spans(rows: Iterable[Span | Mapping]) -> list[Span]:
    """Spans from Span objects or shard rows (dicts, possibly holding numpy scalars)."""
    return [
        r
        if isinstance(r, Span)
        else Span(
            kind=str(r["kind"]),
            start=int(r["start"]),
            end=int(r["end"]),
            role=str(r["role"]),
            is_target=bool(r["is_target"]),
            is_final_in_turn=bool(r.get("is_final_in_turn", False)),
            turn=int(r.get("turn", 0)),
        )
        for r in rows
    ]


@dataclass(frozen=True)
class _Prepared:
    sample_id: str
    task: str | None  # the shard row's task (its loss weight); None where rows carry no task
    ids: np.ndarray
    spans: list[Span]
    plan_diffused: frozenset[int] | None
    noised_blocks: dict[int, int] | None  # block-causal spans: the one decoding block noised per diffused span
    draw: StrategyDraw
    truncated: bool


class TtTCollator:
    """Shard rows → PackedBatch: strategies, noising and packing for one micro-batch.

    `max_tokens` caps a sample (`fit_to_length`). `packing=False` reproduces the reference layout (one sample
    per row, padded to `max_tokens`). Packed rows are `max_tokens` long by default: static shapes avoid
    recompiles under torch.compile/flex attention. `row_tokens` packs into shorter rows instead — the smallest
    multiple of it that holds the micro-batch's longest sample, at most `max_tokens` — because attention costs
    the square of the row length whatever the packing: ~150-token samples in 1280-token rows spent ~30 % of a CPU
    step on attention between samples that the mask then discards; rows of 320 cut that fourfold at the same
    padding, while a rare long sample still gets a row that holds it whole (a few distinct shapes).
    """

    def __init__(
        self, vocab: UnifiedVocab, cfg: ObjectiveConfig, max_tokens: int, seed: int, packing: bool = True,
        row_tokens: int | None = None,
    ) -> None:
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
        if row_tokens is not None and row_tokens < 2:
            raise ValueError(f"row_tokens must be None or at least 2, got {row_tokens}")
        self.vocab, self.cfg, self.max_tokens, self.seed, self.packing = vocab, cfg, max_tokens, seed, packing
        self.row_tokens = row_tokens

    def row_length(self, lengths: Sequence[int]) -> int:
        """The row length of a micro-batch whose samples have these lengths (each at most `max_tokens`)."""
        if not self.packing or self.row_tokens is None:
            return self.max_tokens
        longest = max(lengths, default=1)
        return min(self.max_tokens, self.row_tokens * -(-longest // self.row_tokens))

    def __call__(self, samples: Sequence[Mapping], epoch: int,
                 prompt_donors: Sequence[Mapping] | None = None) -> PackedBatch:
        """The packed micro-batch of `samples`. `prompt_donors` (one per sample): each sample's targets are scored
        after its donor's prompt instead of its own (`splice_prompt`), with the sample's own noise: the
        conditioning control of the held-out losses (ttt_model/training/validation.py)."""
        if prompt_donors is not None and len(prompt_donors) != len(samples):
            raise ValueError(f"need one prompt donor per sample, got {len(prompt_donors)} for {len(samples)}")
        prepared = [self._prepare(s, epoch) for s in samples]
        keep = [i for i, p in enumerate(prepared) if len(p.ids) >= 2]  # a single token has no position before it
        kept = [prepared[i] for i in keep]
        p_mask = self._p_mask(kept, epoch)
        noised = self._noise(kept, p_mask, epoch)
        swapped: dict[str, float] = {}
        if prompt_donors is not None:
            donors = [self._prepare(prompt_donors[i], epoch) for i in keep]
            donors_noised = self._noise(donors, self._p_mask(donors, epoch), epoch)
            swapped["prompted"] = float(sum(first_target(n) > 0 for n in noised))  # the others have no prompt
            noised = [splice_prompt(d, s, self.max_tokens) for d, s in zip(donors_noised, noised, strict=True)]
        lengths = [len(n.input_ids) for n in noised]
        row = self.row_length(lengths)
        bins = pack(lengths, row) if self.packing else [[i] for i in range(len(noised))]
        batch = self._assemble(noised, bins or [[]], row)
        batch.stats = {
            "samples": float(len(kept)),
            "dropped": float(len(prepared) - len(kept)),
            "truncated": float(sum(p.truncated for p in kept)),
            "banom": float(sum(p.draw.banom for p in kept)),
            "ppm": float(sum(p.draw.ppm_from is not None for p in kept)),
            "sst": float(sum(p.draw.sst_keep is not None for p in kept)),
            "masked": float(sum(n.n_masked for n in noised)),
            "p_sum": float(p_mask.sum()) if self.cfg.mode != "ar" else 0.0,
            **swapped,
        }
        return batch

    def _p_mask(self, kept: Sequence[_Prepared], epoch: int) -> np.ndarray:
        """The masking probability of each prepared sample (its diffusion time, floored at eps)."""
        return noise_level(self.diffusion_times([p.sample_id for p in kept], epoch), self.cfg.eps)

    def _noise(self, kept: Sequence[_Prepared], p_mask: np.ndarray, epoch: int) -> list[NoisedSample]:
        """Target plan and noising of each prepared sample, from its own streams."""
        return [
            noise_sample(
                p.ids,
                plan_targets(p.spans, len(p.ids), self.cfg.mode, p.plan_diffused, self.cfg.span_block,
                             p.noised_blocks),
                float(pm),
                sample_rng(self.seed, epoch, p.sample_id, "mask").random(len(p.ids)),
                self.vocab.mask_id,
                self.cfg.task_weight(p.task),
            )
            for p, pm in zip(kept, p_mask, strict=True)
        ]

    def diffusion_times(self, sample_ids: Sequence[str], epoch: int) -> np.ndarray:
        """The diffusion time t of each sample of one micro-batch (in the given order).

        The uniform and the stratified/antithetic rank key both come from the sample's "t" stream of this
        epoch: a fixed rank key would put a sample in the same stratum (or the same antithetic pair)
        every epoch.
        """
        streams = [sample_rng(self.seed, epoch, sid, "t") for sid in sample_ids]
        u = np.array([rng.random() for rng in streams])
        keys = [int(rng.integers(0, 1 << 63)) for rng in streams]
        return draw_t(u, keys, self.cfg.t_sampling)

    def _prepare(self, sample: Mapping, epoch: int) -> _Prepared:
        sid = str(sample["sample_id"])
        task = sample.get("task")
        ids = np.asarray(sample["input_ids"], dtype=np.int64)
        spans = as_spans(sample["spans"])
        if self.cfg.mode != "ttt":
            fitted, fitted_spans = fit_to_length(ids, spans, self.max_tokens)
            return _Prepared(sid, task, fitted, fitted_spans, None, None, StrategyDraw(), len(fitted) < len(ids))
        # Every stream is drawn whatever happens, so an ablation changes only what it removes.
        banom = draw_banom(self.cfg, sample_rng(self.seed, epoch, sid, "banom"))
        final = sst_span(spans, ids, self.vocab.pad_id)
        n_codes = 0 if final is None else int(self.vocab.is_audio(ids[spans[final].start + 1 : spans[final].end]).sum())
        sst_keep = draw_sst(self.cfg, n_codes, sample_rng(self.seed, epoch, sid, "sst"))
        # SST only where the truncated span is diffused: under BANOM it would stay clean and the text after
        # it would be lost for nothing. PPM never leaves it clean: it is the sample's last target audio span
        # and PPM always diffuses the last one.
        if banom or final is None:
            sst_keep = None
        if sst_keep is not None:
            ids, spans = apply_sst(ids, spans, final, sst_keep)
        fitted, fitted_spans = fit_to_length(ids, spans, self.max_tokens)
        if len(fitted) < len(ids):
            sst_keep = None  # the truncated span ended the sample, so the fit dropped it: SST had no effect
        ppm_from = draw_ppm(self.cfg, len(target_audio_spans(fitted_spans)), sample_rng(self.seed, epoch, sid, "ppm"))
        draw = StrategyDraw(banom=banom, ppm_from=None if banom else ppm_from, sst_keep=sst_keep)
        diffused = diffused_spans(fitted_spans, draw.banom, draw.ppm_from)
        block = self.cfg.span_block
        noised = (None if block is None
                  else draw_noised_blocks(fitted_spans, diffused, block, sample_rng(self.seed, epoch, sid, "block")))
        return _Prepared(sid, task, fitted, fitted_spans, diffused, noised, draw, len(fitted) < len(ids))

    def _assemble(self, noised: Sequence[NoisedSample], bins: Sequence[Sequence[int]], row: int) -> PackedBatch:
        shape = (len(bins), row)
        input_ids = np.full(shape, self.vocab.pad_id, dtype=np.int64)
        position_ids = np.zeros(shape, dtype=np.int64)
        doc_ids = np.full(shape, -1, dtype=np.int64)
        block_ids = np.full(shape, -1, dtype=np.int64)
        labels = np.full(shape, IGNORE, dtype=np.int64)
        loss_kind = np.zeros(shape, dtype=np.int64)
        loss_weight = np.zeros(shape, dtype=np.float32)
        for row, members in enumerate(bins):
            pos, n_blocks = 0, 0
            for doc, i in enumerate(members):
                s = noised[i]
                sl = slice(pos, pos + len(s.input_ids))
                input_ids[row, sl] = s.input_ids
                position_ids[row, sl] = np.arange(len(s.input_ids))
                doc_ids[row, sl] = doc
                block_ids[row, sl] = np.where(s.block_ids >= 0, s.block_ids + n_blocks, -1)
                n_blocks += int(s.block_ids.max(initial=-1)) + 1
                labels[row, sl], loss_kind[row, sl], loss_weight[row, sl] = s.labels, s.loss_kind, s.loss_weight
                pos = sl.stop
        n_tokens = int((doc_ids >= 0).sum())
        return PackedBatch(
            input_ids=torch.from_numpy(input_ids),
            position_ids=torch.from_numpy(position_ids),
            doc_ids=torch.from_numpy(doc_ids),
            block_ids=torch.from_numpy(block_ids),
            labels=torch.from_numpy(labels),
            loss_kind=torch.from_numpy(loss_kind),
            loss_weight=torch.from_numpy(loss_weight),
            n_ar=sum(s.n_ar for s in noised),
            n_maskable=sum(s.n_maskable for s in noised),
            n_tokens=n_tokens,
            n_padding=input_ids.size - n_tokens,
        )
