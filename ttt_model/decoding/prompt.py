"""Where decoding starts: a prompt's chat structure (`chat_spans`) and the block ids of its training mask
(`prompt_block_ids`).

The mask a decoder attends with is the training mask by construction: `prompt_block_ids` runs the objective's
own `plan_targets` over the prompt's chat structure, and every chunk a decoder feeds afterwards extends it
exactly as training would see the finished sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tokenization.sequence import Span, spans_from_ids
from tokenization.vocab import IM_END, IM_START, UnifiedVocab
from ttt_model.core.objective import plan_targets


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
