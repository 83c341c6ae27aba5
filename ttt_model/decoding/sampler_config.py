"""Sampler settings: `SamplerConfig` (workflows/conf/sampler/default.yaml), the per-mode `SamplingParams`, and the
two things a checkpoint's training record decides for its decoder (`resolve_decode`, `resolve_span_block`).

Nothing here imports torch or transformers: drivers that only validate or route settings (pipelines/eval/jobs.py,
workflows/sweep.py) import this module and stay light.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ttt_common.config_tools import reject_unknown_keys
from ttt_model.core.objective import MODES, ObjectiveConfig

BACKENDS = ("cache", "recompute")
DECODE_MODES = ("auto", *MODES)


@dataclass(frozen=True)
class SamplingParams:
    """How one mode (text or audio) picks tokens. temperature 0 = greedy (argmax); top_k 0 and top_p 1 = off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class SamplerConfig:
    """Mirrors workflows/conf/sampler/default.yaml.

    `steps_per_block`: diffusion steps per block of `block_length` masks (the paper's 200 steps over a
    640-token span at block length 32 is 10 per block). `max_span`: most codes in one span (640 in the
    paper). `max_new_tokens`: generated tokens per row, everything counted (text, markers, codes).
    `threshold`: None = the fixed schedule; a probability = commit every position at least this confident.
    `decode`: which decoder (ttt | ar | nar, see ttt_model/decoding/ttt_sampler.py); `auto` = the checkpoint's
    training mode. `backend`: "cache" (ttt_model/decoding/kv_cache.py) or "recompute" (the oracle,
    ttt_model/decoding/recompute.py).
    """

    block_length: int = 32
    steps_per_block: int = 10
    max_span: int = 640
    max_new_tokens: int = 2048
    threshold: float | None = None
    text: SamplingParams = field(default_factory=SamplingParams)
    audio: SamplingParams = field(default_factory=SamplingParams)
    seed: int = 0
    backend: str = "cache"
    decode: str = "auto"

    def __post_init__(self) -> None:
        for name in ("block_length", "steps_per_block", "max_span", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"sampler {name} must be >= 1, got {getattr(self, name)}")
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"sampler threshold must be in (0, 1] or null, got {self.threshold}")
        if self.backend not in BACKENDS:
            raise ValueError(f"sampler backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.decode not in DECODE_MODES:
            raise ValueError(f"sampler decode must be one of {DECODE_MODES}, got {self.decode!r}")

    @classmethod
    def from_mapping(cls, cfg: Any) -> SamplerConfig:
        """From a Hydra/OmegaConf node or dict (`text`/`audio` as nested mappings); unknown keys are errors."""
        reject_unknown_keys(cfg, (f.name for f in fields(cls)), "sampler", what="config keys")
        values = {k: cfg[k] for k in cfg}
        for mode in ("text", "audio"):
            if mode in values and not isinstance(values[mode], SamplingParams):
                values[mode] = SamplingParams(**{k: values[mode][k] for k in values[mode]})
        return cls(**values)


def resolve_decode(decode: str, trained_mode: str | None) -> str:
    """The decoder to run: `decode` itself, or for `auto` the checkpoint's training mode (TtT when unrecorded)."""
    if decode not in DECODE_MODES:
        raise ValueError(f"sampler decode must be one of {DECODE_MODES}, got {decode!r}")
    if decode != "auto":
        return decode
    if trained_mode is not None and trained_mode not in MODES:
        raise ValueError(f"the checkpoint records objective mode {trained_mode!r}; known modes are {MODES}")
    return trained_mode or "ttt"


def resolve_span_block(objective: Mapping[str, Any] | None, decode: str, block_length: int) -> int | None:
    """The attention block length of audio spans for the TtT decoder, as the checkpoint's recorded objective
    (`objective.json`) says it was trained: None (each span one bidirectional block: the paper's default, and
    every record without `audio_attention`) or `audio_block` for block-causal spans. There is no sampler switch
    for it: a model decoded with another attention than it was trained with sees masks it never saw. Its decoding
    blocks must be its attention blocks, so a different `block_length` is an error, not silently replaced."""
    if decode != "ttt" or objective is None:
        return None
    defaults = ObjectiveConfig()
    block = ObjectiveConfig(audio_attention=str(objective.get("audio_attention", defaults.audio_attention)),
                            audio_block=int(objective.get("audio_block", defaults.audio_block))).span_block
    if block is not None and block != block_length:
        raise ValueError(f"the checkpoint was trained with block-causal audio blocks of {block} tokens; decode it "
                         f"with sampler block_length={block} (got {block_length})")
    return block
