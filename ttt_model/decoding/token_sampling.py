"""Token choice for the sampler: temperature / top-k / top-p, greedy, confidences, and which masked
positions a diffusion step commits.

Pure functions over logits, shared by the cached sampler and the full-recompute oracle: the two differ
only in how they compute hidden states, so equal hidden states give equal tokens. The settings they read
(`SamplingParams`) live in ttt_model/decoding/sampler_config.py, which stays free of torch.
"""

from __future__ import annotations

import torch

from ttt_model.decoding.sampler_config import SamplingParams


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) over the last dim; removed entries become -inf.

    Greedy params return the logits unchanged (argmax does not depend on them).
    """
    if params.greedy:
        return logits
    out = logits / params.temperature
    if 0 < params.top_k < out.shape[-1]:
        kth = torch.topk(out, params.top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the first token always stays)
        drop_sorted = (cum - torch.softmax(sorted_logits, dim=-1)) >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def choose(logits: torch.Tensor, params: SamplingParams,
           generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row of `logits` [n, V] -> (column indices [n], confidence [n]).

    Confidence is the probability of the chosen token under the distribution it was drawn from (the
    softmax of the raw logits when greedy); diffusion steps commit the most confident positions first.
    """
    filtered = filter_logits(logits.float(), params)
    probs = torch.softmax(filtered, dim=-1)
    if params.greedy:
        conf, tokens = probs.max(dim=-1)
        return tokens, conf
    tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tokens, probs.gather(-1, tokens[:, None]).squeeze(-1)


def commit_schedule(n_masked: int, steps: int) -> list[int]:
    """How many positions each of `steps` diffusion steps commits for a block of `n_masked` masks: an even
    split, the remainder going to the first steps (as LLaDA), never zero (a step that commits nothing is
    wasted), so a block takes min(steps, n_masked) steps."""
    steps = max(1, min(steps, n_masked))
    base, extra = divmod(n_masked, steps)
    return [base + (i < extra) for i in range(steps)]


def select_commits(confidence: torch.Tensor, k: int, threshold: float | None) -> torch.Tensor:
    """Indices (into `confidence`) of the candidates to commit this step.

    Low-confidence remasking: the `k` most confident. With `threshold` (Fast-dLLM's parallel decoding):
    every candidate whose confidence reaches it, and at least the most confident one. Ties go to the
    earlier position (stable sort), so the choice is deterministic.
    """
    order = torch.sort(confidence, descending=True, stable=True).indices
    if threshold is None:
        return order[: max(1, k)]
    n = max(1, int((confidence >= threshold).sum()))
    return order[:n]
