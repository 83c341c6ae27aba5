"""TtT decoding: autoregressive text, block-wise masked diffusion for audio spans (paper Algorithm 1).

Conventions are the training ones (ttt_model/objective.py, tokenization/sequence.py): the logits at position
i predict token i + 1, for text and masked audio alike; an audio span [opener, codes..., closer] is one
bidirectional block that includes its opener; text is causal; nothing attends to the future outside its
own span. Per row of a batch, decoding is a small state machine:

- text: one token per forward pass (KV cache), sampled from text ids and the two span openers. <|im_end|>
  (or <|endoftext|>) ends the turn.
- audio span: after an opener (<|begin_of_audio|> closes with <|end_of_audio_new|>, <|begin_of_quad|> with
  <|end_of_audio_span_last|>) the span is [opener, M x block_length]. Each diffusion step runs the model on
  the span only (bidirectional inside it, full attention to the cached prefix); the position before each
  masked token predicts it, restricted to audio codes + the matching closer, and the most confident
  masked positions of the current block are committed (a per-block schedule of `steps_per_block` steps, or
  everything above `threshold`, as Fast-dLLM). Committed tokens stay. Once a closer is committed with no
  mask before it the span ends there (early termination; the rest of the block is dropped); a block filled
  without a closer appends the next block of masks; at `max_span` codes the closer is forced.
- closing: the finished span is run once more with the span-block mask and its keys/values are committed
  to the cache exactly as training sees a clean span; the closer's logits predict the next text token.

Two interchangeable backends compute the hidden states: `CachedBackend` (ttt_model/kvcache.py; ragged KV
cache, one-token text steps, span-only diffusion steps) and `RecomputeBackend` here, the reference's
method: the full sequence re-run for every token and every diffusion step under the training mask
(`ttt_model.attention.sdpa_mask`). The oracle exists to prove the fast path exact: in greedy mode both
produce the same tokens. All token choices (sampling.py) are shared, so any difference is the cache's.

`logits_processor(context, logits) -> logits` is a generic hook called before every choice (per row): text
logits are [1, V] over vocabulary ids, audio logits [m, C + 1] over `context.column_ids` (codes, then the
closer) for the span positions `context.targets`. The vocabulary restriction is applied after it, so a
processor can bias or force tokens (tests force openers and closers on random models with it) but can
never make the model emit a token its mode does not allow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from transformers import Qwen2ForCausalLM

from tokenization.sequence import spans_from_ids
from tokenization.vocab import EOA, EOA_FINAL, SOA, SOA_FINAL, UnifiedVocab
from ttt_model.attention import sdpa_mask
from ttt_model.kvcache import CachedBackend, Chunk
from ttt_model.model import attention_backend
from ttt_model.sampling import SamplingParams, choose, commit_schedule, select_commits

BACKENDS = ("cache", "recompute")


@dataclass(frozen=True)
class SamplerConfig:
    """Mirrors workflows/conf/sampler/default.yaml.

    `steps_per_block`: diffusion steps per block of `block_length` masks (the paper's 200 steps over a
    640-token span at block length 32 is 10 per block). `max_span`: most codes in one span (640 in the
    paper). `max_new_tokens`: generated tokens per row, everything counted (text, markers, codes).
    `threshold`: None = the fixed schedule; a probability = commit every position at least this confident.
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

    def __post_init__(self) -> None:
        for name in ("block_length", "steps_per_block", "max_span", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"sampler {name} must be >= 1, got {getattr(self, name)}")
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"sampler threshold must be in (0, 1] or null, got {self.threshold}")
        if self.backend not in BACKENDS:
            raise ValueError(f"sampler backend must be one of {BACKENDS}, got {self.backend!r}")

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
    """Span `span` of row `row` is complete: `n_codes` codes, closed by the model or `forced` at max_span."""

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
    mode: str  # "text" | "audio"
    generated: Sequence[int]  # ids generated so far by this row (the open span not included)
    column_ids: torch.Tensor  # vocabulary id of each logits column
    targets: np.ndarray | None = None  # audio: span index of the token each logits row predicts


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

    def _one(self, chunk: Chunk) -> torch.Tensor:
        r, device = chunk.row, self.model.device
        local = np.asarray(chunk.blocks, dtype=np.int64)
        chunk_blocks = np.where(local >= 0, local + self.n_blocks[r], -1).tolist()
        ids = torch.tensor([self.tokens[r] + list(chunk.ids)], device=device)
        blocks = torch.tensor([self.blocks[r] + chunk_blocks], device=device)
        mask = sdpa_mask(torch.zeros_like(ids), blocks)
        hidden = self.model.model(
            input_ids=ids,
            position_ids=torch.arange(ids.shape[1], device=device)[None],
            attention_mask=dict.fromkeys(self.model.config.layer_types, mask),
            use_cache=False,
        ).last_hidden_state[0, -len(chunk):]
        if chunk.commit:
            self.tokens[r] += list(chunk.ids)
            self.blocks[r] += chunk_blocks
            self.n_blocks[r] += int(local.max(initial=-1)) + 1
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
    closing: bool = False
    forced: bool = False


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


# ---- the sampler ----------------------------------------------------------------------------------


class TtTSampler:
    """Decodes chat prompts (unified-vocabulary ids, e.g. `build_chat(..., add_generation_prompt=True)`).

    `generate(prompts)` returns one `Generation` per prompt; `start(prompts)` returns a `DecodeRun` to
    iterate for streaming events. The model must use the sdpa attention implementation (bool masks).
    """

    def __init__(self, model: Qwen2ForCausalLM, vocab: UnifiedVocab, cfg: SamplerConfig | None = None,
                 logits_processor: LogitsProcessor | None = None, max_length: int | None = None) -> None:
        if attention_backend(model) != "sdpa":
            raise ValueError("the sampler needs attn_implementation='sdpa' (its masks are bool tensors); load the "
                             "model with attn_implementation='sdpa'")
        self.model = model.eval()
        self.vocab = vocab
        self.cfg = cfg or SamplerConfig()
        self.logits_processor = logits_processor
        self.max_length = int(max_length or model.config.max_position_embeddings)
        self.head = model.get_output_embeddings().weight
        self.device = self.head.device
        n_rows = self.head.shape[0]
        allowed = torch.zeros(n_rows, dtype=torch.bool)
        allowed[: vocab.text_vocab_size] = True
        allowed[list(vocab.opener_ids())] = True
        self._text_allowed = allowed.to(self.device)
        self._text_columns = torch.arange(n_rows, device=self.device)
        self._audio_columns = {
            closer: torch.cat([torch.arange(vocab.audio_offset, vocab.audio_offset + vocab.codebook_size),
                               torch.tensor([closer])]).to(self.device)
            for closer in (vocab.id(EOA), vocab.id(EOA_FINAL))
        }
        self.closer_for = {vocab.id(SOA): vocab.id(EOA), vocab.id(SOA_FINAL): vocab.id(EOA_FINAL)}
        self.stop_ids = frozenset((vocab.eos_id, vocab.pad_id))

    def start(self, prompts: Sequence[Sequence[int]]) -> DecodeRun:
        return DecodeRun(self, [self._check_prompt(p) for p in prompts])

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
        self.rows = [
            _Row(index=i, prompt=p, prompt_blocks=prompt_block_ids(sampler.vocab, p),
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
            return Chunk(row.index, row.prompt, row.prompt_blocks, commit=True, last_only=True)
        span = row.span
        if span is None:
            assert row.next_token is not None
            return Chunk(row.index, [row.next_token], np.full(1, -1), commit=True, last_only=True)
        blocks = np.zeros(len(span.ids), dtype=np.int64)
        return Chunk(row.index, list(span.ids), blocks, commit=span.closing, last_only=span.closing)

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
        cut = self._first_closer(span)
        end = len(ids) if cut is None else cut  # masks after a committed closer are dropped at the end anyway
        targets = np.array([j for j in range(span.block_start, end) if ids[j] == mask_id])
        states = hidden[torch.as_tensor(targets - 1, device=hidden.device)]  # position j - 1 predicts token j
        tokens, conf = s.propose_audio(row.index, row.generated, states, targets, span.closer, row.generator)
        k = span.schedule[min(span.step, len(span.schedule) - 1)]
        picked = tokens.tolist()
        for i in select_commits(conf, k, s.cfg.threshold).tolist():
            ids[int(targets[i])] = picked[i]
        span.step += 1
        self.stats.diffusion_steps += 1
        cut = self._first_closer(span)
        if cut is not None and mask_id not in ids[span.block_start : cut]:
            del ids[cut + 1 :]
            yield from self._close(row)
        elif mask_id not in ids[span.block_start :]:
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


def prompt_block_ids(vocab: UnifiedVocab, ids: Sequence[int]) -> np.ndarray:
    """Block ids of a prompt (one block per audio span, -1 for text), as the training mask defines them.

    A prompt must end outside any audio span: decoding starts with a text token, and an open span's
    block would have to include tokens not yet generated.
    """
    arr = np.asarray(ids, dtype=np.int64)
    blocks = np.full(len(arr), -1, dtype=np.int64)
    closers = set(vocab.closer_ids())
    n = 0
    for span in spans_from_ids(vocab, arr):
        if span.kind != "audio":
            continue
        if span.end == len(arr) and int(arr[-1]) not in closers:
            raise ValueError("the prompt ends inside an open audio span; close it (or drop it) before generating")
        blocks[span.start : span.end] = n
        n += 1
    return blocks
