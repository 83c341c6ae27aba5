"""The TtT sampler: the cached fast path reproduces the full-recompute oracle token for token, spans are
well formed and respect every limit, streaming events add up to the results.

Random tiny models in float64 (so cached and recomputed hidden states agree to ~1e-15 and a greedy tie
cannot flip between the two paths), over a byte-level text vocabulary (259 ids instead of Qwen's 151k, so
the LM head costs nothing; multi-byte characters still span several tokens). Random weights almost never
open or close a span by themselves, so a test-only logits processor (the sampler's generic hook) forces
openers after a few text tokens, pushes the closer up from a chosen span position (early termination
mid-block), and ends the turn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from tokenization.codecs.base import CodecIdentity
from tokenization.sequence import Part, Turn, build_chat, spans_from_ids, validate_spans
from tokenization.text import TextTokenizer
from tokenization.vocab import EOA, EOA_FINAL, SOA, SOA_FINAL, UnifiedVocab
from ttt_model.core.model import build_model
from ttt_model.core.objective import plan_targets
from ttt_model.decoding.events import AudioBlock, Generation, LogitsContext, SpanEnd, TextDelta, TurnEnd
from ttt_model.decoding.kv_cache import CachedBackend, Chunk
from ttt_model.decoding.prompt import chat_spans, prompt_block_ids
from ttt_model.decoding.recompute import RecomputeBackend
from ttt_model.decoding.row_state import Detokenizer
from ttt_model.decoding.sampler_config import SamplerConfig, SamplingParams
from ttt_model.decoding.token_sampling import commit_schedule, filter_logits, select_commits
from ttt_model.decoding.ttt_sampler import TtTSampler

CONF = Path(__file__).resolve().parents[2] / "workflows" / "conf" / "sampler" / "default.yaml"
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 512, "tie_word_embeddings": True}


def byte_tokenizer() -> TextTokenizer:
    """Byte-level BPE without merges (one token per UTF-8 byte) plus the Qwen chat specials."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.encode_special_tokens = True
    return TextTokenizer(tok, "bytes", hashlib.sha256(tok.to_str().encode()).hexdigest())


@pytest.fixture(scope="module")
def vocab() -> UnifiedVocab:
    return UnifiedVocab(byte_tokenizer(), CodecIdentity("test", "1", 25.0, 512, 16000, 16000, "h"))


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a busy machine spinning threads cost a lot."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(vocab: UnifiedVocab) -> torch.nn.Module:
    return build_model({"init": "random", "config": TINY, "attn_implementation": "sdpa", "seed": 3},
                       vocab).to(torch.float64).eval()


def forcing(vocab: UnifiedVocab, every: int = 4, end_after: int = 70,
            closer_from: dict[int, int] | None = None) -> Callable[[LogitsContext, torch.Tensor], torch.Tensor]:
    """Open a span after `every` text tokens (alternating the two openers), end the turn once `end_after`
    tokens are generated, and in row r bias the closer from span position `closer_from[r]` on."""
    openers = (vocab.id(SOA), vocab.id(SOA_FINAL))
    closer_from = closer_from or {}

    def process(ctx: LogitsContext, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        if ctx.mode == "audio":
            if ctx.row in closer_from:
                logits[torch.as_tensor(ctx.targets >= closer_from[ctx.row]), -1] += 40.0
            return logits
        ids = list(ctx.generated)
        if len(ids) >= end_after:
            logits[:, vocab.eos_id] += 1e4
            return logits
        logits[:, [vocab.eos_id, vocab.pad_id]] -= 1e4  # no early stop
        run = 0
        while run < len(ids) and ids[-1 - run] < vocab.text_vocab_size:
            run += 1
        if run >= every:
            n_spans = sum(i in openers for i in ids)
            logits[:, openers[n_spans % 2]] += 1e4
        return logits

    return process


def prompts(vocab: UnifiedVocab) -> list[list[int]]:
    rng = np.random.default_rng(0)
    chat = build_chat(vocab, [Turn("user", [Part(text="Say hi."), Part.audio(rng.integers(0, 512, 9))])],
                      add_generation_prompt=True).input_ids.tolist()
    return [chat, rng.integers(0, 250, 3).tolist(), rng.integers(0, 250, 30).tolist()]


def block_causal(block: int) -> dict[str, object]:
    """The objective record (objective.json) of a checkpoint trained with block-causal audio spans."""
    return {"mode": "ttt", "audio_attention": "block_causal", "audio_block": block}


def run_all(model: torch.nn.Module, vocab: UnifiedVocab, cfg: SamplerConfig, prompts: list[list[int]],
            process: Callable | None, objective: dict | None = None) -> tuple[list, list]:
    run = TtTSampler(model, vocab, cfg, process, objective=objective).start(prompts)
    events = list(run)
    return run.results(), events


class RecordingOracle(RecomputeBackend):
    """The recompute oracle that records, per row, the whole input of every pass and the block ids it attended
    with: what the model actually saw, to compare with the generated sequence and with the training mask."""

    def __init__(self, model: torch.nn.Module, batch: int) -> None:
        super().__init__(model, batch)
        self.passes: list[list[tuple[list[int], list[int]]]] = [[] for _ in range(batch)]

    def _forward_chunk(self, chunk: Chunk) -> torch.Tensor:
        self.passes[chunk.row].append(self.inputs(chunk))
        return super()._forward_chunk(chunk)


def recorded_run(model: torch.nn.Module, vocab: UnifiedVocab, cfg: SamplerConfig, prompts: list[list[int]],
                 process: Callable | None, objective: dict | None = None) -> tuple[RecordingOracle, list[Generation]]:
    recompute = SamplerConfig(**{**cfg.__dict__, "backend": "recompute"})
    run = TtTSampler(model, vocab, recompute, process, objective=objective).start(prompts)
    run.backend = oracle = RecordingOracle(model, len(prompts))
    list(run)
    return oracle, run.results()


def assert_fed_the_generation(vocab: UnifiedVocab, oracle: RecordingOracle, prompts: list[list[int]],
                              gens: list[Generation], decode: str, span_block: int | None = None) -> None:
    """The model saw exactly prompt + generated ids: every token of every pass's input is that sequence's token at
    its position, or a mask (masks may reach past the end: a span or response can end before its block does);
    (ttt, ar) the committed context is all of it but the tail no choice depended on (the last token; for a TtT
    turn ended by the budget at a closer, the last span, whose closing pass never runs, less its attention blocks
    before the last decoded one when block-causal: the first step of each block committed the block before it);
    nar commits only the prompt before the response block, and its last step ran the whole response."""
    closers = set(vocab.closer_ids())
    for r, (prompt, g) in enumerate(zip(prompts, gens, strict=True)):
        seq = prompt + g.ids
        for ids, _ in oracle.passes[r]:
            assert all(t == vocab.mask_id or (i < len(seq) and t == seq[i]) for i, t in enumerate(ids))
        if decode == "nar":
            assert len(oracle.passes[r][-1][0]) == len(seq) and oracle.tokens[r] == prompt[: len(oracle.tokens[r])]
            continue
        last_span = decode == "ttt" and g.finish_reason == "length" and g.ids[-1] in closers
        unfed = len(g.spans[-1]) + 2 if last_span else 1
        if last_span and span_block is not None:
            unfed -= span_block * max(0, -(-len(g.spans[-1]) // span_block) - 1)
        assert oracle.tokens[r] == seq[:-unfed]


def canonical(blocks: np.ndarray | list[int]) -> list[int]:
    """Block ids renumbered by first appearance (-1 kept), so two numberings of one partition compare equal."""
    names: dict[int, int] = {}
    return [-1 if b < 0 else names.setdefault(int(b), len(names)) for b in blocks]


def training_blocks(vocab: UnifiedVocab, ids: list[int], mode: str, span_block: int | None = None) -> list[int]:
    """Block ids the training mask of `mode` gives `ids` (plan_targets over its chat span table), canonical.
    Training computes blocks from the clean sequence, so a mask stands for a code here (ttt masks only codes; in
    nar any target token of the response joins the same block)."""
    clean = [vocab.audio_offset if t == vocab.mask_id else t for t in ids]
    return canonical(plan_targets(chat_spans(vocab, clean), len(clean), mode, frozenset(), span_block).block_ids)


CFG = SamplerConfig(block_length=8, steps_per_block=3, max_span=20, max_new_tokens=90)


@pytest.mark.parametrize("objective", [None, block_causal(CFG.block_length)], ids=["bidirectional", "block_causal"])
def test_cached_sampler_equals_full_recompute_oracle_greedy(model: torch.nn.Module, vocab: UnifiedVocab,
                                                            objective: dict | None) -> None:
    # row 0: closer pushed from span position 11 (early termination inside the 2nd block);
    # row 1: from position 3 (inside the 1st block); row 2: never, so its spans hit max_span and are forced closed
    process = forcing(vocab, closer_from={0: 11, 1: 3})
    ps = prompts(vocab)
    fast, fast_events = run_all(model, vocab, CFG, ps, process, objective)
    recompute = SamplerConfig(**{**CFG.__dict__, "backend": "recompute"})
    slow, slow_events = run_all(model, vocab, recompute, ps, process, objective)
    assert [g.ids for g in fast] == [g.ids for g in slow]
    assert [repr(e) for e in fast_events] == [repr(e) for e in slow_events]
    ends = [e for e in fast_events if isinstance(e, SpanEnd)]
    assert {e.row for e in ends} == {0, 1, 2} and all(len(g.spans) >= 2 for g in fast)  # several spans per turn
    assert {e.final for e in ends} == {True, False}  # both openers, each closed by its own closer
    assert all(e.forced and e.n_codes == CFG.max_span for e in ends if e.row == 2)
    assert all(not e.forced and e.n_codes < CFG.block_length * 2 for e in ends if e.row == 0)
    assert any(e.n_codes % CFG.block_length for e in ends if e.row == 0)  # ended in the middle of a block
    assert all(not e.forced and e.n_codes < CFG.block_length for e in ends if e.row == 1)


def test_results_are_well_formed_and_match_the_stream(model: torch.nn.Module, vocab: UnifiedVocab) -> None:
    ps = prompts(vocab)
    gens, events = run_all(model, vocab, CFG, ps, forcing(vocab, closer_from={1: 5}))
    for row, g in enumerate(gens):
        validate_spans(vocab, np.asarray(g.ids), spans_from_ids(vocab, np.asarray(g.ids)))
        assert g.finish_reason == "eos" and g.ids[-1] == vocab.eos_id
        assert len(g.ids) <= CFG.max_new_tokens and all(len(s) <= CFG.max_span for s in g.spans)
        mine = [e for e in events if e.row == row]
        assert isinstance(mine[-1], TurnEnd) and sum(isinstance(e, TurnEnd) for e in mine) == 1
        assert "".join(e.text for e in mine if isinstance(e, TextDelta)) == g.text
        for k, span in enumerate(g.spans):
            blocks = [e.codes for e in mine if isinstance(e, AudioBlock) and e.span == k]
            assert np.array_equal(np.concatenate(blocks), span)
            assert all(len(b) <= CFG.block_length for b in blocks)
        closers = [i for i in g.ids if i in (vocab.id(EOA), vocab.id(EOA_FINAL))]
        assert len(closers) == len(g.spans) == sum(isinstance(e, SpanEnd) for e in mine)


def test_batched_rows_equal_rows_decoded_alone(model: torch.nn.Module, vocab: UnifiedVocab) -> None:
    process = forcing(vocab, closer_from={0: 6})
    ps = prompts(vocab)
    batch, _ = run_all(model, vocab, CFG, ps, process)
    alone, _ = run_all(model, vocab, CFG, ps[:1], process)
    assert batch[0].ids == alone[0].ids
    # the other rows, alone at row 0, get no closer bias: compare against the batch run without one
    plain, _ = run_all(model, vocab, CFG, ps, forcing(vocab))
    for i in (1, 2):
        assert run_all(model, vocab, CFG, [ps[i]], forcing(vocab))[0][0].ids == plain[i].ids


@pytest.mark.parametrize("objective", [None, block_causal(8)], ids=["bidirectional", "block_causal"])
@pytest.mark.parametrize("cfg", [
    SamplerConfig(block_length=8, steps_per_block=4, max_span=24, max_new_tokens=60, seed=5,
                  text=SamplingParams(temperature=0.9, top_k=50), audio=SamplingParams(temperature=0.8, top_p=0.9)),
    SamplerConfig(block_length=8, steps_per_block=8, max_span=24, max_new_tokens=60, threshold=0.003),
], ids=["sampling", "threshold"])
def test_sampling_and_threshold_modes_match_the_oracle(model: torch.nn.Module, vocab: UnifiedVocab,
                                                       cfg: SamplerConfig, objective: dict | None) -> None:
    process = forcing(vocab, every=3, end_after=50, closer_from={1: 9})
    ps = prompts(vocab)[:2]
    fast, _ = run_all(model, vocab, cfg, ps, process, objective)
    slow, _ = run_all(model, vocab, SamplerConfig(**{**cfg.__dict__, "backend": "recompute"}), ps, process, objective)
    assert [g.ids for g in fast] == [g.ids for g in slow]
    assert all(g.spans for g in fast)


def test_threshold_commits_several_codes_per_step(model: torch.nn.Module, vocab: UnifiedVocab) -> None:
    """Parallel decoding in both attention modes: a threshold every candidate reaches fills a block in one step
    (the fixed schedule takes steps_per_block), and the tokens still equal the oracle's."""
    cfg = SamplerConfig(block_length=8, steps_per_block=8, max_span=16, max_new_tokens=60, threshold=1e-9)
    ps, process = prompts(vocab)[1:2], forcing(vocab, every=3, end_after=30)
    for objective in (None, block_causal(8)):
        run = TtTSampler(model, vocab, cfg, process, objective=objective).start(ps)
        list(run)
        (g,) = run.results()
        assert [len(s) for s in g.spans] and all(len(s) == 16 for s in g.spans)
        assert run.stats.diffusion_steps == 2 * len(g.spans)  # one step per block of 8 codes
        slow, _ = run_all(model, vocab, SamplerConfig(**{**cfg.__dict__, "backend": "recompute"}), ps, process,
                          objective)
        assert slow[0].ids == g.ids


def test_token_budget_ends_the_turn_and_shortens_spans(model: torch.nn.Module, vocab: UnifiedVocab) -> None:
    cfg = SamplerConfig(block_length=8, steps_per_block=2, max_span=50, max_new_tokens=17)
    (g,), events = run_all(model, vocab, cfg, prompts(vocab)[1:2], forcing(vocab, every=4))
    assert g.finish_reason == "length" and len(g.ids) == 17
    # 4 text tokens + opener leave 12 tokens: the span holds 11 codes and a forced closer, then no room is left
    assert [len(s) for s in g.spans] == [11] and g.ids[-1] == vocab.id(EOA)
    assert next(e for e in events if isinstance(e, SpanEnd)).forced


# (max_span, max_new_tokens, prompts, every, spans): spans forced closed at max_span in every row (closer
# pushed nowhere); one span forced by the budget (4 text tokens + opener leave 12 tokens: 11 codes + the closer);
# a zero-code span (the budget leaves room for the closer only, so the opener's state must predict it)
FORCED = {
    "max_span": (6, 50, slice(None), 3, None),
    "budget": (50, 17, slice(1, 2), 4, [11]),
    "zero_codes": (50, 6, slice(1, 2), 4, [0]),
}


@pytest.mark.parametrize("decode, objective", [("ttt", None), ("ttt", block_causal(4)), ("ar", None)],
                         ids=["ttt", "ttt_block_causal", "ar"])
@pytest.mark.parametrize("case", list(FORCED))
def test_forced_spans_feed_the_generated_sequence(model: torch.nn.Module, vocab: UnifiedVocab, decode: str,
                                                  objective: dict | None, case: str) -> None:
    """A forced closer must follow its span's last code in what the model saw (the AR decoder once appended the
    closer right after sampling the code that filled the span, so that code never entered the context)."""
    max_span, max_new, rows, every, spans = FORCED[case]
    cfg = SamplerConfig(block_length=4, steps_per_block=2, max_span=max_span, max_new_tokens=max_new, decode=decode)
    ps = prompts(vocab)[rows]
    oracle, gens = recorded_run(model, vocab, cfg, ps, forcing(vocab, every=every, end_after=40), objective)
    span_block = None if objective is None else objective["audio_block"]
    assert_fed_the_generation(vocab, oracle, ps, gens, decode, span_block)
    if spans is None:
        assert all(g.finish_reason == "eos" and [len(s) for s in g.spans] == [max_span] * 4 for g in gens)
    else:
        assert gens[0].finish_reason == "length" and [len(s) for s in gens[0].spans] == spans
        assert gens[0].ids[-1] == vocab.id(EOA)


@pytest.mark.parametrize("block", [None, 8], ids=["bidirectional", "block_causal"])
def test_ttt_diffusion_steps_attend_with_the_training_mask(model: torch.nn.Module, vocab: UnifiedVocab,
                                                           block: int | None) -> None:
    """Every pass's blocks are the training mask of the sequence it runs. Row 0 commits several closers in one step
    with masks still before them (closer pushed from span position 3): the span must end at the first closer at
    once, since a training span [opener, codes, closer] holds nothing after it; row 1's spans are forced closed."""
    ps = prompts(vocab)[:2]
    cfg = SamplerConfig(block_length=8, steps_per_block=3, max_span=12, max_new_tokens=90)
    objective = None if block is None else block_causal(block)
    oracle, gens = recorded_run(model, vocab, cfg, ps, forcing(vocab, end_after=40, closer_from={0: 3}), objective)
    for r in range(len(ps)):
        assert [canonical(b) for _, b in oracle.passes[r]] == [training_blocks(vocab, i, "ttt", block)
                                                              for i, _ in oracle.passes[r]]
    assert_fed_the_generation(vocab, oracle, ps, gens, "ttt", block)
    assert all(g.finish_reason == "eos" for g in gens)
    assert all(len(s) == 2 for s in gens[0].spans) and all(len(s) == 12 for s in gens[1].spans)
    # the first span of row 0 went through a step that still had masks before its closer
    first = next(ids for ids, _ in oracle.passes[0] if vocab.id(EOA) in ids[len(ps[0]) :])
    assert vocab.mask_id in first[len(ps[0]) : first.index(vocab.id(EOA), len(ps[0]))]


class RecordingCache(CachedBackend):
    """The cached backend that keeps every chunk it ran (ids copied, keep, last_only)."""

    def __init__(self, model: torch.nn.Module, batch: int, pad_id: int) -> None:
        super().__init__(model, batch, pad_id)
        self.chunks: list[Chunk] = []

    def run(self, chunks: list[Chunk]) -> list[torch.Tensor]:
        self.chunks += [Chunk(c.row, list(c.ids), np.array(c.blocks), c.keep, c.last_only) for c in chunks]
        return super().run(chunks)


def test_block_causal_spans_are_cached_block_by_block(model: torch.nn.Module, vocab: UnifiedVocab) -> None:
    """Block-causal decoding never recomputes a finished block: what the cache keeps, chunk after chunk, is the
    generated sequence itself, each token once; no pass after the prefill runs more than two blocks (the finished
    block it commits and the block being decoded); bidirectional steps rerun the whole span instead."""
    cfg = SamplerConfig(block_length=8, steps_per_block=3, max_span=40, max_new_tokens=200)
    ps, process = prompts(vocab), forcing(vocab, end_after=100, closer_from={0: 19})
    processed = {}
    for objective in (None, block_causal(8)):
        run = TtTSampler(model, vocab, cfg, process, objective=objective).start(ps)
        run.backend = recorder = RecordingCache(model, len(ps), vocab.pad_id)
        list(run)
        processed[objective is None] = run.stats.tokens_processed
    gens = run.results()
    assert all(g.finish_reason == "eos" for g in gens) and max(len(s) for g in gens for s in g.spans) == 40
    for r, (prompt, g) in enumerate(zip(ps, gens, strict=True)):
        mine = [c for c in recorder.chunks if c.row == r]
        kept = [t for c in mine for t in list(c.ids)[: c.keep]]
        assert kept == (prompt + g.ids)[:-1]  # everything but the final <|im_end|>, which nothing reads
        assert max(len(c) for c in mine[1:]) <= 2 * cfg.block_length
    assert processed[False] < 0.6 * processed[True]


def test_span_block_comes_from_the_checkpoint_objective(model: torch.nn.Module, vocab: UnifiedVocab) -> None:
    assert TtTSampler(model, vocab, CFG).span_block is None
    assert TtTSampler(model, vocab, CFG, objective={"mode": "ttt"}).span_block is None  # a record from before
    assert TtTSampler(model, vocab, CFG, objective=block_causal(8)).span_block == 8
    ar = SamplerConfig(**{**CFG.__dict__, "decode": "ar"})
    assert TtTSampler(model, vocab, ar, objective=block_causal(8)).span_block is None
    with pytest.raises(ValueError, match="block_length=16"):
        TtTSampler(model, vocab, CFG, objective=block_causal(16))
    with pytest.raises(ValueError, match="audio_attention"):
        TtTSampler(model, vocab, CFG, objective={"mode": "ttt", "audio_attention": "causal"})


def test_cache_discards_diffusion_steps_and_matches_recompute(model: torch.nn.Module, vocab: UnifiedVocab) -> None:
    """Chunk by chunk: hidden states from the ragged cache equal full recomputation, and a chunk that is
    not committed (a diffusion step) leaves no trace in what later chunks see."""
    m, quad = vocab.mask_id, vocab.id(SOA_FINAL)
    a = [11, 12, vocab.id(SOA), vocab.audio_offset + 1, vocab.audio_offset + 2, vocab.id(EOA), 13]
    b = [21, 22, 23, 24]
    steps = [
        [Chunk(0, a, prompt_block_ids(vocab, a), 7, True), Chunk(1, b, np.full(4, -1), 4, True)],
        [Chunk(0, [quad, m, m, m], np.zeros(4), 0, False), Chunk(1, [25], np.full(1, -1), 1, True)],
        [Chunk(0, [quad, vocab.audio_offset + 7, m, m], np.zeros(4), 0, False)],
        [Chunk(0, [quad, vocab.audio_offset + 7, vocab.id(EOA_FINAL)], np.zeros(3), 3, True),
         Chunk(1, [vocab.id(SOA), m, m], np.zeros(3), 0, False)],
        [Chunk(0, [30], np.full(1, -1), 1, True), Chunk(1, [26], np.full(1, -1), 1, True)],
    ]
    cached, full = CachedBackend(model, 2, vocab.pad_id), RecomputeBackend(model, 2)
    with torch.inference_mode():
        for chunks in steps:
            for h_fast, h_full in zip(cached.run(chunks), full.run(chunks), strict=True):
                torch.testing.assert_close(h_fast, h_full, rtol=1e-10, atol=1e-10)
    assert cached.cache.lengths == [len(a) + 3 + 1, len(b) + 2]
    assert cached.tokens_processed < full.tokens_processed
    assert cached.forward_passes == 6  # one pass per step, two when one-token and longer chunks meet (step 2)


def test_prompts_are_checked(model: torch.nn.Module, vocab: UnifiedVocab) -> None:
    sampler = TtTSampler(model, vocab, CFG)
    with pytest.raises(ValueError, match="empty prompt"):
        sampler.start([[]])
    with pytest.raises(ValueError, match="context holds 512"):
        sampler.start([[5] * 512])
    with pytest.raises(ValueError, match="mask tokens"):
        sampler.start([[5, vocab.mask_id]])
    with pytest.raises(ValueError, match="open audio span"):
        sampler.start([[5, vocab.id(SOA), vocab.audio_offset]])
    flex = build_model({"init": "random", "config": TINY, "attn_implementation": "flex_attention"}, vocab)
    with pytest.raises(ValueError, match="sdpa"):
        TtTSampler(flex, vocab)


def test_modes_only_emit_their_own_tokens(model: torch.nn.Module, vocab: UnifiedVocab) -> None:
    """A processor cannot smuggle disallowed tokens: text never emits codes, masks or closers; spans never
    emit text or the other span's closer."""
    bad_text = [vocab.mask_id, vocab.audio_offset + 3, vocab.id(EOA), vocab.id(EOA_FINAL)]

    def push_bad(ctx: LogitsContext, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        if ctx.mode == "text":
            logits[:, bad_text] += 1e6
            if len(ctx.generated) in (2, 30):
                logits[:, vocab.id(SOA)] += 1e7
            if len(ctx.generated) > 40:
                logits[:, vocab.eos_id] += 1e7
        else:
            assert ctx.column_ids[-1] == vocab.id(EOA) and len(ctx.column_ids) == vocab.codebook_size + 1
        return logits

    (g,), _ = run_all(model, vocab, CFG, prompts(vocab)[1:2], push_bad)
    ids = np.asarray(g.ids)
    assert not np.isin(ids, [vocab.mask_id, vocab.id(EOA_FINAL)]).any()
    assert g.spans and all(vocab.is_audio(vocab.audio_ids(s)).all() for s in g.spans)


def test_streaming_text_waits_for_whole_characters(vocab: UnifiedVocab) -> None:
    text = "Grüße 你好, world — 🎧 ok"
    ids = vocab.encode_text(text)
    detok = Detokenizer(vocab)
    deltas = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(deltas) == text and not any("\ufffd" in d for d in deltas)


def test_commit_schedule_and_selection() -> None:
    assert commit_schedule(32, 10) == [4, 4, 3, 3, 3, 3, 3, 3, 3, 3]
    assert commit_schedule(5, 10) == [1] * 5 and commit_schedule(8, 1) == [8]
    conf = torch.tensor([0.1, 0.5, 0.5, 0.9, 0.2])
    assert select_commits(conf, 2, None).tolist() == [3, 1]  # ties go to the earlier position
    assert select_commits(conf, 1, 0.4).tolist() == [3, 1, 2]
    assert select_commits(conf, 3, 0.95).tolist() == [3]  # nothing reaches the threshold: the best one


def test_filter_logits_top_k_top_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, SamplingParams(temperature=1.0, top_k=2))[0, 2:]).all()
    kept = ~torch.isinf(filter_logits(logits, SamplingParams(temperature=1.0, top_p=0.75)))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.equal(filter_logits(logits, SamplingParams()), logits)


def test_config_file_matches_defaults_and_rejects_typos() -> None:
    assert SamplerConfig.from_mapping(yaml.safe_load(CONF.read_text())) == SamplerConfig()
    with pytest.raises(ValueError, match="sampler: unknown config keys"):
        SamplerConfig.from_mapping({"steps": 3})
    with pytest.raises(ValueError, match="backend"):
        SamplerConfig(backend="fast")
