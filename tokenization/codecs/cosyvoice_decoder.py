"""CosyVoice flow-matching + HiFT decoder: speech codes -> 22.05 kHz waveform.

This is the decoder half of the production codecs: GLM-4-Voice's tokens (16,384 codes at 12.5 Hz,
decoded by its "glm-4-voice-decoder" directory) and CosyVoice S3 tokens (CosyVoice-300M's flow/HiFT).
A decoder directory holds `config.yaml` (upstream HyperPyYAML), `flow.pt` and `hift.pt`; we build our
own modules from the config and load both state dicts strictly, so a wrong or partial directory fails
loudly instead of producing noise. `decode` is GLM-4-Voice's one-shot `token2wav` (no prompt, zero
speaker embedding); `stream_decoder` is its block-wise streaming with mel overlap and vocoder cache.
The ODE noise and the vocoder's random phases come from a generator seeded per utterance, so decoding
the same codes twice gives the same audio.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tokenization.codecs.base import StreamingDecoder
from tokenization.codecs.cosyvoice.config import build_decoder_modules
from tokenization.codecs.cosyvoice.flow import MaskedDiffWithXvec, mel_frames
from tokenization.codecs.cosyvoice.hift import HiFTGenerator
from tokenization.codecs.cosyvoice.random_init import make_random_cosyvoice_decoder
from tokenization.codecs.cosyvoice.streaming import BlockStreamingDecoder, StreamSchedule

__all__ = ["REQUIRED_FILES", "CosyVoiceDecoder", "make_random_cosyvoice_decoder"]

REQUIRED_FILES = ("config.yaml", "flow.pt", "hift.pt")
DEFAULT_N_TIMESTEPS = 10  # upstream flow.inference hard-codes 10 Euler steps


def _load_strict(module: torch.nn.Module, path: Path, device: torch.device) -> None:
    """Load a state dict with strict key checking, naming the file and keys on mismatch."""
    state = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"{path} does not match config.yaml: {err}") from err
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path} does not match config.yaml: missing keys {result.missing_keys[:10]} "
            f"({len(result.missing_keys)} total), unexpected keys {result.unexpected_keys[:10]} "
            f"({len(result.unexpected_keys)} total)"
        )


class CosyVoiceDecoder:
    """Codes (1-D ints in [0, vocab_size)) -> mono float32 waveform at `sample_rate`."""

    def __init__(
        self,
        flow: MaskedDiffWithXvec,
        hift: HiFTGenerator,
        device: str | torch.device = "cpu",
        *,
        n_timesteps: int = DEFAULT_N_TIMESTEPS,
        seed: int = 0,
    ) -> None:
        if n_timesteps < 1:
            raise ValueError("n_timesteps must be >= 1")
        self._device = torch.device(device)
        self.flow = flow.to(self._device).eval()
        self.hift = hift.to(self._device).eval()
        self.n_timesteps = n_timesteps
        self.seed = seed
        self.sample_rate: int = hift.sampling_rate
        self.hop_length: int = hift.upsample_scale
        self.vocab_size: int = flow.vocab_size
        self.token_rate: float = flow.input_frame_rate
        self.n_mels: int = flow.output_size
        self.spk_embed_dim: int = flow.spk_embed_dim

    @classmethod
    def from_dir(
        cls,
        model_dir: str | Path,
        device: str | torch.device = "cpu",
        *,
        n_timesteps: int = DEFAULT_N_TIMESTEPS,
        seed: int = 0,
    ) -> CosyVoiceDecoder:
        """Build from a decoder directory (config.yaml, flow.pt, hift.pt), e.g. glm-4-voice-decoder."""
        root = Path(model_dir)
        missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{root}: missing decoder file(s) {missing} (need {list(REQUIRED_FILES)})")
        modules = build_decoder_modules(root / "config.yaml")
        target = torch.device(device)
        _load_strict(modules.flow, root / "flow.pt", target)
        _load_strict(modules.hift, root / "hift.pt", target)
        modules.hift.remove_weight_norm()
        return cls(modules.flow, modules.hift, target, n_timesteps=n_timesteps, seed=seed)

    @property
    def device(self) -> torch.device:
        return self._device

    def new_generator(self) -> torch.Generator:
        """Generator (on the decoder's device) for one utterance's ODE noise and source phases/noise."""
        return torch.Generator(device=self._device).manual_seed(self.seed)

    def mel_frames(self, n_tokens: int) -> int:
        return mel_frames(n_tokens, self.token_rate, self.sample_rate, self.hop_length)

    def num_samples(self, n_codes: int) -> int:
        """Exact length of `decode` output (and of a flushed stream) for n_codes codes."""
        return self.mel_frames(n_codes) * self.hop_length

    def validate_codes(self, codes: np.ndarray) -> np.ndarray:
        """1-D integer codes in [0, vocab_size) as int64; anything else raises ValueError."""
        arr = np.asarray(codes)
        if arr.ndim != 1:
            raise ValueError(f"codes must be 1-D, got shape {arr.shape}")
        if arr.size and (arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"codes must be integers, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(f"codes must lie in [0, {self.vocab_size}), got [{arr.min()}, {arr.max()}]")
        return arr.astype(np.int64)

    def flow_mel(
        self, tokens: torch.Tensor, prompt_tokens: torch.Tensor, prompt_mel: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """(1, N) tokens after (1, P) prompt tokens with (1, P_mel, n_mels) prompt mel -> (1, n_mels, T)."""
        embedding = torch.zeros(1, self.spk_embed_dim, device=self._device)
        return self._flow_mel(tokens, prompt_tokens, prompt_mel, embedding, generator)

    def _flow_mel(
        self,
        tokens: torch.Tensor,
        prompt_tokens: torch.Tensor,
        prompt_mel: torch.Tensor,
        embedding: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        return self.flow.inference(
            tokens,
            prompt_tokens,
            prompt_mel,
            embedding,
            n_timesteps=self.n_timesteps,
            sample_rate=self.sample_rate,
            hop_length=self.hop_length,
            generator=generator,
        )

    def vocode(
        self, mel: torch.Tensor, generator: torch.Generator, cache_source: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, n_mels, T) mel -> ((1, T * hop) waveform, (1, 1, T * hop) harmonic source)."""
        return self.hift.inference(mel, generator, cache_source)

    @torch.inference_mode()
    def decode(
        self,
        codes: np.ndarray,
        *,
        prompt_codes: np.ndarray | None = None,
        prompt_mel: np.ndarray | None = None,
        speaker_embedding: np.ndarray | None = None,
    ) -> np.ndarray:
        """Codes -> waveform of exactly `num_samples(len(codes))` samples (empty codes -> empty audio).

        Optional zero-shot prompt, as CosyVoice's flow supports it: `prompt_codes` are the codes of a
        reference utterance and `prompt_mel` its (T_mel, n_mels) log-mel in CosyVoice's feature
        convention (22.05 kHz, hop 256, 80 bins); `speaker_embedding` is its x-vector. The output
        covers only `codes`.
        """
        tokens = self.validate_codes(codes)
        if tokens.size == 0:
            return np.zeros(0, dtype=np.float32)
        prompt_tokens = self.validate_codes(np.zeros(0, np.int64) if prompt_codes is None else prompt_codes)
        prompt = np.zeros((0, self.n_mels), np.float32) if prompt_mel is None else np.asarray(prompt_mel, np.float32)
        if prompt.ndim != 2 or prompt.shape[1] != self.n_mels:
            raise ValueError(f"prompt_mel must have shape (frames, {self.n_mels}), got {prompt.shape}")
        if prompt.shape[0] and not prompt_tokens.size:
            raise ValueError("prompt_mel needs the matching prompt_codes")
        spk = np.zeros(self.spk_embed_dim, np.float32) if speaker_embedding is None else speaker_embedding
        spk = np.asarray(spk, np.float32).reshape(1, -1)
        if spk.shape[1] != self.spk_embed_dim:
            raise ValueError(f"speaker_embedding must have {self.spk_embed_dim} values, got {spk.shape[1]}")
        generator = self.new_generator()
        mel = self._flow_mel(
            torch.from_numpy(tokens).unsqueeze(0).to(self._device),
            torch.from_numpy(prompt_tokens).unsqueeze(0).to(self._device),
            torch.from_numpy(prompt).unsqueeze(0).to(self._device),
            torch.from_numpy(spk).to(self._device),
            generator,
        )
        speech, _ = self.vocode(mel, generator)
        return speech[0].float().cpu().numpy()

    def stream_decoder(self) -> StreamingDecoder:
        """GLM-4-Voice-style streaming: blocks of 0.8 s, 1.6 s, then 3.2 s of codes, 0.4 s mel overlap."""
        schedule = StreamSchedule.glm4voice(self.token_rate, self.sample_rate, self.hop_length)
        return BlockStreamingDecoder(self, schedule)
