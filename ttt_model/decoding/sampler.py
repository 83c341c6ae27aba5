"""Decoding for the three training objectives of Table 1 (`SamplerConfig.decode`: ttt | ar | nar | auto).

Each checkpoint must be decoded the way it was trained (ttt_model/core/objective.py `mode`); `auto` takes the mode the
checkpoint records (ttt_model/core/model_checkpoint.py `objective.json`), TtT when it records none. The mask a decoder
attends with is the training mask by construction: `prompt_block_ids` runs the objective's own `plan_targets`
over the prompt's chat structure (`chat_spans`), and every chunk below extends it exactly as training would
see the finished sequence. The TtT decoder (paper Algorithm 1) is described first; `ArDecodeRun` and
`NarDecodeRun` (the baselines) say how they differ.

Conventions are the training ones (ttt_model/core/objective.py, tokenization/sequence.py): the logits at position
i predict token i + 1, for text and masked audio alike; an audio span [opener, codes..., closer] is one
bidirectional block that includes its opener (or, for a checkpoint trained with `audio_attention:
block_causal`, blocks of `audio_block` tokens, causal to each other; see below); text is causal; nothing
attends to the future outside its own block. Per row of a batch, decoding is a small state machine:

- text: one token per forward pass (KV cache), sampled from text ids and the two span openers. <|im_end|>
  (or <|endoftext|>) ends the turn.
- audio span: after an opener (<|begin_of_audio|> closes with <|end_of_audio_new|>, <|begin_of_quad|> with
  <|end_of_audio_span_last|>) the span is [opener, M x block_length]. Each diffusion step runs the model on
  the span only (bidirectional inside it, full attention to the cached prefix); the position before each
  masked token predicts it, restricted to audio codes + the matching closer, and the most confident
  masked positions of the current block are committed (a per-block schedule of `steps_per_block` steps, or
  everything above `threshold`, as Fast-dLLM). Committed tokens stay. Once a closer is committed, everything
  after it leaves the span at once (early termination: a training span [opener, codes, closer] holds nothing
  after its closer, so the steps that still fill the masks before it must not attend to it), and the span ends
  when no mask is left; a block filled without a closer appends the next block of masks; at `max_span` codes
  the closer is forced.
- closing: the finished span is run once more with the span-block mask and its keys/values are committed
  to the cache exactly as training sees a clean span; the closer's logits predict the next text token.
- block-causal spans (the checkpoint's objective records `audio_attention: block_causal`, read like `decode:
  auto`; `block_length` must equal its `audio_block`): a step of decoding block j runs only span tokens
  [jB, (j + 1)B), the attention block whose positions predict codes jB + 1 .. (j + 1)B; the first step of
  the next block carries the finished block in front and commits it to the cache, so a finished block is
  computed once more, exactly as training sees it clean, and never again; the closing pass runs only what is
  not yet cached (`DecodeRun._span_chunk`). Everything else (schedule, threshold, early termination) is as
  above.

Two interchangeable backends compute the hidden states: `CachedBackend` (ttt_model/decoding/kv_cache.py; ragged KV
cache, one-token text steps, span-only diffusion steps) and `RecomputeBackend` here, the reference's
method: the full sequence re-run for every token and every diffusion step under the training mask
(`ttt_model.core.attention.sdpa_mask`). The oracle exists to prove the fast path exact: in greedy mode both
produce the same tokens. All token choices (token_sampling.py) are shared, so any difference is the cache's.

`logits_processor(context, logits) -> logits` is a generic hook called before every choice (per row): text
logits are [1, V] over vocabulary ids, audio logits [m, C + 1] over `context.column_ids` (codes, then the
closer) for the span positions `context.targets`. The vocabulary restriction is applied after it, so a
processor can bias or force tokens (tests force openers and closers on random models with it) but can
never make the model emit a token its mode does not allow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from transformers import Qwen2ForCausalLM

from tokenization.sequence import Span, spans_from_ids
from tokenization.vocab import EOA, EOA_FINAL, IM_END, IM_START, SOA, SOA_FINAL, UnifiedVocab
from ttt_model.core.attention import sdpa_mask
from ttt_model.core.model import attention_backend
from ttt_model.core.objective import MODES, ObjectiveConfig, plan_targets, span_blocks
from ttt_model.decoding.kv_cache import CachedBackend, Chunk
from ttt_model.decoding.token_sampling import SamplingParams, choose, commit_schedule, select_commits

BACKENDS = ("cache", "recompute")
DECODE_MODES = ("auto", *MODES)


@dataclass(frozen=True)
class SamplerConfig:
    """Mirrors workflows/conf/sampler/default.yaml.

    `steps_per_block`: diffusion steps per block of `block_length` masks (the paper's 200 steps over a
    640-token span at block length 32 is 10 per block). `max_span`: most codes in one span (640 in the
    paper). `max_new_tokens`: generated tokens per row, everything counted (text, markers, codes).
    `threshold`: None = the fixed schedule; a probability = commit every position at least this confident.
    `decode`: which decoder (ttt | ar | nar, see the module docstring); `auto` = the checkpoint's training mode.
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
        known = {f.name for f in fields(cls)}
        unknown = set(cfg) - known
        if unknown:
            raise ValueError(f"unknown sampler config keys {sorted(unknown)}")
        values = {k: cfg[k] for k in cfg}
        for mode in ("text", "audio"):
            if mode in values and not isinstance(values[mode], SamplingParams):
                values[mode] = SamplingParams(**{k: values[mode][k] for k in values[mode]})
        return cls(**values)


# ---- events -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextDelta:
    """New text of row `row` (complete characters only; multi-byte characters wait for their last token)."""

    row: int
    text: str


@dataclass(frozen=True)
class AudioBlock:
    """Committed codec codes (not vocabulary ids) of one finished block of span `span` of row `row`."""

    row: int
    span: int
    codes: np.ndarray


@dataclass(frozen=True)
class SpanEnd:
    """Span `span` of row `row` is complete: `n_codes` codes. `forced`: the model did not close it (ttt / ar:
    the closer was forced at max_span or by the token budget; nar: the response ended before a closer)."""

    row: int
    span: int
    final: bool
    n_codes: int
    forced: bool


@dataclass(frozen=True)
class TurnEnd:
    """Row `row` is finished: reason "eos" (<|im_end|> / <|endoftext|>) or "length" (token budget spent)."""

    row: int
    reason: str


Event = TextDelta | AudioBlock | SpanEnd | TurnEnd


@dataclass(frozen=True)
class LogitsContext:
    """What a logits processor knows about the choice it is asked to shape."""

    row: int
    mode: str  # "text" | "audio" | "response" (nar: any token of the response block)
    generated: Sequence[int]  # ids generated so far by this row (the open span / response block not included)
    column_ids: torch.Tensor  # vocabulary id of each logits column
    targets: np.ndarray | None = None  # audio / response: span (response) index of the token each row predicts


LogitsProcessor = Callable[[LogitsContext, torch.Tensor], torch.Tensor]


@dataclass
class Generation:
    """One row's output: every generated id, the text, the codes of each span, and why it stopped."""

    ids: list[int]
    text: str
    spans: list[np.ndarray]
    finish_reason: str

    @property
    def codes(self) -> np.ndarray:
        return np.concatenate(self.spans) if self.spans else np.zeros(0, dtype=np.int64)


@dataclass
class DecodeStats:
    """Work done by one run (all rows): forward passes, tokens fed through the model, diffusion steps."""

    forward_passes: int = 0
    tokens_processed: int = 0
    diffusion_steps: int = 0
    text_tokens: int = 0
    audio_tokens: int = 0
    spans: int = 0


# ---- the full-recompute oracle --------------------------------------------------------------------


class RecomputeBackend:
    """The reference's decoding method, kept as the correctness oracle: no cache, batch size 1, the whole
    sequence re-run for every chunk under the training mask built from its spans' block ids. (The reference
    also computes full-vocabulary logits at every position; the oracle leaves the head to the sampler,
    which applies it only where a token is chosen, so the two paths share every number after the model.)"""

    def __init__(self, model: Qwen2ForCausalLM, batch: int) -> None:
        self.model = model
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.blocks: list[list[int]] = [[] for _ in range(batch)]
        self.n_blocks = [0] * batch
        self.forward_passes = 0
        self.tokens_processed = 0

    def run(self, chunks: Sequence[Chunk]) -> list[torch.Tensor]:
        return [self._one(c) for c in chunks]

    def inputs(self, chunk: Chunk) -> tuple[list[int], list[int]]:
        """The whole sequence the pass for `chunk` runs (committed tokens + the chunk) and its block ids (-1 =
        causal), the chunk's local blocks numbered after the committed ones."""
        r = chunk.row
        local = np.asarray(chunk.blocks, dtype=np.int64)
        chunk_blocks = np.where(local >= 0, local + self.n_blocks[r], -1).tolist()
        return self.tokens[r] + list(chunk.ids), self.blocks[r] + chunk_blocks

    def _one(self, chunk: Chunk) -> torch.Tensor:
        r, device = chunk.row, self.model.device
        seq, seq_blocks = self.inputs(chunk)
        ids = torch.tensor([seq], device=device)
        blocks = torch.tensor([seq_blocks], device=device)
        mask = sdpa_mask(torch.zeros_like(ids), blocks)
        hidden = self.model.model(
            input_ids=ids,
            position_ids=torch.arange(ids.shape[1], device=device)[None],
            attention_mask=dict.fromkeys(self.model.config.layer_types, mask),
            use_cache=False,
        ).last_hidden_state[0, -len(chunk):]
        if chunk.keep:
            kept = len(self.tokens[r]) + chunk.keep
            self.tokens[r], self.blocks[r] = seq[:kept], seq_blocks[:kept]
            self.n_blocks[r] += int(np.max(chunk.blocks[: chunk.keep], initial=-1)) + 1
        self.forward_passes += 1
        self.tokens_processed += ids.shape[1]
        return hidden[-1] if chunk.last_only else hidden


# ---- per-row state --------------------------------------------------------------------------------


class _Detokenizer:
    """Incremental BPE decoding that emits only complete characters.

    Decodes a short window (the tokens since the previous emission plus the ones before them as context)
    instead of the whole text each time, so streaming stays linear in the answer length.
    """

    def __init__(self, vocab: UnifiedVocab) -> None:
        self._decode = vocab.text.decode
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        text = self._decode(self.ids[self._prefix :])
        if len(text) <= len(prefix_text) or text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return text[len(prefix_text) :]

    def flush(self) -> str:
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        text = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return text[len(prefix_text) :]


@dataclass
class _Span:
    index: int
    opener: int
    closer: int
    limit: int  # most codes this span may hold
    ids: list[int]  # [opener, committed tokens or mask ids...]
    block_start: int = 1
    step: int = 0
    schedule: list[int] = field(default_factory=list)
    emitted: int = 1  # span index up to which codes went out as AudioBlocks
    cached: int = 0  # span tokens already in the KV cache (block-causal: whole attention blocks)
    fed: int = 0  # span index of the first token of the chunk last run
    closing: bool = False
    forced: bool = False


@dataclass
class _Response:
    """nar: the response block. `head` = the prompt's tokens inside the block (its last token, or the prompt
    audio span it closes); `ids` = response tokens, committed or [M]; `parsed` = how many went out as events."""

    head: list[int]
    ids: list[int] = field(default_factory=list)
    block_start: int = 0
    step: int = 0
    schedule: list[int] = field(default_factory=list)
    parsed: int = 0
    closer: int | None = None  # closer of the span open at `parsed`
    opener: int | None = None
    codes: list[int] = field(default_factory=list)  # codes of that span so far
    emitted: int = 0  # how many of them went out as AudioBlocks


@dataclass
class _Row:
    index: int
    prompt: list[int]
    prompt_blocks: np.ndarray
    budget: int
    detok: _Detokenizer
    generator: torch.Generator
    generated: list[int] = field(default_factory=list)
    prefilled: bool = False
    next_token: int | None = None
    span: _Span | None = None
    spans: list[np.ndarray] = field(default_factory=list)
    finish_reason: str | None = None
    response: _Response | None = None  # nar only


# ---- the sampler ----------------------------------------------------------------------------------


class TtTSampler:
    """Decodes chat prompts (unified-vocabulary ids, e.g. `build_chat(..., add_generation_prompt=True)`).

    `generate(prompts)` returns one `Generation` per prompt; `start(prompts)` returns a `DecodeRun` to
    iterate for streaming events. The model must use the sdpa attention implementation (bool masks).
    """

    def __init__(self, model: Qwen2ForCausalLM, vocab: UnifiedVocab, cfg: SamplerConfig | None = None,
                 logits_processor: LogitsProcessor | None = None, max_length: int | None = None,
                 objective: Mapping[str, Any] | None = None) -> None:
        if attention_backend(model) != "sdpa":
            raise ValueError("the sampler needs attn_implementation='sdpa' (its masks are bool tensors); load the "
                             "model with attn_implementation='sdpa'")
        self.model = model.eval()
        self.vocab = vocab
        self.cfg = cfg or SamplerConfig()
        self.decode = resolve_decode(self.cfg.decode, None if objective is None else str(objective["mode"]))
        self.span_block = resolve_span_block(objective, self.decode, self.cfg.block_length)
        self.logits_processor = logits_processor
        self.max_length = int(max_length or model.config.max_position_embeddings)
        self.head = model.get_output_embeddings().weight
        self.device = self.head.device
        n_rows = self.head.shape[0]
        allowed = torch.zeros(n_rows, dtype=torch.bool)
        allowed[: vocab.text_vocab_size] = True
        allowed[list(vocab.opener_ids())] = True
        self._text_allowed = allowed.to(self.device)
        # nar: every token a target of training can hold (text, openers, assistant closers, codes)
        response = allowed.clone()
        response[[vocab.id(EOA), vocab.id(EOA_FINAL)]] = True
        response[vocab.audio_offset : vocab.audio_offset + vocab.codebook_size] = True
        self._response_allowed = response.to(self.device)
        self._text_columns = torch.arange(n_rows, device=self.device)
        self._audio_columns = {
            closer: torch.cat([torch.arange(vocab.audio_offset, vocab.audio_offset + vocab.codebook_size),
                               torch.tensor([closer])]).to(self.device)
            for closer in (vocab.id(EOA), vocab.id(EOA_FINAL))
        }
        self.closer_for = {vocab.id(SOA): vocab.id(EOA), vocab.id(SOA_FINAL): vocab.id(EOA_FINAL)}
        self.stop_ids = frozenset((vocab.eos_id, vocab.pad_id))

    def start(self, prompts: Sequence[Sequence[int]]) -> DecodeRun:
        runs = {"ttt": DecodeRun, "ar": ArDecodeRun, "nar": NarDecodeRun}
        return runs[self.decode](self, [self._check_prompt(p) for p in prompts])

    def generate(self, prompts: Sequence[Sequence[int]]) -> list[Generation]:
        run = self.start(prompts)
        for _ in run:
            pass
        return run.results()

    def _check_prompt(self, prompt: Sequence[int]) -> list[int]:
        ids = [int(i) for i in prompt]
        if not ids:
            raise ValueError("empty prompt: nothing to condition on")
        if len(ids) >= self.max_length:
            raise ValueError(f"prompt has {len(ids)} tokens; the model's context holds {self.max_length}, "
                             "so no token can be generated")
        bad = [i for i in ids if not 0 <= i < self.vocab.size or i == self.vocab.mask_id]
        if bad:
            raise ValueError(f"prompt holds ids outside the vocabulary or mask tokens: {sorted(set(bad))[:5]}")
        return ids

    # -- hidden states -> tokens: the LM head only for the rows and columns a choice needs ------------
    def next_text_token(self, row: int, generated: Sequence[int], hidden: torch.Tensor,
                        generator: torch.Generator) -> int:
        """The token after the position whose final state is `hidden` [H]: text ids or a span opener."""
        logits = torch.nn.functional.linear(hidden[None], self.head).float()
        if self.logits_processor is not None:
            logits = self.logits_processor(LogitsContext(row, "text", generated, self._text_columns), logits)
        logits = logits.masked_fill(~self._text_allowed, float("-inf"))
        return int(choose(logits, self.cfg.text, generator)[0][0])

    def propose_audio(self, row: int, generated: Sequence[int], hidden: torch.Tensor, targets: np.ndarray,
                      closer: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidates for the masked span positions `targets` from the states before them (`hidden` [m, H]):
        (vocabulary ids [m], confidences [m]), over audio codes and `closer` only."""
        v = self.vocab
        codes = torch.nn.functional.linear(hidden, self.head[v.audio_offset : v.audio_offset + v.codebook_size])
        end = torch.nn.functional.linear(hidden, self.head[closer : closer + 1])
        logits = torch.cat([codes, end], dim=-1).float()
        columns = self._audio_columns[closer]
        if self.logits_processor is not None:
            logits = self.logits_processor(LogitsContext(row, "audio", generated, columns, targets), logits)
        picked, confidence = choose(logits, self.cfg.audio, generator)
        return columns[picked], confidence

    def propose_response(self, row: int, generated: Sequence[int], hidden: torch.Tensor, targets: np.ndarray,
                         generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """nar: candidates for the masked response positions `targets` from the states before them: (vocabulary
        ids [m], confidences [m]) over every token training could target. A position is not known to be text or
        audio before its token is chosen, so one set of sampling params applies: the text ones."""
        logits = torch.nn.functional.linear(hidden, self.head).float()
        if self.logits_processor is not None:
            logits = self.logits_processor(LogitsContext(row, "response", generated, self._text_columns, targets),
                                           logits)
        logits = logits.masked_fill(~self._response_allowed, float("-inf"))
        return choose(logits, self.cfg.text, generator)


class DecodeRun:
    """One decoding run over a batch of prompts: iterate it for events; `results()` and `stats` after."""

    def __init__(self, sampler: TtTSampler, prompts: list[list[int]]) -> None:
        self.sampler = sampler
        cfg = sampler.cfg
        self.stats = DecodeStats()
        device = sampler.device
        model = sampler.model
        self.backend = (CachedBackend(model, len(prompts), sampler.vocab.pad_id) if cfg.backend == "cache"
                        else RecomputeBackend(model, len(prompts)))
        blocks = [prompt_block_ids(sampler.vocab, p, sampler.decode, sampler.span_block) for p in prompts]
        self.rows = [
            _Row(index=i, prompt=p, prompt_blocks=blocks[i],
                 budget=min(cfg.max_new_tokens, sampler.max_length - len(p)), detok=_Detokenizer(sampler.vocab),
                 generator=torch.Generator(device=device).manual_seed(cfg.seed + i))
            for i, p in enumerate(prompts)
        ]

    def __iter__(self) -> Iterator[Event]:
        with torch.inference_mode():
            while True:
                active = [r for r in self.rows if r.finish_reason is None]
                if not active:
                    break
                chunks = [self._chunk(r) for r in active]
                hidden = self.backend.run(chunks)
                self.stats.forward_passes = self.backend.forward_passes
                self.stats.tokens_processed = self.backend.tokens_processed
                for row, chunk, h in zip(active, chunks, hidden, strict=True):
                    yield from (self._after_last(row, h) if chunk.last_only else self._after_step(row, h))

    def results(self) -> list[Generation]:
        out = []
        for r in self.rows:
            text = self.sampler.vocab.text.decode(r.detok.ids)
            out.append(Generation(list(r.generated), text, list(r.spans), r.finish_reason or "unfinished"))
        return out

    # -- what each row feeds the model next ---------------------------------------------------------
    def _chunk(self, row: _Row) -> Chunk:
        if not row.prefilled:
            row.prefilled = True
            return Chunk(row.index, row.prompt, row.prompt_blocks, keep=len(row.prompt), last_only=True)
        span = row.span
        if span is None:
            assert row.next_token is not None
            return Chunk(row.index, [row.next_token], np.full(1, -1), keep=1, last_only=True)
        return self._span_chunk(row, span)

    def _span_chunk(self, row: _Row, span: _Span) -> Chunk:
        """The span tokens a diffusion step (or the closing pass) runs: those not yet in the cache.

        Bidirectional: the whole span every step (nothing of it is final before its closer); the closing pass
        commits it. Block-causal (block length B): span tokens [jB, (j + 1)B) form attention block j, whose
        positions predict decoding block j (codes jB + 1 .. (j + 1)B, ttt_model/core/objective.py), so a step of
        block j runs that attention block only; code (j + 1)B is predicted inside it and seen by none of it.
        The first step of block j also carries the now final attention block j - 1 in front and keeps it
        (a finished block goes into the cache in the same pass, never to be recomputed); the closing pass
        commits what is left.
        """
        block, start = self.sampler.span_block, span.cached
        if span.closing:
            end, keep = len(span.ids), len(span.ids) - start
        elif block is None:
            end, keep = len(span.ids), 0
        else:
            first = span.block_start - 1  # the first token of the attention block of the current decoding block
            end, keep = min(len(span.ids), first + block), first - start
        local = span_blocks(end, block)[start:]
        span.fed, span.cached = start, start + keep
        return Chunk(row.index, span.ids[start:end], local - local[0], keep=keep, last_only=span.closing)

    # -- text ---------------------------------------------------------------------------------------
    def _after_last(self, row: _Row, hidden: torch.Tensor) -> Iterator[Event]:
        """`hidden` is the last committed token's state: it predicts the next token, always text mode."""
        row.span = None  # a closing span is now in the cache
        s = self.sampler
        token = s.next_text_token(row.index, row.generated, hidden, row.generator)
        row.generated.append(token)
        row.budget -= 1
        if token in s.stop_ids:
            yield from self._finish(row, "eos")
            return
        if token in s.closer_for:  # an opener
            if row.budget == 0:
                yield from self._finish(row, "length")
                return
            self._open_span(row, token)
            yield from self._maybe_forced_close(row)
            return
        self.stats.text_tokens += 1
        delta = row.detok.push(token)
        if delta:
            yield TextDelta(row.index, delta)
        if row.budget == 0:
            yield from self._finish(row, "length")
        else:
            row.next_token = token

    def _finish(self, row: _Row, reason: str) -> Iterator[Event]:
        rest = row.detok.flush()
        if rest:
            yield TextDelta(row.index, rest)
        row.finish_reason = reason
        yield TurnEnd(row.index, reason)

    # -- audio spans --------------------------------------------------------------------------------
    def _open_span(self, row: _Row, opener: int) -> None:
        limit = min(self.sampler.cfg.max_span, row.budget - 1)  # leave room for the closer
        span = _Span(index=len(row.spans), opener=opener, closer=self.sampler.closer_for[opener], limit=limit,
                     ids=[opener])
        row.spans.append(np.zeros(0, dtype=np.int64))
        row.span = span
        self._append_block(span)

    def _append_block(self, span: _Span) -> None:
        cfg = self.sampler.cfg
        n = min(cfg.block_length, span.limit - (len(span.ids) - 1))
        span.block_start = len(span.ids)
        span.ids += [self.sampler.vocab.mask_id] * n
        span.step = 0
        span.schedule = commit_schedule(n, cfg.steps_per_block) if n else []

    def _maybe_forced_close(self, row: _Row) -> Iterator[Event]:
        """A span with no room left for codes is closed at once."""
        span = row.span
        assert span is not None
        if span.block_start == len(span.ids):
            span.ids.append(span.closer)
            span.forced = True
            yield from self._close(row)

    def _after_step(self, row: _Row, hidden: torch.Tensor) -> Iterator[Event]:
        """One diffusion step: `hidden` [len(span), H] holds every span position's state."""
        s, span = self.sampler, row.span
        assert span is not None
        mask_id = s.vocab.mask_id
        ids = span.ids
        targets = np.array([j for j in range(span.block_start, len(ids)) if ids[j] == mask_id], dtype=np.int64)
        # span position j - 1 predicts token j; the chunk started at span position `fed`
        states = hidden[torch.as_tensor(targets - 1 - span.fed, device=hidden.device)]
        tokens, conf = s.propose_audio(row.index, row.generated, states, targets, span.closer, row.generator)
        k = span.schedule[min(span.step, len(span.schedule) - 1)]
        picked = tokens.tolist()
        for i in select_commits(conf, k, s.cfg.threshold).tolist():
            ids[int(targets[i])] = picked[i]
        span.step += 1
        self.stats.diffusion_steps += 1
        cut = self._first_closer(span)
        if cut is not None:
            # training's span ends at its closer: what follows it must leave the block now, not when the span
            # closes, or the steps that still fill the masks before the closer would attend to it
            del ids[cut + 1 :]
        if mask_id in ids[span.block_start :]:
            return
        if cut is not None:
            yield from self._close(row)
            return
        yield from self._emit(row, len(ids))
        if len(ids) - 1 >= span.limit:
            ids.append(span.closer)
            span.forced = True
            yield from self._close(row)
        else:
            self._append_block(span)

    def _first_closer(self, span: _Span) -> int | None:
        try:
            return span.ids.index(span.closer, 1)
        except ValueError:
            return None

    def _emit(self, row: _Row, end: int) -> Iterator[Event]:
        span = row.span
        assert span is not None
        if end > span.emitted:
            codes = np.asarray(span.ids[span.emitted : end], dtype=np.int64) - self.sampler.vocab.audio_offset
            span.emitted = end
            yield AudioBlock(row.index, span.index, codes)

    def _close(self, row: _Row) -> Iterator[Event]:
        """The span is final (ids end with its closer): emit the rest, account for it, and queue the pass
        that commits its keys/values."""
        span = row.span
        assert span is not None
        yield from self._emit(row, len(span.ids) - 1)
        n_codes = len(span.ids) - 2
        row.spans[span.index] = np.asarray(span.ids[1:-1], dtype=np.int64) - self.sampler.vocab.audio_offset
        row.generated += span.ids[1:]
        row.budget -= len(span.ids) - 1
        span.closing = True
        self.stats.spans += 1
        self.stats.audio_tokens += n_codes
        yield SpanEnd(row.index, span.index, span.opener == self.sampler.vocab.id(SOA_FINAL), n_codes, span.forced)
        if row.budget == 0:
            yield from self._finish(row, "length")


class ArDecodeRun(DecodeRun):
    """The AR baseline's decoder (objective mode `ar`): every token autoregressive, causal attention everywhere.

    Training (plan_targets, mode `ar`) has no bidirectional block at all, prompt audio spans included, and every
    target token (text, openers, codes, closers, <|im_end|>) is predicted by the position before it. So after
    an opener the codes are sampled one per forward pass through the KV cache (`audio` sampling params),
    restricted to audio codes + the opener's closer (the same restriction as TtT's spans); at `max_span` codes
    (or when the token budget leaves room for the closer only) the closer is forced as the token the last code's
    (or, with no room for a code, the opener's) state predicts, so that code is fed first. The closer is then fed
    like any token and its state predicts the next text token. For streaming, an `AudioBlock` goes out every
    `block_length` codes (and with the rest at the closer), so the codec's streaming decoder works unchanged.
    """

    def _chunk(self, row: _Row) -> Chunk:
        span = row.span
        if not row.prefilled or span is None:
            return super()._chunk(row)
        return Chunk(row.index, [span.ids[-1]], np.full(1, -1), keep=1, last_only=True)

    def _after_last(self, row: _Row, hidden: torch.Tensor) -> Iterator[Event]:
        if row.span is None:
            yield from super()._after_last(row, hidden)
            return
        span, s = row.span, self.sampler
        if len(span.ids) - 1 >= span.limit:
            # no room for another code: the closer is this position's token. Forcing it here, when it is
            # predicted, and not right after the code that filled the span, is what keeps that code fed: every
            # generated token enters the context before the next one is chosen, as in training (and HF generate)
            span.ids.append(span.closer)
            span.forced = True
            yield from self._close(row)
            return
        targets = np.array([len(span.ids)])
        tokens, _ = s.propose_audio(row.index, row.generated, hidden[None], targets, span.closer, row.generator)
        span.ids.append(int(tokens[0]))
        if span.ids[-1] == span.closer:
            yield from self._close(row)
        elif (len(span.ids) - 1) % s.cfg.block_length == 0:
            yield from self._emit(row, len(span.ids))

    def _open_span(self, row: _Row, opener: int) -> None:
        limit = min(self.sampler.cfg.max_span, row.budget - 1)  # leave room for the closer
        row.spans.append(np.zeros(0, dtype=np.int64))
        row.span = _Span(index=len(row.spans) - 1, opener=opener, closer=self.sampler.closer_for[opener], limit=limit,
                         ids=[opener])

    def _maybe_forced_close(self, row: _Row) -> Iterator[Event]:
        """Nothing at the opener: the opener is fed first, and `_after_last` forces the closer its state predicts
        when the span has no room for a code (limit 0)."""
        return iter(())

    def _close(self, row: _Row) -> Iterator[Event]:
        """As TtT's, but the closer is not yet in the cache: it is fed next as a causal token."""
        span = row.span
        assert span is not None
        yield from super()._close(row)
        row.span, row.next_token = None, span.closer


class NarDecodeRun(DecodeRun):
    """The NAR baseline's decoder (objective mode `nar`): the whole response is masked diffusion in one block.

    Training (plan_targets, mode `nar`): an assistant turn's content + <|im_end|> is one target run; the run and
    the position just before it (the "\n" of the assistant header) form one bidirectional block; every target
    token of the run, text and audio alike, is masked with probability p and predicted by the position before
    it; prompt audio spans and earlier assistant turns are blocks of their own. The faithful decoder is
    therefore: cache the prompt up to the response's block (causal / prompt blocks, as `prompt_block_ids`),
    then grow the block [prompt's last token, response...] by `block_length` masks at a time (semi-
    autoregressive growth, as LLaDA's block decoding); every diffusion step runs the WHOLE block bidirectionally
    (committed response tokens and masks, nothing committed to the cache) and commits the most confident masks
    of the newest block (`steps_per_block` schedule or `threshold`), over every token a training target can be
    (text ids, openers, the two assistant closers, codes; `text` sampling params). Once <|im_end|> (or
    <|endoftext|>) is committed, everything after it leaves the block at once (training's block ends exactly at
    <|im_end|>, so the steps that still fill the masks before it must not attend past it), and the response ends
    when no mask is left; a block filled without one appends the next block, up to the token budget ("length").

    Where it cannot be faithful, and why:
    - Length: training always sees the block end exactly at <|im_end|>, so the block's extent tells the model the
      answer's length; at inference the length is unknown and the block's end is only where the current masks
      stop. (LLaDA trains with <|endoftext|> padding to make a fixed canvas meaningful; this objective does not,
      so no canvas size matches training. Growing block by block keeps the end close to the committed text.)
    - Structure: tokens are chosen in parallel, so nothing can force span structure. `max_span` does not apply
      (no closer can be forced into a position another step may already have filled). Events are read off the
      committed tokens in order, one block at a time (the tokens of a finished block never change): text ids
      become `TextDelta`s, an opener opens a span, codes inside it go out as `AudioBlock`s, its closer (or any
      other non-code token, which then counts as usual) ends it (`SpanEnd`; `forced` when not closed by its own
      closer), and codes or closers outside a span are kept in `ids` but are neither text nor speech.
    """

    def __init__(self, sampler: TtTSampler, prompts: list[list[int]]) -> None:
        super().__init__(sampler, prompts)
        for row in self.rows:
            blocks = row.prompt_blocks
            cut = int(np.flatnonzero(blocks == blocks[-1])[0])  # the response block starts here
            row.prompt, row.response = row.prompt[:cut], _Response(head=row.prompt[cut:])
            row.prefilled = cut == 0
            self._append_block(row)

    def _chunk(self, row: _Row) -> Chunk:
        if not row.prefilled:
            row.prefilled = True
            return Chunk(row.index, row.prompt, row.prompt_blocks[: len(row.prompt)], keep=len(row.prompt),
                         last_only=True)
        resp = row.response
        assert resp is not None
        return Chunk(row.index, resp.head + resp.ids, np.zeros(len(resp.head) + len(resp.ids), dtype=np.int64),
                     keep=0, last_only=False)

    def _after_last(self, row: _Row, hidden: torch.Tensor) -> Iterator[Event]:
        """The prompt prefix is in the cache; nothing is predicted from it (the response block predicts itself)."""
        return iter(())

    def _append_block(self, row: _Row) -> None:
        resp, cfg = row.response, self.sampler.cfg
        assert resp is not None
        n = min(cfg.block_length, row.budget - len(resp.ids))
        resp.block_start = len(resp.ids)
        resp.ids += [self.sampler.vocab.mask_id] * n
        resp.step = 0
        resp.schedule = commit_schedule(n, cfg.steps_per_block)

    def _first_stop(self, ids: list[int]) -> int | None:
        return next((j for j, t in enumerate(ids) if t in self.sampler.stop_ids), None)

    def _after_step(self, row: _Row, hidden: torch.Tensor) -> Iterator[Event]:
        """One diffusion step: `hidden` [len(head) + len(ids), H] holds every state of the response block."""
        s, resp = self.sampler, row.response
        assert resp is not None
        mask_id, ids = s.vocab.mask_id, resp.ids
        targets = np.array([j for j in range(resp.block_start, len(ids)) if ids[j] == mask_id], dtype=np.int64)
        # response token j sits at block position len(head) + j and is predicted by the position before it
        states = hidden[torch.as_tensor(len(resp.head) + targets - 1, device=hidden.device)]
        tokens, conf = s.propose_response(row.index, row.generated, states, targets, row.generator)
        k = resp.schedule[min(resp.step, len(resp.schedule) - 1)]
        picked = tokens.tolist()
        for i in select_commits(conf, k, s.cfg.threshold).tolist():
            ids[int(targets[i])] = picked[i]
        resp.step += 1
        self.stats.diffusion_steps += 1
        stop = self._first_stop(ids)
        if stop is not None:
            # training's block ends exactly at <|im_end|>: what follows it must leave the block now, not when the
            # turn ends, or the steps that still fill the masks before it would attend to it
            del ids[stop + 1 :]
        if mask_id in ids[resp.block_start :]:
            return
        if stop is not None:
            yield from self._parse(row, stop)
            row.generated = list(ids)
            yield from self._end_span(row, forced=True)
            yield from self._finish(row, "eos")
            return
        yield from self._parse(row, len(ids))
        row.generated = list(ids)
        if len(ids) >= row.budget:
            yield from self._end_span(row, forced=True)
            yield from self._finish(row, "length")
        else:
            self._append_block(row)

    def _parse(self, row: _Row, end: int) -> Iterator[Event]:
        """Events for the committed response tokens [parsed, end) (see the class docstring)."""
        s, resp = self.sampler, row.response
        assert resp is not None
        v = s.vocab
        for token in resp.ids[resp.parsed : end]:
            if resp.closer is not None:
                if v.audio_offset <= token < v.audio_offset + v.codebook_size:
                    resp.codes.append(token - v.audio_offset)
                    continue
                closed = token == resp.closer
                yield from self._end_span(row, forced=not closed)
                if closed:
                    continue
            if token in s.closer_for:
                row.spans.append(np.zeros(0, dtype=np.int64))
                resp.opener, resp.closer, resp.codes, resp.emitted = token, s.closer_for[token], [], 0
            elif token < v.text_vocab_size:
                self.stats.text_tokens += 1
                delta = row.detok.push(token)
                if delta:
                    yield TextDelta(row.index, delta)
        resp.parsed = end
        yield from self._emit_codes(row)

    def _emit_codes(self, row: _Row) -> Iterator[Event]:
        resp = row.response
        assert resp is not None
        if resp.closer is not None and len(resp.codes) > resp.emitted:
            yield AudioBlock(row.index, len(row.spans) - 1, np.asarray(resp.codes[resp.emitted :], dtype=np.int64))
            resp.emitted = len(resp.codes)

    def _end_span(self, row: _Row, forced: bool) -> Iterator[Event]:
        resp = row.response
        assert resp is not None
        if resp.closer is None:
            return
        yield from self._emit_codes(row)
        index = len(row.spans) - 1
        row.spans[index] = np.asarray(resp.codes, dtype=np.int64)
        self.stats.spans += 1
        self.stats.audio_tokens += len(resp.codes)
        yield SpanEnd(row.index, index, resp.opener == self.sampler.vocab.id(SOA_FINAL), len(resp.codes), forced)
        resp.closer = resp.opener = None
        resp.codes = []


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


def chat_spans(vocab: UnifiedVocab, ids: Sequence[int]) -> list[Span]:
    """The span table `build_chat` would give `ids`, recovered from the ids (roles, targets and turns included).

    A turn starts at <|im_start|> followed by a known role header ("system\n", "user\n", "assistant\n"); an
    assistant turn's content and its <|im_end|> are targets, headers and everything else are not (an unknown
    header or tokens outside any turn count as prompt). An assistant turn left open at the end of `ids` (the
    generation prompt, or a prefilled answer) is a target up to the end.
    """
    arr = np.asarray(ids, dtype=np.int64)
    n = len(arr)
    target = np.zeros(n, dtype=bool)
    turn = np.zeros(n, dtype=np.int64)
    role = np.full(n, "user", dtype=object)
    im_start, im_end = vocab.id(IM_START), vocab.id(IM_END)
    headers = {r: [im_start, *vocab.encode_text(f"{r}\n")] for r in ("system", "user", "assistant")}
    i, t, content_target = 0, 0, False
    while i < n:
        if arr[i] == im_start:
            t += int(i > 0)
            name = next((r for r, h in headers.items() if arr[i : i + len(h)].tolist() == h), "user")
            width = len(headers[name]) if arr[i : i + len(headers[name])].tolist() == headers[name] else 1
            turn[i : i + width], role[i : i + width] = t, name
            i += width
            content_target = name == "assistant"
            continue
        turn[i], role[i], target[i] = t, role[i - 1] if i else "user", content_target
        content_target = content_target and arr[i] != im_end
        i += 1
    spans: list[Span] = []
    for span in spans_from_ids(vocab, arr):
        if span.kind == "audio":
            spans.append(Span("audio", span.start, span.end, str(role[span.start]), bool(target[span.start]),
                              span.is_final_in_turn, int(turn[span.start])))
            continue
        start = span.start
        for j in range(span.start + 1, span.end + 1):
            if j == span.end or (target[j], turn[j], role[j]) != (target[start], turn[start], role[start]):
                spans.append(Span("text", start, j, str(role[start]), bool(target[start]), False, int(turn[start])))
                start = j
    return spans


def prompt_block_ids(vocab: UnifiedVocab, ids: Sequence[int], mode: str = "ttt",
                     span_block: int | None = None) -> np.ndarray:
    """Block ids of a prompt (-1 = causal token) as the training mask of objective `mode` defines them:
    `plan_targets` over the prompt's chat span table. ttt: one block per audio span (`span_block`: block-causal
    blocks of that length per span); ar: none; nar: prompt audio
    spans and earlier assistant turns (each with the position before it), and the prompt's last token (with
    the block it sits in) carries the block the response will join, since the response is a target run and
    the position before a run belongs to its block.

    A prompt must end outside any audio span: decoding starts with a text token, and an open span's
    block would have to include tokens not yet generated.
    """
    arr = np.asarray(ids, dtype=np.int64)
    closers = set(vocab.closer_ids())
    spans = chat_spans(vocab, arr)
    last = spans[-1] if spans else None
    if last is not None and last.kind == "audio" and int(arr[-1]) not in closers:
        raise ValueError("the prompt ends inside an open audio span; close it (or drop it) before generating")
    blocks = plan_targets(spans, len(arr), mode, frozenset(), span_block).block_ids.astype(np.int64)
    if mode == "nar" and len(arr) and blocks[-1] < 0:
        blocks[-1] = blocks.max() + 1
    return blocks
