"""Block-wise streaming token2wav, as GLM-4-Voice runs its decoder while the LM is still speaking.

Codes arrive in blocks (GLM-4-Voice's web demo: 10, then 20, then 40 tokens at a time at 12.5 Hz, i.e.
0.8 s, 1.6 s, 3.2 s of speech). Each block is decoded by the flow with *all earlier tokens as the
prompt* and the mel already emitted as the prompt condition, so the ODE continues the same voice. To
hide the seam:
- the last `mel_overlap_len` frames (0.4 s) of each non-final block are held back and cross-faded (Hamming
  window halves) with the first frames of the next block, which re-generates that region;
- the vocoder keeps its last mel frame and the last hop of its harmonic source, re-runs that frame at the
  start of the next block with the cached source (phase continuity), and withholds its audio until then.
Every mel frame is vocoded exactly once, so the stream has exactly the length of a one-shot decode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from tokenization.codecs.base import StreamingDecoder

GLM_BLOCK_SECONDS = (0.8, 1.6, 3.2)  # web_demo.py block_size_list [10, 20, 40] at 12.5 Hz
GLM_OVERLAP_SECONDS = 0.4  # flow_inference.py token_overlap_len = 5 at 12.5 Hz (CosyVoice: 20 at 50 Hz)
MEL_CACHE_FRAMES = 1  # flow_inference.py mel_cache_len


class Token2WavModel(Protocol):
    """What the streaming decoder needs from the decoder (implemented by CosyVoiceDecoder)."""

    token_rate: float
    sample_rate: int
    hop_length: int
    n_mels: int

    def validate_codes(self, codes: np.ndarray) -> np.ndarray: ...

    def mel_frames(self, n_tokens: int) -> int: ...

    def flow_mel(
        self, tokens: torch.Tensor, prompt_tokens: torch.Tensor, prompt_mel: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor: ...

    def vocode(
        self, mel: torch.Tensor, generator: torch.Generator, cache_source: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def new_generator(self) -> torch.Generator: ...

    @property
    def device(self) -> torch.device: ...


@dataclass(frozen=True)
class StreamSchedule:
    """Token counts per block (the last one repeats) and the mel overlap between blocks."""

    block_tokens: tuple[int, ...]
    mel_overlap_len: int

    @classmethod
    def glm4voice(cls, token_rate: float, sample_rate: int, hop_length: int) -> StreamSchedule:
        """GLM-4-Voice's schedule, expressed in seconds so it carries over to other token rates."""
        blocks = tuple(max(1, round(s * token_rate)) for s in GLM_BLOCK_SECONDS)
        overlap_tokens = max(1, round(GLM_OVERLAP_SECONDS * token_rate))
        return cls(blocks, int(overlap_tokens / token_rate * sample_rate / hop_length))


def _fade(new_mel: torch.Tensor, held_back: torch.Tensor, window: np.ndarray) -> torch.Tensor:
    """Cross-fade the start of new_mel with the held-back tail of the previous block (fade_in_out)."""
    n = held_back.size(-1)
    w = torch.from_numpy(window).to(new_mel.device)
    mixed = new_mel[..., :n].double() * w[:n] + held_back.double() * w[n:]
    out = new_mel.clone()
    out[..., :n] = mixed.to(new_mel.dtype)
    return out


class BlockStreamingDecoder(StreamingDecoder):
    """StreamingDecoder for a CosyVoice/GLM-4-Voice decoder (one utterance; reusable after flush)."""

    def __init__(self, model: Token2WavModel, schedule: StreamSchedule) -> None:
        if not schedule.block_tokens or min(schedule.block_tokens) < 1:
            raise ValueError("every streaming block needs at least one token")
        if model.mel_frames(schedule.block_tokens[0]) <= schedule.mel_overlap_len:
            raise ValueError(
                f"first block of {schedule.block_tokens[0]} tokens gives no more than the "
                f"{schedule.mel_overlap_len}-frame overlap; nothing could be emitted"
            )
        self._model = model
        self._schedule = schedule
        self._window = np.hamming(2 * schedule.mel_overlap_len)
        self._source_cache_len = MEL_CACHE_FRAMES * model.hop_length
        self._reset()

    def _reset(self) -> None:
        device = self._model.device
        self._pending: list[np.ndarray] = []
        self._n_pending = 0
        self._block_index = 0
        self._prompt_tokens = torch.zeros(1, 0, dtype=torch.long, device=device)
        self._prompt_mel = torch.zeros(1, 0, self._model.n_mels, device=device)
        self._held_back: torch.Tensor | None = None
        self._hift_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self._generator = self._model.new_generator()

    def _block_size(self) -> int:
        sizes: Sequence[int] = self._schedule.block_tokens
        return sizes[min(self._block_index, len(sizes) - 1)]

    def push(self, codes: np.ndarray) -> np.ndarray:
        codes = self._model.validate_codes(codes)
        if codes.size:
            self._pending.append(codes)
            self._n_pending += codes.size
        if self._n_pending < self._block_size():
            return np.zeros(0, dtype=np.float32)
        self._block_index += 1
        return self._decode_pending(finalize=False)

    def flush(self) -> np.ndarray:
        if self._n_pending:
            audio = self._decode_pending(finalize=True)
        elif self._held_back is not None:
            audio = self._vocode(self._held_back, finalize=True)
        else:
            audio = np.zeros(0, dtype=np.float32)
        self._reset()
        return audio

    @torch.inference_mode()
    def _decode_pending(self, *, finalize: bool) -> np.ndarray:
        tokens = torch.from_numpy(np.concatenate(self._pending)).unsqueeze(0).to(self._model.device)
        self._pending, self._n_pending = [], 0
        mel = self._model.flow_mel(tokens, self._prompt_tokens, self._prompt_mel, self._generator)
        if self._held_back is not None:
            mel = _fade(mel, self._held_back, self._window)
        if finalize:
            self._held_back = None
        else:
            overlap = self._schedule.mel_overlap_len
            self._held_back = mel[..., -overlap:]
            mel = mel[..., :-overlap]
        self._prompt_tokens = torch.cat([self._prompt_tokens, tokens], dim=1)
        self._prompt_mel = torch.cat([self._prompt_mel, mel.transpose(1, 2)], dim=1)
        return self._vocode(mel, finalize=finalize)

    @torch.inference_mode()
    def _vocode(self, mel: torch.Tensor, *, finalize: bool) -> np.ndarray:
        cache_source = None
        mel_in = mel
        if self._hift_cache is not None:
            cached_mel, cache_source = self._hift_cache
            mel_in = torch.cat([cached_mel, mel], dim=-1)
        speech, source = self._model.vocode(mel_in, self._generator, cache_source)
        if finalize:
            self._hift_cache = None
        else:
            self._hift_cache = (mel[..., -MEL_CACHE_FRAMES:], source[..., -self._source_cache_len :])
            speech = speech[..., : -self._source_cache_len]
        return speech[0].float().cpu().numpy()
