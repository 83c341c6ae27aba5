"""Decoders of the Table-1 baselines (`decode: ar | nar`) and the decode-mode resolution.

Like tests/ttt_model/test_sampler.py (whose tiny-model helpers this reuses): random float64 models over a byte
vocabulary, where the cached fast path must reproduce the full-recompute oracle token for token in greedy mode,
and test-only logits processors force structure (openers, codes, closers, the end of the turn) that random
weights would never produce. On top of that: the AR decoder equals a plain Hugging Face greedy `generate`
restricted the same way, and the blocks every decoder attends with are the training mask of its objective.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from tests.ttt_model import test_sampler as _sampler_tests
from tests.ttt_model.test_sampler import (
    assert_fed_the_generation,
    canonical,
    forcing,
    prompts,
    recorded_run,
    run_all,
    training_blocks,
)
from tokenization.sequence import Part, Turn, build_chat, spans_from_ids, validate_spans
from tokenization.vocab import EOA, EOA_FINAL, EOA_USER, SOA, SOA_FINAL, UnifiedVocab
from ttt_model.core.objective import plan_targets
from ttt_model.decoding.events import AudioBlock, LogitsContext, SpanEnd, TextDelta, TurnEnd
from ttt_model.decoding.prompt import chat_spans, prompt_block_ids
from ttt_model.decoding.sampler_config import SamplerConfig, SamplingParams, resolve_decode
from ttt_model.decoding.ttt_sampler import TtTSampler

AR = SamplerConfig(block_length=8, steps_per_block=3, max_span=20, max_new_tokens=90, decode="ar")
NAR = SamplerConfig(block_length=8, steps_per_block=3, max_span=20, max_new_tokens=60, decode="nar")


# The sampler tests' module fixtures (the byte vocabulary, one thread, the seed-3 tiny float64 model), shared.
vocab, one_thread, model = _sampler_tests.vocab, _sampler_tests.one_thread, _sampler_tests.model


def recompute(cfg: SamplerConfig) -> SamplerConfig:
    return SamplerConfig(**{**cfg.__dict__, "backend": "recompute"})


def check_stream(vocab: UnifiedVocab, gens: list, events: list, block_length: int) -> None:
    """Per row: one TurnEnd last, text deltas add up to the text, audio blocks add up to each span."""
    for row, g in enumerate(gens):
        mine = [e for e in events if e.row == row]
        assert isinstance(mine[-1], TurnEnd) and sum(isinstance(e, TurnEnd) for e in mine) == 1
        assert "".join(e.text for e in mine if isinstance(e, TextDelta)) == g.text
        assert len(g.spans) == sum(isinstance(e, SpanEnd) for e in mine)
        for k, span in enumerate(g.spans):
            blocks = [e.codes for e in mine if isinstance(e, AudioBlock) and e.span == k]
            assert all(len(b) <= block_length for b in blocks)
            assert np.array_equal(np.concatenate(blocks) if blocks else np.zeros(0, np.int64), span)


# ---- AR baseline ------------------------------------------------------------------------------------


def test_ar_cached_equals_recompute_oracle_greedy(model: torch.nn.Module, vocab: UnifiedVocab) -> None:
    process = forcing(vocab, closer_from={0: 11, 1: 3})
    ps = prompts(vocab)
    sampler = TtTSampler(model, vocab, AR, process)
    run = sampler.start(ps)
    fast_events = list(run)
    fast = run.results()
    slow, slow_events = run_all(model, vocab, recompute(AR), ps, process)
    assert [g.ids for g in fast] == [g.ids for g in slow]
    assert [repr(e) for e in fast_events] == [repr(e) for e in slow_events]
    assert run.stats.diffusion_steps == 0 and run.stats.spans == sum(len(g.spans) for g in fast)
    check_stream(vocab, fast, fast_events, AR.block_length)
    for g in fast:
        validate_spans(vocab, np.asarray(g.ids), spans_from_ids(vocab, np.asarray(g.ids)))
        assert g.finish_reason == "eos" and len(g.spans) >= 2
    ends = [e for e in fast_events if isinstance(e, SpanEnd)]
    assert {e.final for e in ends} == {True, False}
    assert all(e.forced and e.n_codes == AR.max_span for e in ends if e.row == 2)
    assert all(not e.forced and e.n_codes == 10 for e in ends if e.row == 0)  # closer pushed from position 11
    # AR feeds one token per pass: far more passes than TtT's block-wise spans, and no span ever re-run
    ttt_run = TtTSampler(model, vocab, SamplerConfig(**{**AR.__dict__, "decode": "ttt"}), process).start(ps)
    list(ttt_run)
    assert run.stats.tokens_processed < ttt_run.stats.tokens_processed


class HFRestriction(LogitsProcessor):
    """The AR decoder's rules for a plain HF greedy `generate` over full-vocabulary logits: text ids + openers
    in text; codes + the opener's closer inside a span; the closer forced at max_span / the token budget; the
    test's forcing processor applied to the same columns the sampler gives it."""

    def __init__(self, vocab: UnifiedVocab, prompt_len: int, cfg: SamplerConfig, process: Callable) -> None:
        self.vocab, self.prompt_len, self.cfg, self.process = vocab, prompt_len, cfg, process
        self.closer_for = {vocab.id(SOA): vocab.id(EOA), vocab.id(SOA_FINAL): vocab.id(EOA_FINAL)}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        v = self.vocab
        gen = input_ids[0, self.prompt_len :].tolist()
        out = torch.full_like(scores, float("-inf"))
        opened = max((i for i, t in enumerate(gen) if t in self.closer_for), default=None)
        closed = opened is not None and any(t in self.closer_for.values() for t in gen[opened:])
        if opened is None or closed:
            logits = self.process(LogitsContext(0, "text", gen, torch.arange(scores.shape[1])), scores.float())
            allowed = list(range(v.text_vocab_size)) + list(self.closer_for)
            out[:, allowed] = logits[:, allowed].to(out.dtype)
            return out
        closer = self.closer_for[gen[opened]]
        columns = torch.cat([torch.arange(v.audio_offset, v.audio_offset + v.codebook_size), torch.tensor([closer])])
        n_codes = len(gen) - opened - 1
        logits = self.process(LogitsContext(0, "audio", gen[: opened + 1], columns, np.array([n_codes + 1])),
                              scores[:, columns].float())
        if n_codes >= min(self.cfg.max_span, self.cfg.max_new_tokens - (opened + 1) - 1):
            logits = torch.where(columns == closer, 0.0, float("-inf"))[None]
        out[:, columns] = logits.to(out.dtype)
        return out


@pytest.mark.parametrize(("max_span", "max_new", "closer_from", "sizes"), [
    (12, 60, {0: 7}, None),  # closed by the model (closer pushed from span position 7)
    (8, 60, {}, [8, 8, 8, 8]),  # forced at max_span: HF feeds the last code before the closer is chosen
    (8, 14, {}, [7]),  # forced by the budget: 5 text tokens + opener + 7 codes + the closer
])
def test_ar_decoder_equals_plain_hf_greedy_generate(model: torch.nn.Module, vocab: UnifiedVocab, max_span: int,
                                                    max_new: int, closer_from: dict[int, int],
                                                    sizes: list[int] | None) -> None:
    cfg = SamplerConfig(**{**AR.__dict__, "max_span": max_span, "max_new_tokens": max_new})
    process = forcing(vocab, every=5, end_after=200, closer_from=closer_from)
    prompt = prompts(vocab)[0]
    (ours,), _ = run_all(model, vocab, cfg, [prompt], process)
    gen_cfg = GenerationConfig(max_new_tokens=cfg.max_new_tokens, do_sample=False, num_beams=1,
                               eos_token_id=[vocab.eos_id, vocab.pad_id], pad_token_id=vocab.pad_id)
    with torch.inference_mode():
        hf = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                            generation_config=gen_cfg,
                            logits_processor=LogitsProcessorList([HFRestriction(vocab, len(prompt), cfg, process)]))
    assert hf[0, len(prompt) :].tolist() == ours.ids
    assert ours.finish_reason == "length" and len(ours.spans) >= 1  # budget spent, spans closed on the way
    assert sizes is None or [len(s) for s in ours.spans] == sizes


# ---- NAR baseline -----------------------------------------------------------------------------------


def nar_forcing(vocab: UnifiedVocab, end_at: dict[int, int], no_closer: tuple[int, ...] = ()
                ) -> Callable[[LogitsContext, torch.Tensor], torch.Tensor]:
    """Shape the response by position (period 12): an opener at 2 (alternating the two kinds), codes at 3..8,
    the matching closer at 9 (rows in `no_closer`: none, so a text token ends the span), text elsewhere; in
    row r <|im_end|> at position end_at[r], and no stop token anywhere else."""
    openers = (vocab.id(SOA), vocab.id(SOA_FINAL))
    closers = (vocab.id(EOA), vocab.id(EOA_FINAL))
    codes = slice(vocab.audio_offset, vocab.audio_offset + vocab.codebook_size)

    def process(ctx: LogitsContext, logits: torch.Tensor) -> torch.Tensor:
        assert ctx.mode == "response" and ctx.targets is not None
        logits = logits.clone()
        t = torch.as_tensor(ctx.targets)
        phase, kind = t % 12, (t // 12) % 2
        logits[:, [vocab.eos_id, vocab.pad_id]] -= 1e4
        logits[:, codes] -= 50.0  # random weights like codes: keep them to their positions
        for k in (0, 1):
            logits[(phase == 2) & (kind == k), openers[k]] += 1e4
            if ctx.row not in no_closer:
                logits[(phase == 9) & (kind == k), closers[k]] += 1e4
        logits[(phase >= 3) & (phase <= 8), codes] += 1e4
        if ctx.row in end_at:
            logits[t == end_at[ctx.row], vocab.eos_id] += 3e4
        return logits

    return process


def nar_prompts(vocab: UnifiedVocab) -> list[list[int]]:
    """A spoken question; a multi-turn chat with an earlier spoken answer; raw ids ending in a user audio span."""
    rng = np.random.default_rng(1)
    question = build_chat(vocab, [Turn("user", [Part(text="Hi."), Part.audio(rng.integers(0, 512, 7))])],
                          add_generation_prompt=True).input_ids.tolist()
    history = build_chat(vocab, [
        Turn("user", [Part(text="Say a word.")]),
        Turn("assistant", [Part(text="Ok"), Part.audio(rng.integers(0, 512, 5), final=True)]),
        Turn("user", [Part.audio(rng.integers(0, 512, 4))]),
    ], add_generation_prompt=True).input_ids.tolist()
    raw = [*rng.integers(0, 250, 5).tolist(), vocab.id(SOA), *vocab.audio_ids(rng.integers(0, 512, 6)).tolist(),
           vocab.id(EOA_USER)]
    return [question, history, raw]


def test_nar_cached_equals_recompute_oracle_greedy(model: torch.nn.Module, vocab: UnifiedVocab) -> None:
    process = nar_forcing(vocab, end_at={0: 29, 2: 45}, no_closer=(2,))
    ps = nar_prompts(vocab)
    run = TtTSampler(model, vocab, NAR, process).start(ps)
    fast_events = list(run)
    fast = run.results()
    slow, slow_events = run_all(model, vocab, recompute(NAR), ps, process)
    assert [g.ids for g in fast] == [g.ids for g in slow]
    assert [repr(e) for e in fast_events] == [repr(e) for e in slow_events]
    check_stream(vocab, fast, fast_events, NAR.block_length)
    # row 0 ends inside its 4th block (<|im_end|> at 29, committed before the masks before it); row 1 spends the
    # whole budget (60 = 7 blocks of 8 + one of 4); row 2's spans are ended by text, not by a closer
    assert (fast[0].finish_reason, len(fast[0].ids), fast[0].ids[-1]) == ("eos", 30, vocab.eos_id)
    assert (fast[1].finish_reason, len(fast[1].ids)) == ("length", NAR.max_new_tokens)
    assert fast[2].finish_reason == "eos" and len(fast[2].ids) == 46
    ends = [e for e in fast_events if isinstance(e, SpanEnd)]
    per_row = [[(e.n_codes, e.forced) for e in ends if e.row == r] for r in range(3)]
    assert per_row[0] == [(6, False), (6, False), (2, True)]  # the third span is cut by <|im_end|>
    assert per_row[1] == [(6, False)] * 5 and per_row[2] == [(6, True)] * 4
    assert {e.final for e in ends if e.row == 1} == {True, False}
    assert fast[1].ids[33:35] == [vocab.id(EOA)] * 2  # parallel choices: a stray closer is kept, not voiced
    # steps_per_block steps per block, except row 0's last: its first step commits <|im_end|> at 29 and two tokens
    # before it, the two masks after it leave the block at once, and the second step (3 commits) fills the 3 left
    blocks = sum(-(-len(g.ids) // NAR.block_length) for g in fast)
    assert run.stats.diffusion_steps == blocks * NAR.steps_per_block - 1
    first = next(i for i, e in enumerate(fast_events) if isinstance(e, AudioBlock) and e.row == 1)
    assert first < next(i for i, e in enumerate(fast_events) if isinstance(e, TurnEnd) and e.row == 1)


def test_nar_steps_attend_with_the_training_mask(model: torch.nn.Module, vocab: UnifiedVocab) -> None:
    """Every pass's blocks are the training mask of the sequence it runs, and what it runs is the response: once
    <|im_end|> is committed, the steps that fill the masks before it no longer see what follows it (row 0 commits
    it at 29 with masks on both sides; training's block ends exactly at <|im_end|>)."""
    ps = nar_prompts(vocab)
    oracle, gens = recorded_run(model, vocab, NAR, ps, nar_forcing(vocab, end_at={0: 29, 2: 45}, no_closer=(2,)))
    for r in (0, 1):  # row 2 is raw ids: no chat structure makes its continuation a training target
        assert [canonical(b) for _, b in oracle.passes[r]] == [training_blocks(vocab, i, "nar")
                                                              for i, _ in oracle.passes[r]]
    assert_fed_the_generation(vocab, oracle, ps, gens, "nar")
    assert [g.finish_reason for g in gens] == ["eos", "length", "eos"]
    # row 0's last step ran [..., masks, <|im_end|>]: nothing after it
    last, _ = oracle.passes[0][-1]
    assert last[-1] == vocab.eos_id and vocab.mask_id in last[-6:-1]


@pytest.mark.parametrize("cfg", [
    SamplerConfig(block_length=8, steps_per_block=4, max_new_tokens=40, seed=5, decode="nar",
                  text=SamplingParams(temperature=0.9, top_k=50)),
    SamplerConfig(block_length=8, steps_per_block=8, max_new_tokens=40, threshold=0.5, decode="nar"),
])
def test_nar_sampling_and_threshold_match_the_oracle(model: torch.nn.Module, vocab: UnifiedVocab,
                                                     cfg: SamplerConfig) -> None:
    process = nar_forcing(vocab, end_at={0: 21})
    ps = nar_prompts(vocab)[:2]
    fast, _ = run_all(model, vocab, cfg, ps, process)
    slow, _ = run_all(model, vocab, recompute(cfg), ps, process)
    assert [g.ids for g in fast] == [g.ids for g in slow]
    assert fast[0].finish_reason == "eos" and fast[1].finish_reason == "length"


def test_nar_tokens_are_what_training_can_target(model: torch.nn.Module, vocab: UnifiedVocab) -> None:
    """A processor cannot make the response emit masks or the user closer."""
    def push_bad(ctx: LogitsContext, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        logits[:, [vocab.mask_id, vocab.id(EOA_USER)]] += 1e6
        logits[:, [vocab.eos_id, vocab.pad_id]] -= 1e6
        return logits

    (g,), _ = run_all(model, vocab, SamplerConfig(**{**NAR.__dict__, "max_new_tokens": 16}), nar_prompts(vocab)[:1],
                      push_bad)
    assert len(g.ids) == 16 and not set(g.ids) & {vocab.mask_id, vocab.id(EOA_USER)}


# ---- the training mask ------------------------------------------------------------------------------


def test_decoder_blocks_are_the_training_mask(vocab: UnifiedVocab) -> None:
    rng = np.random.default_rng(2)
    turns = [
        Turn("system", [Part(text="Be brief.")]),
        Turn("user", [Part(text="Hi"), Part.audio(rng.integers(0, 512, 4))]),
        Turn("assistant", [Part(text="Hello"), Part.audio(rng.integers(0, 512, 3)),
                           Part.audio(rng.integers(0, 512, 5), final=True)]),
        Turn("user", [Part.audio(rng.integers(0, 512, 6))]),
    ]
    prompt = build_chat(vocab, turns, add_generation_prompt=True)
    answer = Turn("assistant", [Part(text="Sure"), Part.audio(rng.integers(0, 512, 4), final=True)])
    full = build_chat(vocab, [*turns, answer])
    assert chat_spans(vocab, prompt.input_ids) == prompt.spans
    assert chat_spans(vocab, full.input_ids) == full.spans
    n_prompt, n_full = len(prompt.input_ids), len(full.input_ids) - 1  # the trailing "\n" is not generated
    for mode in ("ttt", "ar", "nar"):
        training = plan_targets(full.spans, len(full.input_ids), mode).block_ids[:n_full]
        blocks = prompt_block_ids(vocab, prompt.input_ids, mode)
        if mode == "nar":  # the response joins the block of the prompt's last token
            decoder = np.concatenate([blocks, np.full(n_full - n_prompt, blocks[-1])])
            assert canonical(decoder) == canonical(training)
            assert (blocks >= 0).sum() > 1 + 6 + 4  # prompt audio and the earlier answer are blocks too
        else:
            assert canonical(blocks) == canonical(training[:n_prompt])
            assert (blocks >= 0).any() == (mode == "ttt")


# ---- resolving the mode -----------------------------------------------------------------------------


def test_decode_mode_resolution(model: torch.nn.Module, vocab: UnifiedVocab) -> None:
    assert resolve_decode("auto", None) == "ttt" and resolve_decode("auto", "nar") == "nar"
    assert resolve_decode("ar", "nar") == "ar"
    with pytest.raises(ValueError, match="records objective mode"):
        resolve_decode("auto", "diffusion")
    with pytest.raises(ValueError, match="decode"):
        SamplerConfig(decode="fast")
    assert TtTSampler(model, vocab, SamplerConfig(), objective={"mode": "ar"}).decode == "ar"
    assert TtTSampler(model, vocab, SamplerConfig(decode="ttt"), objective={"mode": "ar"}).decode == "ttt"
    assert TtTSampler(model, vocab).decode == "ttt"
