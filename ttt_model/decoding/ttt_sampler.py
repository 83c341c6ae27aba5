"""The sampler: decoding for the three training objectives of Table 1 (`SamplerConfig.decode`: ttt | ar | nar |
auto).

Each checkpoint must be decoded the way it was trained (ttt_model/core/objective.py `mode`); `auto` takes the mode the
checkpoint records (ttt_model/core/model_checkpoint.py `objective.json`), TtT when it records none
(`resolve_decode`, ttt_model/decoding/sampler_config.py). `TtTSampler.start` runs that mode's decoder:

- ttt: `BlockDiffusionRun` (block_diffusion.py, paper Algorithm 1): AR text with a KV cache, block-wise
  diffusion inside audio spans;
- ar: `ArDecodeRun` (ar_decoder.py): every token autoregressive;
- nar: `NarDecodeRun` (nar_decoder.py): the whole response one diffusion block.

Where the rest lives: the batched loop the three share (decode_run.py), per-row state (row_state.py), the
prompt's training mask (prompt.py), events and results (events.py), settings (sampler_config.py), token choice
(token_sampling.py), the backends that compute hidden states (kv_cache.py; recompute.py, the oracle).

`TtTSampler` itself holds what every decoder shares: the model, the vocabulary, the settings, and the LM head
applied only to the rows and columns a choice needs (`next_text_token`, `propose_audio`, `propose_response`),
with the optional logits processor (events.py) called before each choice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import Qwen2ForCausalLM

from tokenization.vocab import EOA, EOA_FINAL, SOA, SOA_FINAL, UnifiedVocab
from ttt_model.core.model import attention_backend
from ttt_model.decoding.ar_decoder import ArDecodeRun
from ttt_model.decoding.block_diffusion import BlockDiffusionRun
from ttt_model.decoding.decode_run import DecodeRun
from ttt_model.decoding.events import Generation, LogitsContext, LogitsProcessor
from ttt_model.decoding.nar_decoder import NarDecodeRun
from ttt_model.decoding.sampler_config import SamplerConfig, resolve_decode, resolve_span_block
from ttt_model.decoding.token_sampling import choose

RUNS: dict[str, type[DecodeRun]] = {"ttt": BlockDiffusionRun, "ar": ArDecodeRun, "nar": NarDecodeRun}


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
        return RUNS[self.decode](self, [self._check_prompt(p) for p in prompts])

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
