"""CosyVoice's supervised semantic speech tokenizer (S3) via the `s3tokenizer` package, plus its codec.

Variants, chosen by canonical name (never guessed from a file path, because the model class and the
first convolution's stride depend on the name):
- speech_tokenizer_v1:        50 Hz, 4,096 codes (CosyVoice-300M)
- speech_tokenizer_v1_25hz:   25 Hz, 4,096 codes (CosyVoice-300M-25Hz)
- speech_tokenizer_v2_25hz:   25 Hz, 6,561 codes (CosyVoice2, FSQ)
- speech_tokenizer_v3_25hz:   25 Hz, 6,561 codes (Fun-CosyVoice3, FSQ)

Weights come from a local file: the released ONNX (converted with s3tokenizer's `onnx2torch`) or a torch
state dict (`.pt`, s3tokenizer's `init_from_pt` layout). Architecture sizes are read from the weight
shapes; the head count follows from Whisper's fixed head width of 64 (v2/v3 hard-code 64-dim rotary
tables), so reduced random models load through the same path as the release.

torchaudio: s3tokenizer imports it at module level for its file loader only, which we do not use (audio
I/O is `tokenization.audio`); the import goes through `torchaudio_optional`, so a missing or broken
torchaudio does not stop it. Log-mels are s3tokenizer's own `log_mel_spectrogram` (torch.stft), computed
per utterance because its dynamic-range floor uses the utterance maximum.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tokenization.audio import resample
from tokenization.codecs.cosyvoice_decoder import CosyVoiceDecoder
from tokenization.codecs.glm4voice import (
    SemanticTokenCodec,
    load_decoder,
    parse_dtype,
    required_path,
    resolve_device,
)
from tokenization.codecs.whisper_vq import resampled_length, torchaudio_optional

with torchaudio_optional():
    import s3tokenizer
    from s3tokenizer.model import ModelConfig as ModelConfigV1
    from s3tokenizer.model_v2 import ModelConfig as ModelConfigV2
    from s3tokenizer.model_v3 import ModelConfigV3

SAMPLE_RATE = 16000
HOP_LENGTH = 160
HEAD_DIM = 64
# torch.stft's centre reflect-padding needs more than n_fft // 2 = 200 samples.
MIN_SAMPLES = 201
# s3tokenizer's long-audio handling: 30 s windows every 26 s, half of the 4 s overlap dropped per side.
_WINDOW_FRAMES = 3000
_STRIDE_FRAMES = 2600
_OVERLAP_SECONDS = 4


# Model class, config class and ONNX converter of each s3tokenizer model family.
_FAMILIES: dict[str, tuple[type[nn.Module], type, Callable[..., dict[str, torch.Tensor]]]] = {
    "v1": (s3tokenizer.S3Tokenizer, ModelConfigV1, s3tokenizer.onnx2torch),
    "v2": (s3tokenizer.S3TokenizerV2, ModelConfigV2, s3tokenizer.onnx2torch),
    "v3": (s3tokenizer.S3TokenizerV3, ModelConfigV3, s3tokenizer.onnx2torch_v3),
}


@dataclass(frozen=True)
class S3Variant:
    """What differs between S3 tokenizer releases."""

    name: str
    family: str
    token_rate: float
    codebook_size: int
    conv1_stride: int
    file_stem: str  # file name (without suffix) inside the released model directory

    @property
    def model_class(self) -> type[nn.Module]:
        return _FAMILIES[self.family][0]

    @property
    def config_class(self) -> type:
        return _FAMILIES[self.family][1]

    def onnx_to_state(self, path: Path) -> dict[str, torch.Tensor]:
        return _FAMILIES[self.family][2](str(path), None, False)


VARIANTS: dict[str, S3Variant] = {
    variant.name: variant
    for variant in (
        S3Variant("speech_tokenizer_v1", "v1", 50.0, 4096, 1, "speech_tokenizer_v1"),
        S3Variant("speech_tokenizer_v1_25hz", "v1", 25.0, 4096, 2, "speech_tokenizer_v1"),
        S3Variant("speech_tokenizer_v2_25hz", "v2", 25.0, 3**8, 2, "speech_tokenizer_v2"),
        S3Variant("speech_tokenizer_v3_25hz", "v3", 25.0, 3**8, 2, "speech_tokenizer_v3"),
    )
}


def variant_for(model_name: str) -> S3Variant:
    try:
        return VARIANTS[model_name]
    except KeyError:
        raise ValueError(f"unknown S3 tokenizer {model_name!r}; known: {sorted(VARIANTS)}") from None


def weight_file(path: str | Path, variant: S3Variant) -> Path:
    """The weight file: `path` itself (.onnx or .pt) or the variant's file inside a model directory."""
    path = Path(path)
    if path.is_file():
        if path.suffix not in (".onnx", ".pt"):
            raise ValueError(f"S3 tokenizer weights must be .onnx or .pt, got {path}")
        return path
    candidates = [f"{stem}{suffix}" for stem in (variant.file_stem, variant.name) for suffix in (".onnx", ".pt")]
    for name in dict.fromkeys(candidates):
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(
        f"no {variant.name} weights at {path}: expected an .onnx/.pt file or a directory holding one of "
        f"{', '.join(dict.fromkeys(candidates))}"
    )


def _read_state(file: Path, variant: S3Variant) -> dict[str, torch.Tensor]:
    if file.suffix == ".onnx":
        return variant.onnx_to_state(file)
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{file} does not hold a state dict")
    return state


def _model_config(state: Mapping[str, torch.Tensor], variant: S3Variant, use_sdpa: bool) -> Any:
    """Architecture sizes from the weight shapes (see module docstring for the head count)."""
    if "encoder.conv1.weight" not in state:
        raise ValueError(f"not an S3 tokenizer state dict (no encoder.conv1.weight); keys start {list(state)[:4]}")
    n_state, n_mels = state["encoder.conv1.weight"].shape[:2]
    blocks = {int(m.group(1)) for key in state if (m := re.match(r"encoder\.blocks\.(\d+)\.", key))}
    kwargs: dict[str, Any] = {
        "n_mels": int(n_mels),
        "n_audio_state": int(n_state),
        "n_audio_head": int(n_state) // HEAD_DIM,
        "n_audio_layer": len(blocks),
        "n_codebook_size": variant.codebook_size,
        "use_sdpa": use_sdpa,
    }
    if "encoder.positional_embedding" in state:
        kwargs["n_audio_ctx"] = int(state["encoder.positional_embedding"].shape[0])
    if "quantizer._codebook.embed" in state:
        kwargs["n_codebook_size"] = int(state["quantizer._codebook.embed"].shape[0])
    return variant.config_class(**kwargs)


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], allow_missing_norms: bool) -> None:
    """Strict load; the v3 ONNX export folds some LayerNorm parameters away, whose defaults (1, 0) hold."""
    result = model.load_state_dict(dict(state), strict=False)
    missing = [k for k in result.missing_keys if not (allow_missing_norms and re.search(r"_ln\.(weight|bias)$", k))]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"S3 tokenizer weights do not match the model: missing {missing[:8]}, "
            f"unexpected {result.unexpected_keys[:8]}"
        )


def _codes_per_window(frames: int, variant: S3Variant) -> int:
    after_conv1 = -(-frames // variant.conv1_stride)
    return -(-after_conv1 // 2)


def s3_num_codes(num_frames: int, variant: S3Variant) -> int:
    """Codes s3tokenizer returns for `num_frames` mel frames, including its >30 s window merging."""
    if num_frames <= _WINDOW_FRAMES:
        return _codes_per_window(num_frames, variant) if num_frames else 0
    # s3tokenizer decides 50 Hz overlap by comparing the model name with "speech_tokenizer_v1".
    rate = 50 if variant.name == "speech_tokenizer_v1" else 25
    drop = (_OVERLAP_SECONDS // 2) * rate
    starts = list(range(0, num_frames, _STRIDE_FRAMES))
    total = 0
    for index, start in enumerate(starts):
        n = _codes_per_window(min(start + _WINDOW_FRAMES, num_frames) - start, variant)
        left = 0 if index == 0 else drop
        right = n if index == len(starts) - 1 else -drop
        total += len(range(n)[left:right])
    return total


class S3Tokenizer:
    """Waveforms -> CosyVoice S3 codes, batched through s3tokenizer's padded `quantize`."""

    sample_rate = SAMPLE_RATE

    def __init__(self, model: nn.Module, variant: S3Variant, files: Sequence[Path] = (), batch_size: int = 64) -> None:
        self.model = model.eval()
        self.variant = variant
        self.files = list(files)
        self.batch_size = batch_size
        self.n_mels = int(model.config.n_mels)

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        model_name: str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 64,
        use_sdpa: bool = False,
    ) -> S3Tokenizer:
        """Load `model_name` weights from an .onnx/.pt file or a CosyVoice model directory."""
        variant = variant_for(model_name)
        file = weight_file(path, variant)
        state = _read_state(file, variant)
        model = variant.model_class(variant.name, config=_model_config(state, variant, use_sdpa))
        _load_strict(model, state, allow_missing_norms=variant.family == "v3" and file.suffix == ".onnx")
        return cls(model.to(device=device, dtype=dtype), variant, [file], batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def codebook_size(self) -> int:
        return int(self.model.config.n_codebook_size)

    @property
    def token_rate(self) -> float:
        return self.variant.token_rate

    def num_codes(self, num_samples: int, sample_rate: int = SAMPLE_RATE) -> int:
        """Exact number of codes `encode_batch` returns for audio of this length (after resampling)."""
        return s3_num_codes(resampled_length(num_samples, sample_rate, SAMPLE_RATE) // HOP_LENGTH, self.variant)

    def encode_batch(self, waveforms: Sequence[np.ndarray], sample_rates: Sequence[int]) -> list[np.ndarray]:
        """Mono waveforms at any rate -> int64 codes per utterance; empty input gives no codes."""
        mels: list[torch.Tensor] = []
        owners: list[int] = []
        for index, (wav, rate) in enumerate(zip(waveforms, sample_rates, strict=True)):
            wav = np.asarray(wav, dtype=np.float32)
            if wav.ndim != 1:
                raise ValueError(f"waveform {index} has shape {wav.shape}; expected mono (samples,)")
            audio = resample(wav, int(rate), SAMPLE_RATE)
            if len(audio) == 0:
                continue
            if len(audio) < MIN_SAMPLES:
                raise ValueError(
                    f"waveform {index} has {len(audio)} samples at 16 kHz; S3 needs at least "
                    f"{MIN_SAMPLES} (one STFT window)"
                )
            audio_t = torch.from_numpy(audio).to(self.device)
            mels.append(s3tokenizer.log_mel_spectrogram(audio_t, n_mels=self.n_mels))
            owners.append(index)
        codes = [np.zeros(0, dtype=np.int64) for _ in waveforms]
        # Batches of similar length waste little compute on padding; codes do not depend on the batch.
        order = sorted(range(len(mels)), key=lambda i: mels[i].shape[1])
        for first in range(0, len(order), self.batch_size):
            picked = order[first : first + self.batch_size]
            for i, row in zip(picked, self._quantize([mels[i] for i in picked]), strict=True):
                codes[owners[i]] = row
        return codes

    def _quantize(self, mels: list[torch.Tensor]) -> list[np.ndarray]:
        lengths = torch.tensor([mel.shape[1] for mel in mels], device=self.device)
        width = int(lengths.max())
        batch = torch.stack([F.pad(mel, (0, width - mel.shape[1])) for mel in mels])
        ids, id_lengths = self.model.quantize(batch.to(self.dtype), lengths)
        ids, id_lengths = ids.cpu().numpy(), id_lengths.cpu().numpy()
        return [row[:n].astype(np.int64) for row, n in zip(ids, id_lengths, strict=True)]


def make_random_s3_tokenizer(
    out_dir: str | Path,
    model_name: str = "speech_tokenizer_v1",
    n_state: int = 128,
    n_layer: int = 2,
    n_mels: int = 128,
    seed: int = 0,
) -> Path:
    """Write `<file_stem>.pt` (init_from_pt layout) with the real architecture at reduced size, random weights.

    The v1 codebook is a registered buffer that starts at zeros (all codes would tie); it gets unit-norm
    random codewords, matching the unit-normalised encoder outputs it is compared with.
    """
    variant = variant_for(model_name)
    config = variant.config_class(
        n_mels=n_mels,
        n_audio_state=n_state,
        n_audio_head=n_state // HEAD_DIM,
        n_audio_layer=n_layer,
        n_codebook_size=variant.codebook_size,
    )
    torch.manual_seed(seed)
    model = variant.model_class(variant.name, config=config)
    state = model.state_dict()
    if "quantizer._codebook.embed" in state:
        state["quantizer._codebook.embed"] = F.normalize(torch.randn_like(state["quantizer._codebook.embed"]), dim=-1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    file = out / f"{variant.file_stem}.pt"
    torch.save(state, file)
    return file


class S3Codec(SemanticTokenCodec):
    """CosyVoice S3 tokenizer + a CosyVoice decoder of the matching vocabulary."""

    NAME = "cosyvoice_s3"

    def __init__(
        self, tokenizer: S3Tokenizer, decoder: CosyVoiceDecoder | None = None, output_sample_rate: int = 22050
    ) -> None:
        super().__init__(self.NAME, tokenizer.variant.name, tokenizer, decoder, output_sample_rate)


def load_codec(cfg: Mapping[str, Any]) -> S3Codec:
    """Codec factory entry for `kind: s3` (see workflows/conf/codec/s3.yaml for the fields)."""
    kind = cfg.get("kind", "s3")
    if kind != "s3":
        raise ValueError(f"tokenization.codecs.s3.load_codec got kind {kind!r}")
    device = resolve_device(cfg.get("device", "cpu"))
    tokenizer = S3Tokenizer.from_path(
        required_path(cfg, "tokenizer_path"),
        model_name=str(cfg.get("model_name", "speech_tokenizer_v1")),
        device=device,
        dtype=parse_dtype(cfg.get("dtype", "float32")),
        batch_size=int(cfg.get("batch_size", 64)),
        use_sdpa=bool(cfg.get("use_sdpa", False)),
    )
    decoder = load_decoder(cfg.get("decoder_path"), device)
    return S3Codec(tokenizer, decoder, int(cfg.get("output_sample_rate", 22050)))
