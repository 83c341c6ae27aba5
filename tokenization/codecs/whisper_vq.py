"""GLM-4-Voice's speech tokenizer: a Whisper encoder cut at layer 16, average-pooled 4x and vector-quantised.

The released `glm-4-voice-tokenizer` directory is a full `WhisperVQForConditionalGeneration` checkpoint
(config.json with `model_type: whisper` plus the VQ fields, preprocessor_config.json for the Whisper
feature extractor, `model*.safetensors` with `model.encoder.*` / `model.decoder.*` weights). Tokens only
need the encoder up to the quantiser, so `WhisperVQEncoder` holds exactly those parameters, under the
checkpoint's own names, and the loader reads only them (the Whisper decoder, the layers after the
quantiser and the training-only EMA buffers stay on disk).

Encoding follows GLM-4-Voice's `extract_speech_token`: 16 kHz audio, cut into 30 s chunks; each chunk is
right-padded to a multiple of 1280 samples (one token), turned into Whisper log-mels with an attention
mask, run through causal convolutions, block-causal attention, pooling and a nearest-codeword lookup;
the codes of padded positions are dropped. A chunk of n samples gives ceil(n / 1280) codes (12.5 Hz).

One deliberate difference: the reference extracts features for a whole batch padded to its longest
member, so the last frame of a short utterance can see the zeros of another utterance's padding through
the STFT window; here each chunk's features are computed on its own and only the finished feature
frames are padded. Causal convolutions, masked attention and pooling windows that never straddle a
chunk's end then make every chunk's codes independent of what it is batched with (equal to encoding it
alone with the reference code).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import math
import sys
import types
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from tokenization.audio import resample


@contextlib.contextmanager
def torchaudio_optional() -> Iterator[None]:
    """Import code that does `import torchaudio` at module level even where torchaudio cannot load.

    Why: s3tokenizer (for `load_audio`) and transformers' audio utilities import torchaudio eagerly, but
    nothing we call uses it (audio I/O goes through `tokenization.audio`). PyPI has no torchaudio build
    for every torch (none for torch 2.13; the 2.11 wheel needs CUDA libraries), and a broken install
    raises OSError on import. When the real import fails, a placeholder module stands in for the
    duration of the `with` block only; any attribute read on it raises an AttributeError that says why.
    Where torchaudio works, this does nothing.
    """
    try:
        importlib.import_module("torchaudio")
    except (ImportError, OSError) as err:
        reason = f"{type(err).__name__}: {err}"
    else:
        yield
        return
    placeholder = types.ModuleType("torchaudio")
    placeholder.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)

    def _unavailable(name: str) -> None:
        raise AttributeError(f"torchaudio.{name}: torchaudio cannot be imported here ({reason})")

    placeholder.__getattr__ = _unavailable  # type: ignore[method-assign]
    had_entry, previous = "torchaudio" in sys.modules, sys.modules.get("torchaudio")
    sys.modules["torchaudio"] = placeholder
    try:
        yield
    finally:
        if had_entry:
            sys.modules["torchaudio"] = previous
        else:
            del sys.modules["torchaudio"]


with torchaudio_optional():
    from transformers import WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer

SAMPLE_RATE = 16000
CHUNK_SECONDS = 30
CONFIG_FILE = "config.json"
FEATURE_EXTRACTOR_FILE = "preprocessor_config.json"
WEIGHTS_GLOB = "model*.safetensors"
CHECKPOINT_PREFIX = "model.encoder."
# Encoder weights of the full checkpoint that tokenisation does not need (besides layers after the
# quantiser): the final layer norm, the post-quantiser position table and the EMA codebook statistics.
_UNUSED_ENCODER_KEYS = ("layer_norm.", "embed_positions2.", "ema_count", "ema_weight")


@strict
class WhisperVQConfig(WhisperConfig):
    """WhisperConfig plus GLM-4-Voice's pooling/quantiser fields (same names as the released config.json).

    `model_type` stays "whisper", so the released config.json loads with `from_pretrained`. The training
    fields (commitment, EMA, restarts) are kept only so configs round-trip unchanged.
    """

    pooling_kernel_size: int | None = None
    pooling_type: str = "max"
    pooling_position: int = 0
    quantize_vocab_size: int | None = None
    quantize_position: int = 16
    quantize_commit_coefficient: float = 0.25
    quantize_loss_scale: float = 1.0
    quantize_ema_decay: float | None = None
    quantize_restart_interval: int | None = None
    quantize_encoder_only: bool = False
    quantize_causal_encoder: bool = False
    quantize_causal_block_size: int | None = None
    skip_language_detection: bool = False
    encoder_causal_attention: bool = False
    encoder_causal_convolution: bool = False


def _check_tokenizer_config(config: WhisperVQConfig) -> None:
    """Reject configs this encoder cannot tokenise with, before any weight is read."""
    if config.quantize_vocab_size is None:
        raise ValueError("config.json has no quantize_vocab_size: not a WhisperVQ (GLM-4-Voice) tokenizer")
    if not 1 <= config.quantize_position <= config.encoder_layers:
        raise ValueError(f"quantize_position {config.quantize_position} outside 1..{config.encoder_layers}")
    if config.pooling_kernel_size is not None:
        if config.pooling_type not in ("avg", "max"):
            raise ValueError(f"pooling_type {config.pooling_type!r} is not 'avg' or 'max'")
        if not 1 <= config.pooling_position <= config.quantize_position:
            raise ValueError(
                f"pooling_position {config.pooling_position} must lie in 1..quantize_position "
                f"({config.quantize_position}) for pooled tokens"
            )


class CausalConv1d(nn.Conv1d):
    """Conv1d padded on the left only, so an output frame never sees later input frames."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        self.left_padding = kernel_size - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left_padding, 0)))


def _attention_bias(valid: torch.Tensor, block_size: int | None, causal: bool, dtype: torch.dtype) -> torch.Tensor:
    """Additive [B, 1, T, T] mask: padded keys are hidden; causal or block-causal structure on top.

    Block-causal (GLM-4-Voice): a position sees everything before it and its whole own block.
    """
    length = valid.shape[1]
    pos = torch.arange(length, device=valid.device)
    allowed = valid[:, None, None, :].expand(-1, 1, length, -1)
    if causal:
        allowed = allowed & (pos[None, :] <= pos[:, None])
    elif block_size is not None:
        same_block = (pos[:, None] // block_size) == (pos[None, :] // block_size)
        allowed = allowed & ((pos[None, :] <= pos[:, None]) | same_block)
    zero = torch.zeros((), dtype=dtype, device=valid.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's sinusoidal position table (the released encoder's `embed_positions` holds these)."""
    log_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_increment * torch.arange(channels // 2))
    scaled = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)


class WhisperVQEncoder(nn.Module):
    """Whisper encoder layers up to `quantize_position`, pooling and the codebook; outputs code ids.

    Parameter names are those of GLM-4-Voice's encoder built with `quantize_encoder_only=True`
    (conv1, conv2, embed_positions, layers.N.*, codebook), so the released weights load strictly.
    """

    def __init__(self, config: WhisperVQConfig) -> None:
        super().__init__()
        _check_tokenizer_config(config)
        config._attn_implementation = "sdpa"
        self.config = config
        d_model = config.d_model
        if config.encoder_causal_convolution:
            self.conv1: nn.Conv1d = CausalConv1d(config.num_mel_bins, d_model, kernel_size=3)
            self.conv2: nn.Conv1d = CausalConv1d(d_model, d_model, kernel_size=3, stride=2)
        else:
            self.conv1 = nn.Conv1d(config.num_mel_bins, d_model, kernel_size=3, padding=1)
            self.conv2 = nn.Conv1d(d_model, d_model, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(config.max_source_positions, d_model)
        self.layers = nn.ModuleList(WhisperEncoderLayer(config) for _ in range(config.quantize_position))
        self.codebook = nn.Embedding(config.quantize_vocab_size, d_model)

    @property
    def frames_per_token(self) -> int:
        """Mel frames per output code (conv strides x pooling kernel)."""
        return self.conv1.stride[0] * self.conv2.stride[0] * (self.config.pooling_kernel_size or 1)

    def _causal_layer(self) -> bool:
        return self.config.encoder_causal_attention or self.config.quantize_causal_encoder

    @torch.inference_mode()
    def forward(self, input_features: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, n_mels, F] log-mels and [B, F] frame mask -> ([B, T] code ids, [B, T] bool valid mask)."""
        cfg = self.config
        conv_stride = self.conv1.stride[0] * self.conv2.stride[0]
        valid = attention_mask[:, ::conv_stride].bool()
        hidden = F.gelu(self.conv1(input_features))
        hidden = F.gelu(self.conv2(hidden)).permute(0, 2, 1)
        hidden = hidden + self.embed_positions.weight[: hidden.shape[1]]
        block = cfg.quantize_causal_block_size
        bias = _attention_bias(valid, block, self._causal_layer(), hidden.dtype)
        for index, layer in enumerate(self.layers, start=1):
            hidden = layer(hidden, bias)
            if cfg.pooling_kernel_size is not None and index == cfg.pooling_position:
                hidden = self._pool(hidden)
                valid = valid[:, :: cfg.pooling_kernel_size]
                if block is not None:
                    block = block // cfg.pooling_kernel_size
                bias = _attention_bias(valid, block, self._causal_layer(), hidden.dtype)
        return self._nearest_codes(hidden), valid

    def _pool(self, hidden: torch.Tensor) -> torch.Tensor:
        kernel = self.config.pooling_kernel_size
        x = hidden.permute(0, 2, 1)
        if x.shape[-1] % kernel:
            x = F.pad(x, (0, kernel - x.shape[-1] % kernel))
        pool = F.avg_pool1d if self.config.pooling_type == "avg" else F.max_pool1d
        return pool(x, kernel).permute(0, 2, 1)

    def _nearest_codes(self, hidden: torch.Tensor, rows_per_step: int = 8192) -> torch.Tensor:
        """Index of the nearest codeword (squared L2) per frame, in float32 and in row blocks.

        Row blocks bound the [rows, codebook] distance matrix (16,384 columns) in memory.
        """
        codebook = self.codebook.weight.float()
        codebook_sq = codebook.square().sum(dim=1)
        flat = hidden.reshape(-1, hidden.shape[-1]).float()
        ids = []
        for rows in flat.split(rows_per_step):
            distances = torch.addmm(
                codebook_sq + rows.square().sum(dim=1, keepdim=True), rows, codebook.t(), beta=1.0, alpha=-2.0
            )
            ids.append(distances.argmin(dim=1))
        return torch.cat(ids).reshape(hidden.shape[:2])


def _expected_layout(path: Path) -> str:
    return (
        f"{path} must be a glm-4-voice-tokenizer directory holding {CONFIG_FILE}, "
        f"{FEATURE_EXTRACTOR_FILE} and {WEIGHTS_GLOB} (model.safetensors or shards)"
    )


def weight_files(path: str | Path) -> list[Path]:
    """The files whose bytes define the tokenizer (config, feature extractor, weights), sorted.

    Raises FileNotFoundError naming the expected layout when any is missing.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(_expected_layout(path) + ": no such directory")
    weights = sorted(path.glob(WEIGHTS_GLOB))
    missing = [name for name in (CONFIG_FILE, FEATURE_EXTRACTOR_FILE) if not (path / name).is_file()]
    if not weights:
        missing.append(WEIGHTS_GLOB)
    if missing:
        raise FileNotFoundError(_expected_layout(path) + f"; missing: {', '.join(missing)}")
    return [path / CONFIG_FILE, path / FEATURE_EXTRACTOR_FILE, *weights]


def _read_encoder_state(files: Sequence[Path], model: WhisperVQEncoder) -> dict[str, torch.Tensor]:
    """Read exactly the encoder tensors `model` needs; fail on missing ones or unknown encoder keys."""
    wanted = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    kept_layers = model.config.quantize_position
    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                if not key.startswith(CHECKPOINT_PREFIX):
                    continue
                name = key[len(CHECKPOINT_PREFIX) :]
                if name in wanted:
                    state[name] = handle.get_tensor(key)
                elif name.startswith(_UNUSED_ENCODER_KEYS) or (
                    name.startswith("layers.") and int(name.split(".")[1]) >= kept_layers
                ):
                    continue
                else:
                    unexpected.append(key)
    missing = sorted(set(wanted) - set(state))
    misshaped = [f"{name} {tuple(t.shape)} != {wanted[name]}" for name, t in state.items() if t.shape != wanted[name]]
    if missing or unexpected or misshaped:
        raise ValueError(
            f"WhisperVQ checkpoint does not match its config.json: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}, wrong shape {misshaped[:8]} (files: {[f.name for f in files]})"
        )
    return state


def resampled_length(num_samples: int, sr_in: int, sr_out: int) -> int:
    """Length of `tokenization.audio.resample` output (scipy's polyphase filter gives ceil(n * up / down))."""
    ratio = Fraction(sr_out, sr_in).limit_denominator(1000)
    return -(-num_samples * ratio.numerator // ratio.denominator)


class WhisperVQTokenizer:
    """Waveforms -> GLM-4-Voice speech codes with true batching (chunks of many utterances per forward)."""

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        model: WhisperVQEncoder,
        feature_extractor: WhisperFeatureExtractor,
        files: Sequence[Path] = (),
        batch_size: int = 64,
    ) -> None:
        if feature_extractor.feature_size != model.config.num_mel_bins:
            raise ValueError(
                f"feature extractor gives {feature_extractor.feature_size} mel bins, the encoder "
                f"expects {model.config.num_mel_bins}"
            )
        if feature_extractor.sampling_rate != SAMPLE_RATE:
            raise ValueError(f"feature extractor runs at {feature_extractor.sampling_rate} Hz, expected {SAMPLE_RATE}")
        self.model = model.eval()
        self.feature_extractor = feature_extractor
        self.files = list(files)
        self.batch_size = batch_size

    @classmethod
    def from_dir(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 64,
    ) -> WhisperVQTokenizer:
        """Load a glm-4-voice-tokenizer directory (config.json, preprocessor_config.json, model*.safetensors)."""
        files = weight_files(path)
        config = WhisperVQConfig.from_pretrained(str(path))
        model = WhisperVQEncoder(config)
        model.load_state_dict(_read_encoder_state(files[2:], model), strict=True)
        feature_extractor = WhisperFeatureExtractor.from_pretrained(str(path))
        return cls(model.to(device=device, dtype=dtype), feature_extractor, files, batch_size)

    @property
    def device(self) -> torch.device:
        return self.model.codebook.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.codebook.weight.dtype

    @property
    def codebook_size(self) -> int:
        return int(self.model.config.quantize_vocab_size)

    @property
    def samples_per_token(self) -> int:
        """Input samples per code: 1280 for GLM-4-Voice (160-sample hop x 2 conv stride x 4 pooling)."""
        return self.feature_extractor.hop_length * self.model.frames_per_token

    @property
    def token_rate(self) -> float:
        return SAMPLE_RATE / self.samples_per_token

    def num_codes(self, num_samples: int, sample_rate: int = SAMPLE_RATE) -> int:
        """Exact number of codes `encode_batch` returns for audio of this length (after resampling)."""
        n = resampled_length(num_samples, sample_rate, SAMPLE_RATE)
        chunk = CHUNK_SECONDS * SAMPLE_RATE
        return sum(math.ceil(min(chunk, n - start) / self.samples_per_token) for start in range(0, n, chunk))

    def encode_batch(self, waveforms: Sequence[np.ndarray], sample_rates: Sequence[int]) -> list[np.ndarray]:
        """Mono waveforms at any rate -> int64 codes per utterance (12.5 Hz), batched over 30 s chunks."""
        chunks: list[np.ndarray] = []
        owners: list[int] = []
        for index, (wav, rate) in enumerate(zip(waveforms, sample_rates, strict=True)):
            wav = np.asarray(wav, dtype=np.float32)
            if wav.ndim != 1:
                raise ValueError(f"waveform {index} has shape {wav.shape}; expected mono (samples,)")
            audio = resample(wav, int(rate), SAMPLE_RATE)
            step = CHUNK_SECONDS * SAMPLE_RATE
            for start in range(0, len(audio), step):
                chunks.append(audio[start : start + step])
                owners.append(index)
        # Batches of similar length waste little compute on padding; codes do not depend on the batch.
        order = sorted(range(len(chunks)), key=lambda i: len(chunks[i]))
        chunk_codes: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(chunks)
        for first in range(0, len(order), self.batch_size):
            picked = order[first : first + self.batch_size]
            for i, ids in zip(picked, self._encode_chunks([chunks[i] for i in picked]), strict=True):
                chunk_codes[i] = ids
        codes: list[list[np.ndarray]] = [[] for _ in waveforms]
        for owner, ids in zip(owners, chunk_codes, strict=True):
            codes[owner].append(ids)
        return [np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64) for parts in codes]

    def _chunk_features(self, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Log-mels [n_mels, F] and frame mask [F] of one chunk, padded to a whole number of codes."""
        out = self.feature_extractor(
            chunk,
            sampling_rate=SAMPLE_RATE,
            return_attention_mask=True,
            return_tensors="np",
            padding="longest",
            pad_to_multiple_of=self.samples_per_token,
            device=str(self.device),
        )
        return out["input_features"][0], out["attention_mask"][0]

    def _encode_chunks(self, chunks: Sequence[np.ndarray]) -> list[np.ndarray]:
        features = [self._chunk_features(chunk) for chunk in chunks]
        frames = max(feat.shape[1] for feat, _ in features)
        n_mels = features[0][0].shape[0]
        batch = np.zeros((len(features), n_mels, frames), dtype=np.float32)
        mask = np.zeros((len(features), frames), dtype=np.int64)
        for row, (feat, frame_mask) in enumerate(features):
            batch[row, :, : feat.shape[1]] = feat
            mask[row, : frame_mask.shape[0]] = frame_mask
        ids, valid = self.model(
            torch.from_numpy(batch).to(device=self.device, dtype=self.dtype),
            torch.from_numpy(mask).to(self.device),
        )
        ids, valid = ids.cpu().numpy(), valid.cpu().numpy()
        return [row_ids[row_valid].astype(np.int64) for row_ids, row_valid in zip(ids, valid, strict=True)]


def make_random_whisper_vq(
    out_dir: str | Path,
    d_model: int = 64,
    layers: int = 2,
    heads: int = 2,
    ffn_dim: int = 128,
    codebook: int = 16384,
    num_mel_bins: int = 128,
    extra_layers: int = 1,
    seed: int = 0,
) -> Path:
    """Write a glm-4-voice-tokenizer directory with the real architecture, reduced size and random weights.

    Same layout as the release: config.json (model_type whisper + VQ fields of the released config:
    causal convolutions, avg pooling by 4 after the last kept layer, block-causal attention over 200
    frames), preprocessor_config.json, and model.safetensors keyed `model.encoder.*`, including the
    tensors the loader must skip (layers after the quantiser, final layer norm, second position table).
    For tests and benchmarks; `d_model=1280, layers=16, heads=20, ffn_dim=5120` gives production size.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = WhisperVQConfig(
        architectures=["WhisperVQForConditionalGeneration"],
        d_model=d_model,
        encoder_layers=layers + extra_layers,
        encoder_attention_heads=heads,
        encoder_ffn_dim=ffn_dim,
        decoder_layers=1,
        decoder_attention_heads=heads,
        decoder_ffn_dim=ffn_dim,
        num_mel_bins=num_mel_bins,
        max_source_positions=1500,
        pooling_kernel_size=4,
        pooling_type="avg",
        pooling_position=layers,
        quantize_vocab_size=codebook,
        quantize_position=layers,
        quantize_causal_block_size=200,
        quantize_ema_decay=0.99,
        encoder_causal_convolution=True,
        skip_language_detection=True,
    )
    torch.manual_seed(seed)
    model = WhisperVQEncoder(config)
    with torch.no_grad():
        model.embed_positions.weight.copy_(sinusoids(*model.embed_positions.weight.shape))
        # Codewords as draws of the encoder's own output distribution scale, so codes vary over time.
        model.codebook.weight.normal_(0.0, 1.0)
    state = {CHECKPOINT_PREFIX + name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    last = f"{CHECKPOINT_PREFIX}layers.{layers - 1}."
    for extra in range(layers, layers + extra_layers):
        for name, tensor in list(state.items()):
            if name.startswith(last):
                state[name.replace(last, f"{CHECKPOINT_PREFIX}layers.{extra}.")] = torch.randn_like(tensor)
    state[CHECKPOINT_PREFIX + "layer_norm.weight"] = torch.ones(d_model)
    state[CHECKPOINT_PREFIX + "layer_norm.bias"] = torch.zeros(d_model)
    state[CHECKPOINT_PREFIX + "embed_positions2.weight"] = sinusoids(375, d_model)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(out))
    WhisperFeatureExtractor(feature_size=num_mel_bins).save_pretrained(str(out))
    return out
