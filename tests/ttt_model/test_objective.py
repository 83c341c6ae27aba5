from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenization.codecs.base import CodecIdentity
from tokenization.sequence import Part, Turn, build_chat, build_document, spans_to_pylist
from tokenization.text import load_text_tokenizer
from tokenization.vocab import EOA, UnifiedVocab
from ttt_model.core.attention import sdpa_mask
from ttt_model.core.collator import TtTCollator
from ttt_model.core.objective import (
    IGNORE,
    KIND_AR,
    KIND_DIFFUSION,
    KIND_NONE,
    ObjectiveConfig,
    decoding_block_targets,
    decoding_blocks,
    draw_noised_blocks,
    draw_t,
    first_target,
    noise_level,
    noise_sample,
    plan_targets,
    splice_prompt,
)
from ttt_model.core.rng import sample_rng

VOCAB = UnifiedVocab(load_text_tokenizer(), CodecIdentity("test", "1", 25.0, 512, 16000, 16000, "h"))
CONF = Path(__file__).resolve().parents[2] / "workflows" / "conf" / "objective"
PLAIN_TTT = ObjectiveConfig(banom=False, ppm=False, sst=False)


def voice_chat():
    """system, user (audio), assistant (text + audio + text + final audio), user (text), assistant (audio)."""
    return build_chat(
        VOCAB,
        [
            Turn("system", [Part(text="be brief")]),
            Turn("user", [Part.audio(np.arange(7))]),
            Turn(
                "assistant",
                [
                    Part(text="hi there"),
                    Part.audio(np.arange(5)),
                    Part(text="and"),
                    Part.audio(np.arange(9) + 3, final=True),
                ],
            ),
            Turn("user", [Part(text="again please")]),
            Turn("assistant", [Part.audio(np.arange(6), final=True)]),
        ],
    )


def mask_all(seq, mode: str, cfg_diffused=None):
    """Noise one sample with p = 1 (every maskable token masked)."""
    plan = plan_targets(seq.spans, len(seq.input_ids), mode, cfg_diffused)
    return plan, noise_sample(seq.input_ids, plan, 1.0, np.zeros(len(seq.input_ids)), VOCAB.mask_id)


def target_tokens(seq) -> np.ndarray:
    out = np.zeros(len(seq.input_ids), dtype=bool)
    for s in seq.spans:
        out[s.start : s.end] = s.is_target
    return out


def test_each_target_token_is_predicted_once_by_the_position_before_it() -> None:
    seq = voice_chat()
    ids = seq.input_ids
    _, noised = mask_all(seq, "ttt")
    labelled = np.flatnonzero(noised.labels != IGNORE)
    predicted = labelled + 1
    # every target token (after token 0) is predicted, exactly once, by the previous position, and no
    # other token is: a position cannot carry two targets and a token is not predicted twice
    assert predicted.tolist() == (np.flatnonzero(target_tokens(seq)[1:]) + 1).tolist()
    assert (noised.labels[labelled] == ids[predicted]).all()
    assert noised.n_ar + noised.n_masked == len(labelled)
    for s in (s for s in seq.spans if s.kind == "audio" and s.is_target):
        assert noised.loss_kind[s.start - 1] == KIND_AR  # opener: AR from the token before
        assert (noised.loss_kind[s.start : s.end - 1] == KIND_DIFFUSION).all()  # codes + closer: diffusion
        assert noised.labels[s.end - 2] == ids[s.end - 1]  # the masked closer, predicted once
        if s.end < len(ids):  # span end followed by text: the closer's position predicts the text, by AR
            assert noised.loss_kind[s.end - 1] == KIND_AR and noised.labels[s.end - 1] == ids[s.end]


def test_text_and_prompt_audio_are_never_masked() -> None:
    seq = voice_chat()
    _, noised = mask_all(seq, "ttt")
    masked = noised.input_ids == VOCAB.mask_id
    for s in seq.spans:
        if s.kind == "text" or not s.is_target:
            assert not masked[s.start : s.end].any(), s
        else:
            assert not masked[s.start] and masked[s.start + 1 : s.end].all(), s


def test_multi_turn_boundaries() -> None:
    """Targets are exactly each assistant turn's content + <|im_end|>, found from the ids alone (the
    reference summed all user turns into one prefix length, which is wrong from the second turn on)."""
    seq = voice_chat()
    ids = seq.input_ids.tolist()
    _, noised = mask_all(seq, "ttt")
    im_start, im_end = VOCAB.id("<|im_start|>"), VOCAB.eos_id
    header = len(VOCAB.encode_text("assistant\n")) + 1
    expected: list[int] = []
    for start in (i for i, t in enumerate(ids) if t == im_start):
        if ids[start : start + header] == [im_start, *VOCAB.encode_text("assistant\n")]:
            expected += range(start + header, ids.index(im_end, start) + 1)
    assert len(expected) > 20
    assert (np.flatnonzero(noised.labels != IGNORE) + 1).tolist() == expected


def test_block_ids_are_the_audio_spans() -> None:
    seq = voice_chat()
    plan, _ = mask_all(seq, "ttt")
    audio = [s for s in seq.spans if s.kind == "audio"]
    assert len(np.unique(plan.block_ids[plan.block_ids >= 0])) == len(audio)
    for s in audio:
        assert len(set(plan.block_ids[s.start : s.end].tolist())) == 1 and plan.block_ids[s.start] >= 0
    text = np.concatenate([np.arange(s.start, s.end) for s in seq.spans if s.kind == "text"])
    assert (plan.block_ids[text] == -1).all()


def test_ar_mode_trains_every_target_token_causally() -> None:
    seq = voice_chat()
    plan, noised = mask_all(seq, "ar")
    assert (plan.block_ids == -1).all() and not plan.maskable.any()
    assert np.array_equal(noised.input_ids, seq.input_ids)
    assert np.array_equal(noised.loss_kind[:-1] == KIND_AR, target_tokens(seq)[1:])
    assert (noised.loss_weight[noised.loss_kind == KIND_AR] == 1).all()


def test_nar_mode_diffuses_every_target_token_in_one_block_per_turn() -> None:
    seq = voice_chat()
    plan, noised = mask_all(seq, "nar")
    targets = target_tokens(seq)
    assert np.array_equal(plan.maskable, targets) and not plan.ar_target.any()
    assert np.array_equal(noised.input_ids == VOCAB.mask_id, targets)  # text targets are masked too
    assert np.array_equal(noised.loss_kind[:-1] == KIND_DIFFUSION, targets[1:])
    for turn in (2, 4):
        idx = np.flatnonzero(
            targets
            & np.isin(
                np.arange(len(targets)),
                np.concatenate([np.arange(s.start, s.end) for s in seq.spans if s.turn == turn]),
            )
        )
        block = plan.block_ids[idx[0] - 1 : idx[-1] + 1]
        assert len(set(block.tolist())) == 1 and block[0] >= 0  # content + the position before it
    user_audio = next(s for s in seq.spans if s.kind == "audio")
    assert plan.block_ids[user_audio.start] >= 0 and plan.block_ids[user_audio.start] not in plan.block_ids[targets]


def test_document_first_token_is_never_a_target() -> None:
    doc = build_document(VOCAB, [Part.audio(np.arange(4)), Part(text="hello world")])
    for mode in ("ttt", "ar", "nar"):
        plan, noised = mask_all(doc, mode)
        assert not plan.ar_target[0] and not plan.maskable[0]
        assert noised.input_ids[0] == doc.input_ids[0]
        assert (noised.labels[:-1] != IGNORE).all() and noised.labels[-1] == IGNORE


def test_weights_are_one_over_p_exactly() -> None:
    seq = voice_chat()
    plan = plan_targets(seq.spans, len(seq.input_ids), "ttt")
    u = (np.arange(len(seq.input_ids)) * 0.37) % 1.0
    noised = noise_sample(seq.input_ids, plan, 0.4, u, VOCAB.mask_id)
    masked = plan.maskable & (u < 0.4)
    assert noised.n_masked == masked.sum() > 0 and noised.n_maskable == plan.maskable.sum()
    assert np.allclose(noised.loss_weight[noised.loss_kind == KIND_DIFFUSION], 1 / 0.4)
    assert (noised.loss_weight[noised.loss_kind == KIND_NONE] == 0).all()


def test_weighted_diffusion_loss_is_unbiased() -> None:
    """E[Σ_masked ce / p] = Σ_maskable ce: the weighted masked loss estimates the full per-token loss."""
    seq = voice_chat()
    plan = plan_targets(seq.spans, len(seq.input_ids), "ttt")
    ce = np.random.default_rng(1).uniform(0.5, 3.0, len(seq.input_ids))  # stand-in per-token losses
    rng = np.random.default_rng(2)
    p = 0.25
    draws = []
    for _ in range(4000):
        n = noise_sample(seq.input_ids, plan, p, rng.random(len(seq.input_ids)), VOCAB.mask_id)
        pos = np.flatnonzero(n.loss_kind == KIND_DIFFUSION)
        draws.append((ce[pos + 1] * n.loss_weight[pos]).sum())
    exact = ce[plan.maskable].sum()
    assert abs(np.mean(draws) - exact) < 4 * np.std(draws) / np.sqrt(len(draws))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=9),
    st.sampled_from(["uniform", "stratified", "antithetic"]),
    st.floats(1e-4, 0.5),
)
def test_p_is_within_eps_and_one(u: list[float], how: str, eps: float) -> None:
    keys = [(7919 * i) % 10007 for i in range(len(u))]
    p = noise_level(draw_t(np.array(u), keys, how), eps)
    assert ((p >= eps - 1e-12) & (p <= 1 + 1e-12)).all()


def test_stratified_and_antithetic_t() -> None:
    u = np.random.default_rng(0).random(8)
    keys = [5, 3, 9, 1, 7, 2, 8, 4]
    strata = np.sort(np.floor(draw_t(u, keys, "stratified") * 8))
    assert strata.tolist() == list(range(8))
    t = draw_t(u, keys, "antithetic")
    order = np.argsort(keys)
    assert np.allclose(t[order[0::2]] + t[order[1::2]], 1.0)
    assert np.array_equal(draw_t(u, keys, "uniform"), u)


@pytest.mark.parametrize("how", ["stratified", "antithetic"])
def test_coupled_t_sampling_is_redrawn_every_epoch(how: str) -> None:
    """Stratified / antithetic t couple the samples of a micro-batch, but the rank that assigns strata and
    pairs is drawn per epoch: ranked by a fixed hash, a sample kept its stratum (and its partner) every
    epoch. Micro-batches keep the same members every epoch here, the worst case for a fixed rank."""
    collator = TtTCollator(VOCAB, replace(PLAIN_TTT, t_sampling=how), 64, seed=0)
    ids = [f"s{i}" for i in range(160)]
    micro_batches = [ids[i : i + 16] for i in range(0, len(ids), 16)]
    times: dict[str, list[float]] = {sid: [] for sid in ids}
    partners: dict[str, set[str]] = {sid: set() for sid in ids}
    for epoch in range(10):
        for members in micro_batches:
            t = collator.diffusion_times(members, epoch)
            assert np.array_equal(t, collator.diffusion_times(members, epoch))  # deterministic
            if how == "stratified":
                assert np.sort(np.floor(t * 16)).tolist() == list(range(16))  # one sample per stratum
            else:
                pair_sum = t[:, None] + t[None, :]
                np.fill_diagonal(pair_sum, 0.0)
                partner = np.abs(pair_sum - 1.0).argmin(1)
                assert np.allclose(t + t[partner], 1.0) and (partner[partner] == np.arange(16)).all()
                for sid, j in zip(members, partner, strict=True):
                    partners[sid].add(members[j])
            for sid, x in zip(members, t, strict=True):
                times[sid].append(float(x))
    stds = np.array([np.std(v) for v in times.values()])
    assert 0.24 < stds.mean() < 0.31 and stds.min() > 0.1  # U(0, 1): 0.289 (about 0.27 over 10 draws)
    if how == "antithetic":
        assert np.mean([len(p) for p in partners.values()]) > 5


def test_collator_noise_uses_sample_streams() -> None:
    """p, the mask pattern and the 1/p weights are exactly those of the sample's own "t" and "mask" streams."""
    seq = voice_chat()
    ids = seq.input_ids
    sample = {"sample_id": "x", "input_ids": ids, "spans": spans_to_pylist(seq.spans)}
    collator = TtTCollator(VOCAB, PLAIN_TTT, 512, seed=3)
    plan = plan_targets(seq.spans, len(ids), "ttt")
    n_masked = 0
    for epoch in range(4):
        batch = collator([sample], epoch=epoch)
        p = float(noise_level(sample_rng(3, epoch, "x", "t").random(), PLAIN_TTT.eps))
        masked = plan.maskable & (sample_rng(3, epoch, "x", "mask").random(len(ids)) < p)
        assert batch.stats["p_sum"] == pytest.approx(p)
        assert np.array_equal(batch.input_ids[0, : len(ids)].numpy() == VOCAB.mask_id, masked)
        diffusion = batch.loss_kind[0] == KIND_DIFFUSION
        assert np.array_equal(np.flatnonzero(diffusion.numpy()) + 1, np.flatnonzero(masked))
        assert np.allclose(batch.loss_weight[0][diffusion], 1 / p)
        assert np.array_equal(collator([sample], epoch=epoch).input_ids, batch.input_ids)
        n_masked += int(masked.sum())
    assert n_masked > 0


def as_samples(**seqs) -> list[dict]:
    return [{"sample_id": k, "input_ids": s.input_ids, "spans": spans_to_pylist(s.spans)} for k, s in seqs.items()]


def packed_docs(batch, samples: list[dict]) -> dict[str, int]:
    """Which doc id of row 0 holds which sample (the samples have distinct lengths)."""
    lengths = {len(s["input_ids"]): s["sample_id"] for s in samples}
    return {lengths[int((batch.doc_ids[0] == d).sum())]: int(d) for d in batch.doc_ids[0].unique() if d >= 0}


def test_collator_ar_mode() -> None:
    chat, doc = voice_chat(), build_document(VOCAB, [Part.audio(np.arange(4)), Part(text="hello world")])
    samples = as_samples(chat=chat, doc=doc)
    cfg = ObjectiveConfig(mode="ar", banom=False, ppm=False, sst=False)
    batch = TtTCollator(VOCAB, cfg, 512, seed=0)(samples, epoch=0)
    assert batch.input_ids.shape[0] == 1 and (batch.block_ids == -1).all()  # packed, causal everywhere
    assert batch.n_maskable == 0 and batch.stats["masked"] == batch.stats["p_sum"] == 0
    assert batch.n_ar == int(target_tokens(chat)[1:].sum() + target_tokens(doc)[1:].sum())
    for name, seq in (("chat", chat), ("doc", doc)):
        where = batch.doc_ids[0] == packed_docs(batch, samples)[name]
        assert np.array_equal(batch.input_ids[0][where].numpy(), seq.input_ids)  # nothing masked
        kind, labels = batch.loss_kind[0][where].numpy(), batch.labels[0][where].numpy()
        assert np.array_equal(kind[:-1] == KIND_AR, target_tokens(seq)[1:]) and kind[-1] == KIND_NONE
        assert np.array_equal(labels[:-1][kind[:-1] == KIND_AR], seq.input_ids[1:][target_tokens(seq)[1:]])


def test_collator_nar_mode_with_a_document_block_at_token_zero() -> None:
    """A document is one target run from token 0: its block holds token 0 (which predicts token 1) and the
    whole document; token 0 is never masked. Packed after a chat, its block id stays unique in the row."""
    chat, doc = voice_chat(), build_document(VOCAB, [Part(text="hi you"), Part.audio(np.arange(5)), Part(text="bye")])
    samples = as_samples(chat=chat, doc=doc)
    cfg = ObjectiveConfig(mode="nar", banom=False, ppm=False, sst=False)
    collator = TtTCollator(VOCAB, cfg, 512, seed=0)
    batch = next(b for b in (collator(samples, epoch=e) for e in range(20)) if b.stats["masked"] > 10)
    docs = packed_docs(batch, samples)
    in_doc, in_chat = batch.doc_ids[0] == docs["doc"], batch.doc_ids[0] == docs["chat"]
    doc_blocks = batch.block_ids[0][in_doc]
    assert len(doc_blocks.unique()) == 1 and doc_blocks[0] >= 0  # one block, from token 0 on
    assert doc_blocks[0] not in batch.block_ids[0][in_chat]
    ids, kind = batch.input_ids[0][in_doc].numpy(), batch.loss_kind[0][in_doc].numpy()
    assert ids[0] == doc.input_ids[0] and (kind != KIND_AR).all()
    masked = ids == VOCAB.mask_id
    assert masked.any() and np.array_equal(kind[:-1] == KIND_DIFFUSION, masked[1:])
    assert batch.n_ar == 0 and batch.n_maskable == int(target_tokens(chat)[1:].sum() + len(doc.input_ids) - 1)
    allowed = sdpa_mask(batch.doc_ids, batch.block_ids)[0, 0]
    first = int(in_doc.nonzero()[0])
    assert allowed[first][in_doc].all() and not allowed[first][~in_doc].any()  # token 0 sees the whole document


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="mode"):
        ObjectiveConfig(mode="diffusion")
    with pytest.raises(ValueError, match="TtT strategies"):
        ObjectiveConfig(mode="ar")
    with pytest.raises(ValueError, match="restricted"):
        ObjectiveConfig(mode="nar", banom=False, ppm=False, sst=False, audio_head="restricted")
    with pytest.raises(ValueError, match="sst_min_codes"):
        ObjectiveConfig(sst_min_codes=0)
    with pytest.raises(ValueError, match="trunc_keep"):
        ObjectiveConfig(trunc_keep=(0.9, 0.3))
    with pytest.raises(ValueError, match="unknown objective config keys"):
        ObjectiveConfig.from_mapping({"mode": "ttt", "p_mixx": 0.3})
    with pytest.raises(ValueError, match="audio_attention"):
        ObjectiveConfig(audio_attention="causal")
    with pytest.raises(ValueError, match="audio_block"):
        ObjectiveConfig(audio_attention="block_causal", audio_block=0)
    with pytest.raises(ValueError, match="block_causal needs mode ttt"):
        ObjectiveConfig(mode="ar", banom=False, ppm=False, sst=False, audio_attention="block_causal")
    for bad in (-1.0, float("nan"), float("inf"), "3"):
        with pytest.raises(ValueError, match="task_weights"):
            ObjectiveConfig(task_weights={"tts": bad})
    weighted = ObjectiveConfig.from_mapping({"task_weights": {"tts": 3, "asr": 0.5}})
    assert (weighted.task_weight("tts"), weighted.task_weight("asr"), weighted.task_weight("text_chat")) == (3, 0.5, 1)
    assert weighted.task_weight(None) == 1 and ObjectiveConfig().task_weight("tts") == 1
    assert ObjectiveConfig().span_block is None
    assert ObjectiveConfig(audio_attention="block_causal", audio_block=16).span_block == 16


def test_yaml_configs_mirror_the_dataclass() -> None:
    configs = {}
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        for name in ("ttt", "ar_baseline", "nar_baseline", "ttt_no_banom", "ttt_no_ppm", "ttt_no_sst"):
            configs[name] = ObjectiveConfig.from_mapping(compose(config_name=name))
    assert configs["ttt"] == ObjectiveConfig()
    for strategy in ("banom", "ppm", "sst"):
        assert configs[f"ttt_no_{strategy}"] == replace(configs["ttt"], **{strategy: False})
    assert configs["ar_baseline"].mode == "ar" and configs["nar_baseline"].mode == "nar"


def test_closer_type_is_kept_in_targets() -> None:
    seq = voice_chat()
    _, noised = mask_all(seq, "ttt")
    closers = noised.labels[noised.labels == VOCAB.id(EOA)]
    assert len(closers) == 1  # the non-final assistant span's closer, predicted once


# ---- block-causal audio spans ---------------------------------------------------------------------------

BLOCK = 4
BLOCK_CAUSAL = ObjectiveConfig(banom=False, ppm=False, sst=False, audio_attention="block_causal", audio_block=BLOCK)


def audio_spans(seq) -> list[int]:
    return [k for k, s in enumerate(seq.spans) if s.kind == "audio"]


def test_block_causal_splits_every_audio_span_into_blocks() -> None:
    seq = voice_chat()
    plan = plan_targets(seq.spans, len(seq.input_ids), "ttt", frozenset(), BLOCK)
    seen: set[int] = set()
    for k in audio_spans(seq):
        s = seq.spans[k]
        blocks = plan.block_ids[s.start : s.end]
        assert np.array_equal(blocks - blocks[0], np.arange(len(s)) // BLOCK)  # prompt spans too
        assert not seen & set(blocks.tolist())
        seen |= set(blocks.tolist())
    text = np.concatenate([np.arange(s.start, s.end) for s in seq.spans if s.kind == "text"])
    assert (plan.block_ids[text] == -1).all()
    assert [decoding_blocks(len(seq.spans[k]), BLOCK) for k in audio_spans(seq)] == [2, 2, 3, 2]


def test_block_causal_loss_sees_clean_earlier_blocks_and_its_own_block_only() -> None:
    """What decoding block j is predicted from, at decoding: the clean sequence before its attention block, and
    that block (positions jB .. (j + 1)B - 1 of the span, its own masks among them). Training must show the loss
    of block j exactly that. For every target span and every block j, with only that block noised (p = 1):
    the positions with diffusion loss are that attention block's, they see no masked token outside their own
    block, and they see exactly the tokens before the attention block plus the block itself."""
    seq = voice_chat()
    n = len(seq.input_ids)
    targets = [k for k in audio_spans(seq) if seq.spans[k].is_target]
    assert len(targets) == 3
    for k in targets:
        s = seq.spans[k]
        for j in range(decoding_blocks(len(s), BLOCK)):
            plan = plan_targets(seq.spans, n, "ttt", {k}, BLOCK, {k: j})
            noised = noise_sample(seq.input_ids, plan, 1.0, np.zeros(n), VOCAB.mask_id)
            local = decoding_block_targets(len(s), BLOCK, j)
            assert np.flatnonzero(plan.maskable).tolist() == list(range(s.start + local.start, s.start + local.stop))
            diffusion = np.flatnonzero(noised.loss_kind == KIND_DIFFUSION)
            assert diffusion.tolist() == list(range(s.start + j * BLOCK, s.start + local.stop - 1))
            assert len(set(plan.block_ids[diffusion].tolist())) == 1
            attention = np.flatnonzero(plan.block_ids == plan.block_ids[diffusion[0]])
            visible = sdpa_mask(torch.zeros(1, n, dtype=torch.long), torch.from_numpy(plan.block_ids)[None].long())
            masked = noised.input_ids == VOCAB.mask_id
            for q in diffusion:
                sees = visible[0, 0, q].numpy()
                assert np.flatnonzero(sees).tolist() == list(range(attention[-1] + 1))
                assert not (sees & masked & (plan.block_ids != plan.block_ids[q])).any()


def test_block_causal_collator_noises_one_drawn_block_per_diffused_span() -> None:
    seq = voice_chat()
    ids, n = seq.input_ids, len(seq.input_ids)
    sample = {"sample_id": "x", "input_ids": ids, "spans": spans_to_pylist(seq.spans)}
    collator = TtTCollator(VOCAB, BLOCK_CAUSAL, 512, seed=3)
    targets = [k for k in audio_spans(seq) if seq.spans[k].is_target]
    chosen: dict[int, set[int]] = {k: set() for k in targets}
    for epoch in range(40):
        batch = collator([sample], epoch=epoch)
        noised = draw_noised_blocks(seq.spans, frozenset(targets), BLOCK, sample_rng(3, epoch, "x", "block"))
        assert sorted(noised) == targets
        maskable = np.zeros(n, dtype=bool)
        for k, j in noised.items():
            s, local = seq.spans[k], decoding_block_targets(len(seq.spans[k]), BLOCK, j)
            maskable[s.start + local.start : s.start + local.stop] = True
            chosen[k].add(j)
        masked = batch.input_ids[0, :n].numpy() == VOCAB.mask_id
        assert not (masked & ~maskable).any() and batch.n_maskable == maskable.sum()
        plan = plan_targets(seq.spans, n, "ttt", None, BLOCK, noised)
        assert np.array_equal(batch.block_ids[0, :n].numpy(), plan.block_ids)
    assert all(chosen[k] == set(range(decoding_blocks(len(seq.spans[k]), BLOCK))) for k in targets)


def test_noised_block_draws_do_not_depend_on_which_spans_are_diffused() -> None:
    seq = voice_chat()
    targets = [k for k in audio_spans(seq) if seq.spans[k].is_target]
    for seed in range(20):
        every = draw_noised_blocks(seq.spans, frozenset(targets), 2, np.random.default_rng(seed))
        last = draw_noised_blocks(seq.spans, frozenset(targets[-1:]), 2, np.random.default_rng(seed))
        assert last == {targets[-1]: every[targets[-1]]}


def test_block_causal_plans_are_checked() -> None:
    seq = voice_chat()
    with pytest.raises(ValueError, match="has no noised block"):
        plan_targets(seq.spans, len(seq.input_ids), "ttt", None, BLOCK)
    with pytest.raises(ValueError, match="need mode ttt"):
        plan_targets(seq.spans, len(seq.input_ids), "nar", None, BLOCK)
    with pytest.raises(ValueError, match="no decoding block 2"):
        decoding_block_targets(9, 4, 2)


def spliced_pairs(cfg: ObjectiveConfig, max_tokens: int = 512) -> list[tuple[np.ndarray, ...]]:
    """(own noised sample, control sample) rows of the collator, one sample per row, for TTS-like, ASR-like and
    multi-turn samples with prompts of different lengths."""
    rng = np.random.default_rng(1)
    seqs = {
        "tts": build_chat(VOCAB, [Turn("user", [Part(text="read this aloud please")]),
                                  Turn("assistant", [Part.audio(rng.integers(0, 512, 30), final=True)])]),
        "asr": build_chat(VOCAB, [Turn("user", [Part.audio(rng.integers(0, 512, 12))]),
                                  Turn("assistant", [Part(text="the words")])]),
        "chat": voice_chat(),
    }
    samples = as_samples(**seqs)
    collator = TtTCollator(VOCAB, cfg, max_tokens, seed=5, packing=False)
    own = collator(samples, epoch=2)
    donors = samples[1:] + samples[:1]
    control = collator(samples, epoch=2, prompt_donors=donors)
    return [(own, control, s, d) for s, d in zip(samples, donors, strict=True)]


@pytest.mark.parametrize("cfg", [ObjectiveConfig(), ObjectiveConfig(audio_attention="block_causal", audio_block=8),
                                 ObjectiveConfig(mode="ar", banom=False, ppm=False, sst=False),
                                 ObjectiveConfig(mode="nar", banom=False, ppm=False, sst=False)],
                         ids=["ttt", "block_causal", "ar", "nar"])
def test_prompt_control_keeps_the_targets_and_their_noise_and_swaps_only_the_prompt(cfg: ObjectiveConfig) -> None:
    """The control row of sample i = donor's prompt + sample i's own noised targets: same labels, kinds and weights
    (so a prompt-blind model scores the same), nothing of i's prompt, and blocks that never span the seam."""
    for row, (own, control, sample, donor) in enumerate(spliced_pairs(cfg)):
        n_own = int((own.doc_ids[row] >= 0).sum())
        n_ctl = int((control.doc_ids[row] >= 0).sum())
        kinds = own.loss_kind[row, :n_own].numpy()
        cut = int(np.flatnonzero(kinds)[0])
        donor_ids = np.asarray(donor["input_ids"])
        donor_cut = n_ctl - (n_own - cut)
        assert 0 < donor_cut < len(donor_ids) and cut > 0
        for name in ("input_ids", "labels", "loss_kind", "loss_weight"):
            assert torch.equal(getattr(control, name)[row, donor_cut:n_ctl], getattr(own, name)[row, cut:n_own]), name
        assert np.array_equal(control.input_ids[row, :donor_cut].numpy(), donor_ids[:donor_cut])
        assert (control.loss_kind[row, :donor_cut] == KIND_NONE).all()
        head, tail = control.block_ids[row, :donor_cut], control.block_ids[row, donor_cut:n_ctl]
        assert not set(head[head >= 0].tolist()) & set(tail[tail >= 0].tolist())
        assert np.array_equal((tail >= 0).numpy(), (own.block_ids[row, cut:n_own] >= 0).numpy())
        assert not np.array_equal(donor_ids[:donor_cut], np.asarray(sample["input_ids"])[:cut])
    assert control.n_ar == own.n_ar and control.n_maskable == own.n_maskable
    assert control.stats["masked"] == own.stats["masked"]


def test_prompt_control_drops_the_start_of_a_donor_prompt_that_does_not_fit() -> None:
    chat, asr = spliced_pairs(PLAIN_TTT)[2][2], spliced_pairs(PLAIN_TTT)[1][2]
    collator = TtTCollator(VOCAB, PLAIN_TTT, len(asr["input_ids"]), seed=0, packing=False)
    own = collator([asr], 0)
    short = collator([asr], 0, prompt_donors=[chat])  # the chat's prompt is longer than the ASR sample's
    n = int((short.doc_ids[0] >= 0).sum())
    assert n == short.input_ids.shape[1]  # cut to the row length, never longer
    tail = int((own.doc_ids[0] >= 0).sum()) - first_target_of(own)
    assert torch.equal(short.labels[0, n - tail:], own.labels[0, -tail:])
    assert np.array_equal(short.input_ids[0, : n - tail].numpy(),
                          np.asarray(chat["input_ids"])[first_target_of(collator([chat], 0)) - (n - tail):
                                                        first_target_of(collator([chat], 0))])
    with pytest.raises(ValueError, match="one prompt donor per sample"):
        collator([asr, asr], 0, prompt_donors=[chat])


def first_target_of(batch) -> int:
    return int(np.flatnonzero(batch.loss_kind[0].numpy())[0])


def test_splice_of_a_sample_without_targets_keeps_it_whole() -> None:
    ids = np.arange(6)
    plan = plan_targets([], 6, "ttt")
    empty = noise_sample(ids, plan, 0.5, np.ones(6), VOCAB.mask_id)
    assert first_target(empty) == 6
    out = splice_prompt(empty, empty, 100)
    assert np.array_equal(out.input_ids, ids) and out.n_ar == 0
