from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import create_mask, flex_attention

from tokenization.sequence import Span
from ttt_model.core.attention import build_attention, flex_block_mask, mask_mod_for, sdpa_mask
from ttt_model.core.objective import plan_targets


def brute_force(doc: list[int], block: list[int]) -> list[list[bool]]:
    """The specification, one (q, k) pair at a time."""
    n = len(doc)
    return [
        [(doc[q] == doc[k] != -1 and (k <= q or (block[q] != -1 and block[q] == block[k]))) or q == k for k in range(n)]
        for q in range(n)
    ]


@st.composite
def rows(draw: st.DrawFn, max_len: int = 40) -> tuple[list[int], list[int]]:
    """A packed row: samples made of causal runs and bidirectional blocks, then padding."""
    doc: list[int] = []
    block: list[int] = []
    n_docs = n_blocks = 0
    while len(doc) < max_len and draw(st.booleans()):
        for _ in range(draw(st.integers(1, 4))):
            length = draw(st.integers(1, 6))
            is_block = draw(st.booleans())
            doc += [n_docs] * length
            block += [n_blocks if is_block else -1] * length
            n_blocks += is_block
        n_docs += 1
    pad = draw(st.integers(0, 5))
    return (doc + [-1] * pad)[:max_len] or [-1], (block + [-1] * pad)[:max_len] or [-1]


@st.composite
def batches(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    rs = draw(st.lists(rows(), min_size=1, max_size=3))
    length = max(len(d) for d, _ in rs)
    doc = torch.tensor([d + [-1] * (length - len(d)) for d, _ in rs])
    block = torch.tensor([b + [-1] * (length - len(b)) for _, b in rs])
    return doc, block


def dense_brute_force(doc: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    return torch.tensor([brute_force(d, b) for d, b in zip(doc.tolist(), block.tolist(), strict=True)])[:, None]


@settings(max_examples=150, deadline=None)
@given(batches())
def test_sdpa_mask_equals_brute_force(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    doc, block = batch
    mask = sdpa_mask(doc, block)
    assert mask.dtype == torch.bool and mask.shape == (doc.shape[0], 1, doc.shape[1], doc.shape[1])
    assert torch.equal(mask, dense_brute_force(doc, block))


@settings(max_examples=25, deadline=None)
@given(batches())
def test_flex_block_mask_equals_brute_force(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    doc, block = batch
    expected = dense_brute_force(doc, block)
    b, n = doc.shape
    assert torch.equal(create_mask(mask_mod_for(doc, block), b, None, n, n, device="cpu"), expected)
    tile = 8
    block_mask = flex_block_mask(doc, block, block_size=tile)
    padded = F.pad(expected, (0, -n % tile, 0, -n % tile))
    tiles = padded.reshape(b, 1, padded.shape[2] // tile, tile, padded.shape[3] // tile, tile).any(5).any(3)
    assert torch.equal(block_mask.to_dense().bool(), tiles)


# ---- block-causal audio spans ---------------------------------------------------------------------------


@st.composite
def span_samples(draw: st.DrawFn) -> tuple[list[list[Span]], int]:
    """1-3 samples, each a run of text and audio spans (adjacent audio spans included), and a block length."""
    samples = []
    for _ in range(draw(st.integers(1, 3))):
        spans, pos = [], 0
        for _ in range(draw(st.integers(1, 5))):
            kind = draw(st.sampled_from(["text", "audio"]))
            length = draw(st.integers(2 if kind == "audio" else 1, 14))
            spans.append(Span(kind, pos, pos + length, "assistant", draw(st.booleans())))
            pos += length
        samples.append(spans)
    return samples, draw(st.integers(1, 6))


def block_causal_spec(samples: list[list[Span]], block: int, length: int) -> torch.Tensor:
    """The specification of block-causal audio spans, from the spans themselves, one (q, k) pair at a time: inside
    a sample, q sees k when k <= q, or when both are in one audio span and in the same run of `block` tokens from
    its opener; nothing crosses samples; padding sees itself."""
    doc = [-1] * length
    chunk = [None] * length  # (span start, block index) of audio tokens
    pos = 0
    for d, spans in enumerate(samples):
        for sp in spans:
            for i in range(sp.start, sp.end):
                doc[pos + i] = d
                if sp.kind == "audio":
                    chunk[pos + i] = (pos + sp.start, (i - sp.start) // block)
        pos += spans[-1].end
    return torch.tensor([[(doc[q] == doc[k] != -1 and (k <= q or (chunk[q] is not None and chunk[q] == chunk[k])))
                          or q == k for k in range(length)] for q in range(length)])[None, None]


def packed_block_causal(samples: list[list[Span]], block: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """doc / block ids of one packed row as the collator builds them: plan_targets per sample, block ids offset."""
    doc, blocks = torch.full((1, length), -1), torch.full((1, length), -1)
    pos = n_blocks = 0
    for d, spans in enumerate(samples):
        n = spans[-1].end
        local = torch.from_numpy(plan_targets(spans, n, "ttt", frozenset(), block).block_ids).long()
        doc[0, pos : pos + n] = d
        blocks[0, pos : pos + n] = torch.where(local >= 0, local + n_blocks, -1)
        n_blocks += int(local.max()) + 1
        pos += n
    return doc, blocks


@settings(max_examples=80, deadline=None)
@given(span_samples(), st.integers(0, 4))
def test_block_causal_spans_equal_their_specification(case: tuple[list[list[Span]], int], pad: int) -> None:
    """Block-causal spans are expressed as one block id per run of `block` tokens of a span: the one predicate,
    through SDPA's boolean mask and FlexAttention's mask_mod alike, gives exactly the span-level specification."""
    samples, block = case
    length = sum(spans[-1].end for spans in samples) + pad
    doc, blocks = packed_block_causal(samples, block, length)
    expected = block_causal_spec(samples, block, length)
    assert torch.equal(sdpa_mask(doc, blocks), expected)
    assert torch.equal(create_mask(mask_mod_for(doc, blocks), 1, None, length, length, device="cpu"), expected)


def test_block_causal_flex_attention_matches_sdpa_on_cpu() -> None:
    samples = [[Span("text", 0, 3, "user", False), Span("audio", 3, 14, "assistant", True),
                Span("audio", 14, 19, "assistant", True), Span("text", 19, 21, "assistant", True)],
               [Span("audio", 0, 9, "user", False)]]
    doc, blocks = packed_block_causal(samples, 4, 34)
    assert len(blocks.unique()) == 1 + 3 + 2 + 3  # causal, then 3 + 2 blocks in the first sample, 3 in the second
    assert_flex_matches_sdpa(doc, blocks)


def packed_metadata(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of packed samples (causal runs and bidirectional blocks of random lengths), padding at the end."""
    gen = torch.Generator().manual_seed(seed)

    def draw(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    doc = torch.full((batch, length), -1)
    block = torch.full((batch, length), -1)
    for row in range(batch):
        pos = n_docs = n_blocks = 0
        fill = length - draw(5, 40)
        while pos < fill:
            for _ in range(draw(1, 5)):
                run = slice(pos, min(pos + draw(1, 30), fill))
                doc[row, run] = n_docs
                if draw(0, 1):
                    block[row, run] = n_blocks
                    n_blocks += 1
                pos = run.stop
            n_docs += 1
    return doc, block


def test_flex_mask_is_safe_when_the_row_length_is_not_a_multiple_of_the_tile() -> None:
    """L = 200 with 128-token tiles: FlexAttention may evaluate mask_mod at indices up to 255 (the padded
    tail of the last tile, pytorch/pytorch#137801). It must not index past the metadata and must mask
    those positions out; the BlockMask's tiles and its mask_mod must equal the brute force."""
    doc, block = packed_metadata(2, 200, seed=0)
    expected = dense_brute_force(doc, block)
    padded = F.pad(expected, (0, 56, 0, 56))
    assert torch.equal(create_mask(mask_mod_for(doc, block), 2, None, 256, 256, device="cpu"), padded)
    block_mask = flex_block_mask(doc, block)
    assert block_mask.shape == (2, 1, 200, 200)
    tiles = padded.reshape(2, 1, 2, 128, 2, 128).any(5).any(3)
    assert torch.equal(block_mask.to_dense().bool(), tiles)
    assert torch.equal(create_mask(block_mask.mask_mod, 2, None, 200, 200, device="cpu"), expected)


def test_flex_attention_matches_sdpa_on_cpu() -> None:
    doc = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 1, -1, -1, -1]])
    block = torch.tensor([[-1, 0, 0, 0, -1, 1, 1, -1, -1, -1, -1, -1]])
    assert_flex_matches_sdpa(doc, block)


def assert_flex_matches_sdpa(doc: torch.Tensor, block: torch.Tensor) -> None:
    """Eager FlexAttention with our BlockMask gives SDPA's output with our boolean mask (random q, k, v)."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, doc.shape[0], 2, doc.shape[1], 8).unbind(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex_attention warns that it is not compiled
        out = flex_attention(q, k, v, block_mask=build_attention(_Meta(doc, block), "flex"))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=build_attention(_Meta(doc, block), "sdpa"))
    torch.testing.assert_close(out, ref)


class _Meta:
    def __init__(self, doc: torch.Tensor, block: torch.Tensor) -> None:
        self.doc_ids, self.block_ids = doc, block


def test_padding_rows_do_not_produce_nan() -> None:
    doc = torch.tensor([[0, 0, -1, -1], [-1, -1, -1, -1]])
    block = torch.full_like(doc, -1)
    q = torch.randn(2, 1, 4, 8, requires_grad=True)
    out = F.scaled_dot_product_attention(q, q, q, attn_mask=sdpa_mask(doc, block))
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(q.grad).all()


def test_modality_aware_semantics() -> None:
    # text(0,1) audio span(2..5) text(6) | next sample: text(7) audio(8, 9)
    doc = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 1, 1, 1]])
    block = torch.tensor([[-1, -1, 0, 0, 0, 0, -1, -1, 1, 1]])
    m = sdpa_mask(doc, block)[0, 0]
    assert not m[0, 1]  # text is causal
    assert m[2, 5] and m[3, 5]  # opener and codes see the whole span
    assert m[5, 0] and not m[1, 2]  # audio sees the past, text not the future span
    assert not m[6, 7] and not m[7, 6] and not m[8, 3]  # packed samples are isolated
    assert m[8, 9] and m[9, 7]


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="backend"):
        build_attention(_Meta(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long)), "dense")
