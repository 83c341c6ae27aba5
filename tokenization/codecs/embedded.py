"""The embedded audio codec: fitted here, offline, in under two CPU minutes for half an hour of speech.

Why it exists: the embedded default must run end to end with no model downloads, so it cannot use the
paper's GLM-4-Voice tokenizer. This codec is fitted on the run's own (synthetic) speech instead.

How it works (all steps deterministic given the audio, the config and the seed):

- Analysis. Audio is resampled to `sample_rate` (16 kHz) and its level normalised (the 90th percentile of
  codec-frame RMS is set to `level`, so the codes do not spend bits on loudness). A Hann STFT
  (`n_fft`, `hop_length`) gives frames at 100 Hz; `frames_per_token` consecutive log-mel frames are
  stacked into one vector per codec frame (50 Hz with the default 2) and projected onto their top
  `pca_dim` principal components (no whitening: Euclidean distance there is distance between log-mel
  spectra).
- Quantisation. k-means, optionally residual: stage 0 quantises the vector, stage 1 the remaining error,
  etc. (the default is one stage of 4,096 codes: bench/codec.py found two residual stages at 25 Hz
  no more intelligible at the same 50 codes/s, and one code per frame is simpler for the LM). A codec
  frame is `len(codebook_sizes)` codes, written as ONE 1-D sequence stage by stage inside each frame
  ([c0_t, c1_t, c0_t+1, ...]); stage s uses ids offset by the sizes of the stages before it, so every id
  says which stage it belongs to. token_rate = codec frame rate * stages; codebook_size =
  sum(codebook_sizes).
- Decoding. Each stage owns a table of log-magnitude spectra (`frames_per_token` STFT frames per entry);
  a frame's log-magnitudes are the sum of its codes' entries plus the mean, fitted jointly by least
  squares (backfitting) on the fit audio. This keeps harmonic detail that log-mel centroids lose.
  Phase comes from block-wise fast Griffin-Lim (see `_BlockGriffinLim`), which is what makes streaming
  exact: `decode` and `stream_decoder` run the very same blocks.

Measured on this project's voices: see bench/codec.py (Whisper WER before/after the round trip).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from tqdm import tqdm

from tokenization.audio import resample
from tokenization.codecs.base import AudioCodec, CodecIdentity, StreamingDecoder, hash_arrays
from ttt_common.config_tools import reject_unknown_keys

NAME = "ttt-embedded"
VERSION = "1"  # bump when analysis, quantisation or decoding changes meaning
PARAMS_FILE = "embedded_codec.safetensors"
META_FILE = "embedded_codec.json"
# Keys of the `codec` config group that are not hyper-parameters (the factory's and the fit location's).
_NON_PARAM_KEYS = frozenset({"kind", "path"})
_LOG_FLOOR = 1e-5  # magnitude floor before log: keeps digital silence finite, far below any speech frame
_MEL_FLOOR = 1e-8
_GL_MOMENTUM = 0.99  # fast Griffin-Lim (Perraudin et al. 2013)
_KMEANS_CHUNK = 8192  # rows per distance block, bounds memory at chunk * K floats


@dataclass(frozen=True)
class EmbeddedCodecConfig:
    """Hyper-parameters; stored in the artifact, so a loaded codec always decodes as it was fitted."""

    sample_rate: int = 16000
    n_fft: int = 640
    hop_length: int = 160
    n_mels: int = 80
    frames_per_token: int = 2
    pca_dim: int = 48
    codebook_sizes: tuple[int, ...] = (4096,)
    kmeans_iterations: int = 20
    level: float = 0.1
    griffin_lim_iterations: int = 32
    block_frames: int = 32
    lookahead_frames: int = 8

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> EmbeddedCodecConfig:
        """Parse a `codec` config group; unknown keys are errors (a typo must not silently fall back)."""
        known = {f.name for f in fields(cls)}
        reject_unknown_keys(cfg, known, "codec", what="embedded codec settings", ignore=_NON_PARAM_KEYS)
        values = {k: cfg[k] for k in known if k in cfg}
        if "codebook_sizes" in values:
            values["codebook_sizes"] = tuple(int(k) for k in values["codebook_sizes"])
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if not self.codebook_sizes or min(self.codebook_sizes) < 2:
            raise ValueError(f"codebook_sizes needs at least one stage of >= 2 codes, got {self.codebook_sizes}")
        if self.n_fft < 2 * self.hop_length:
            raise ValueError("n_fft must be at least 2 * hop_length (Griffin-Lim needs overlapping frames)")
        if not 1 <= self.pca_dim <= self.n_mels * self.frames_per_token:
            raise ValueError(f"pca_dim must be in [1, n_mels * frames_per_token], got {self.pca_dim}")
        if min(self.frames_per_token, self.block_frames, self.griffin_lim_iterations, self.kmeans_iterations) < 1:
            raise ValueError("frames_per_token, block_frames and the iteration counts must be >= 1")
        if self.lookahead_frames < 0 or self.level <= 0:
            raise ValueError("lookahead_frames must be >= 0 and level > 0")

    @property
    def samples_per_token(self) -> int:
        """Samples per codec frame (all stages of one frame cover the same samples)."""
        return self.hop_length * self.frames_per_token

    @property
    def num_stages(self) -> int:
        return len(self.codebook_sizes)

    @property
    def token_rate(self) -> float:
        return self.sample_rate / self.samples_per_token * self.num_stages

    @property
    def num_bins(self) -> int:
        return self.n_fft // 2 + 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["codebook_sizes"] = list(self.codebook_sizes)
        return d


# ---------------------------------------------------------------------------------------------- analysis


def _check_waveform(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """Reject input the codec cannot encode meaningfully, with a message that says what was wrong."""
    wav = np.asarray(waveform)
    if wav.ndim != 1:
        raise ValueError(f"expected a mono 1-D waveform, got shape {wav.shape}")
    if wav.size == 0:
        raise ValueError("cannot encode an empty waveform")
    if not np.issubdtype(wav.dtype, np.floating) and not np.issubdtype(wav.dtype, np.integer):
        raise ValueError(f"waveform must be numeric, got dtype {wav.dtype}")
    if not np.all(np.isfinite(wav)):
        raise ValueError("waveform contains NaN or infinite samples")
    if int(sample_rate) <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    return wav.astype(np.float32)


def _normalise_level(wav: np.ndarray, cfg: EmbeddedCodecConfig) -> np.ndarray:
    """Scale so the loud part of the utterance has RMS `cfg.level`; near-silent input is left alone.

    The 90th percentile of per-codec-frame RMS ignores pauses (which would make quiet speakers loud)
    and single clicks (which peak normalisation would chase).
    """
    spt = cfg.samples_per_token
    padded = np.pad(wav, (0, (-len(wav)) % spt))
    rms = np.sqrt(np.mean(padded.reshape(-1, spt).astype(np.float64) ** 2, axis=1))
    ref = float(np.percentile(rms, 90))
    return wav if ref < 1e-4 else (wav * (cfg.level / ref)).astype(np.float32)


def _prepare(waveform: np.ndarray, sample_rate: int, cfg: EmbeddedCodecConfig) -> np.ndarray:
    wav = _check_waveform(waveform, sample_rate)
    return _normalise_level(resample(wav, int(sample_rate), cfg.sample_rate), cfg)


def _window(cfg: EmbeddedCodecConfig) -> torch.Tensor:
    return torch.hann_window(cfg.n_fft, periodic=True, dtype=torch.float32)


def _spectrogram(wav: np.ndarray, cfg: EmbeddedCodecConfig) -> torch.Tensor:
    """Complex STFT, (frames, bins), exactly `frames_per_token` frames per codec frame.

    The signal is zero-padded to whole codec frames; frame f is centred on sample f * hop_length.
    """
    spt = cfg.samples_per_token
    n_tokens = max(1, math.ceil(len(wav) / spt))
    x = torch.from_numpy(np.pad(wav, (0, n_tokens * spt - len(wav))))
    spec = torch.stft(x, cfg.n_fft, cfg.hop_length, window=_window(cfg), center=True, return_complex=True)
    return spec[:, : n_tokens * cfg.frames_per_token].T


def mel_filterbank(cfg: EmbeddedCodecConfig) -> np.ndarray:
    """HTK-style triangular mel filters, (n_mels, bins).

    Hand-written (ten lines) to keep librosa/torchaudio and their native dependencies out of the
    embedded default.
    """

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    edges = mel_to_hz(np.linspace(0.0, hz_to_mel(np.array(cfg.sample_rate / 2.0)), cfg.n_mels + 2))
    freqs = np.fft.rfftfreq(cfg.n_fft, 1.0 / cfg.sample_rate)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None, :] - lower) / (centre - lower)
    falling = (upper - freqs[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def _token_features(spec: torch.Tensor, fbank: torch.Tensor, cfg: EmbeddedCodecConfig) -> torch.Tensor:
    """Stacked log-mel frames, (codec frames, frames_per_token * n_mels)."""
    logmel = torch.log(spec.abs().pow(2) @ fbank.T + _MEL_FLOOR)
    return logmel.reshape(-1, cfg.frames_per_token * cfg.n_mels)


def _token_logmag(spec: torch.Tensor, cfg: EmbeddedCodecConfig) -> torch.Tensor:
    """Stacked log-magnitude frames, (codec frames, frames_per_token * bins): what the tables predict."""
    return torch.log(spec.abs() + _LOG_FLOOR).reshape(-1, cfg.frames_per_token * cfg.num_bins)


# ------------------------------------------------------------------------------------------ quantisation


def _nearest(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid (squared Euclidean) for every row of x."""
    norms = (centroids * centroids).sum(1)
    return torch.cat(
        [(norms - 2.0 * x[i : i + _KMEANS_CHUNK] @ centroids.T).argmin(1) for i in range(0, len(x), _KMEANS_CHUNK)]
    )


def _kmeans(x: torch.Tensor, k: int, iterations: int, generator: torch.Generator, desc: str) -> torch.Tensor:
    """Lloyd's k-means from k distinct random points; empty clusters are re-seeded at the worst-fit points.

    Hand-written rather than scikit-learn: that would be a large extra dependency for ~20 lines, and this
    runs in float32 on torch's BLAS like the rest of the codec.
    """
    centroids = x[torch.randperm(len(x), generator=generator)[:k]].clone()
    for _ in tqdm(range(iterations), desc=desc, leave=False):
        assign = _nearest(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp(min=1)[:, None].to(x.dtype))
        if bool(empty.any()):
            error = ((x - centroids[assign]) ** 2).sum(1)
            centroids[empty] = x[error.topk(int(empty.sum())).indices]
    return centroids


def _quantise(z: torch.Tensor, codebooks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Residual quantisation: per stage, the nearest entry to what the previous stages left."""
    codes = []
    residual = z
    for book in codebooks:
        idx = _nearest(residual, book)
        residual = residual - book[idx]
        codes.append(idx)
    return codes


def _pca(centred: torch.Tensor, dim: int) -> torch.Tensor:
    """Top-`dim` principal directions, (features, dim), with a fixed sign convention (largest entry > 0)
    so the projection does not flip between LAPACK builds."""
    cov = (centred.double().T @ centred.double()) / max(1, len(centred) - 1)
    _, vectors = torch.linalg.eigh(cov)
    top = vectors[:, -dim:].flip(1)
    signs = torch.sign(top.gather(0, top.abs().argmax(0, keepdim=True)))
    return (top * signs).float()


def _fit_tables(
    logmag: torch.Tensor, codes: Sequence[torch.Tensor], sizes: Sequence[int]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Additive per-code log-magnitude tables: logmag ~ mean + sum_s table_s[code_s], least squares.

    Solved by backfitting (each stage's table is the mean of what the other stages leave); on speech a
    fourth sweep lowers the training error by only ~0.1%, so three are run.
    """
    mean = logmag.mean(0)
    target = logmag - mean
    tables = [torch.zeros(k, logmag.shape[1]) for k in sizes]
    for _ in range(1 if len(sizes) == 1 else 3):
        for s, (k, idx) in enumerate(zip(sizes, codes, strict=True)):
            others = sum((tables[j][codes[j]] for j in range(len(sizes)) if j != s), torch.zeros(()))
            sums = torch.zeros(k, logmag.shape[1]).index_add_(0, idx, target - others)
            tables[s] = sums / torch.bincount(idx, minlength=k).clamp(min=1)[:, None].float()
    return mean, tables


def fit_embedded_codec(
    waveforms: Sequence[tuple[np.ndarray, int]],
    config: Mapping[str, Any],
    out_dir: str | Path,
    seed: int = 0,
) -> Path:
    """Fit the codec on (waveform, sample rate) pairs and write it to `out_dir`; returns `out_dir`.

    `config` is the `codec` config group (`kind`/`path` are ignored). Deterministic: the same audio, config
    and seed give the same parameters (and `params_hash`) on the same machine and torch build.
    """
    cfg = EmbeddedCodecConfig.from_mapping(config)
    if not waveforms:
        raise ValueError("no audio to fit the embedded codec on")
    fbank = torch.from_numpy(mel_filterbank(cfg))
    features, logmags = [], []
    for wav, sr in tqdm(waveforms, desc="codec fit: features", leave=False):
        spec = _spectrogram(_prepare(wav, sr, cfg), cfg)
        features.append(_token_features(spec, fbank, cfg))
        logmags.append(_token_logmag(spec, cfg))
    feats = torch.cat(features)
    if len(feats) < max(cfg.codebook_sizes):
        raise ValueError(
            f"{len(feats)} codec frames ({len(feats) * cfg.samples_per_token / cfg.sample_rate:.1f} s) are too "
            f"few to fit codebooks of {max(cfg.codebook_sizes)} entries; give more audio or smaller codebook_sizes"
        )
    feature_mean = feats.double().mean(0).float()
    projection = _pca(feats - feature_mean, cfg.pca_dim)
    z = (feats - feature_mean) @ projection
    generator = torch.Generator().manual_seed(int(seed))
    codebooks: list[torch.Tensor] = []
    residual = z
    for s, k in enumerate(cfg.codebook_sizes):
        book = _kmeans(residual, k, cfg.kmeans_iterations, generator, desc=f"codec fit: k-means stage {s}")
        residual = residual - book[_nearest(residual, book)]
        codebooks.append(book)
    logmag_mean, tables = _fit_tables(torch.cat(logmags), _quantise(z, codebooks), cfg.codebook_sizes)
    params: dict[str, np.ndarray] = {
        "feature_mean": feature_mean.numpy(),
        "projection": projection.numpy(),
        "logmag_mean": logmag_mean.numpy(),
    }
    for s, (book, table) in enumerate(zip(codebooks, tables, strict=True)):
        params[f"codebook_{s}"] = book.numpy()
        # float16 halves the artifact; its 1e-3 relative error is far below the quantisation error.
        params[f"table_{s}"] = table.numpy().astype(np.float16)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in params.items()}, str(out / PARAMS_FILE))
    meta = {
        "name": NAME,
        "version": VERSION,
        "config": cfg.to_dict(),
        "params_hash": _params_hash(cfg, params),
        "fit": {"seed": int(seed), "utterances": len(waveforms), "codec_frames": len(feats)},
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def _params_hash(cfg: EmbeddedCodecConfig, params: Mapping[str, np.ndarray]) -> str:
    """Hash of the config and every array (in name order): an equal hash means equal codes and equal audio."""
    config_bytes = json.dumps(cfg.to_dict(), sort_keys=True).encode()
    return hash_arrays([config_bytes, *(params[k] for k in sorted(params))])


# ------------------------------------------------------------------------------------------- synthesis


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """Run torch ops on one intra-op thread, restoring the previous setting after.

    Griffin-Lim works on tensors of ~50 frames: more threads only add synchronisation, which made decoding
    ten times slower on a loaded 2-core machine. torch's thread count is process-wide, hence the restore.
    """
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _BlockGriffinLim:
    """Griffin-Lim phase reconstruction in fixed blocks of STFT frames, committed left to right.

    Whole-utterance Griffin-Lim cannot stream: every frame's phase depends on all others. Here block b
    (frames [s, e), `block_frames` long) is solved once, with fast Griffin-Lim over the window
    [s - past, e + lookahead): the `past` frames before it are already committed and stay fixed (so the
    block continues their phase), the `lookahead` frames after it are solved along but discarded (they
    are solved again, with more context, as part of the next block). A block is solved only when its
    lookahead frames exist or the input has ended, and its random initial phase is seeded by its first
    frame index, so the result does not depend on how the frames arrived: `decode` and the streaming
    decoder give the same audio.
    """

    def __init__(self, cfg: EmbeddedCodecConfig) -> None:
        self._cfg = cfg
        self._window = _window(cfg)
        self._past = math.ceil(cfg.n_fft / cfg.hop_length)
        self._magnitudes = torch.zeros(0, cfg.num_bins)
        self.committed = torch.zeros(0, cfg.num_bins, dtype=torch.complex64)

    def append(self, magnitudes: torch.Tensor) -> None:
        self._magnitudes = torch.cat([self._magnitudes, magnitudes])

    def run(self, final: bool) -> None:
        """Solve every block that is ready (all remaining ones when `final`)."""
        cfg = self._cfg
        total = len(self._magnitudes)
        with _single_threaded():
            while (start := len(self.committed)) < total:
                end = min(start + cfg.block_frames, total)
                if not final and (end - start < cfg.block_frames or total < end + cfg.lookahead_frames):
                    return
                block = self._solve(max(0, start - self._past), start, end, min(total, end + cfg.lookahead_frames))
                self.committed = torch.cat([self.committed, block])

    def _solve(self, first: int, start: int, end: int, stop: int) -> torch.Tensor:
        cfg = self._cfg
        fixed = self.committed[first:start]
        magnitude = self._magnitudes[start:stop]
        generator = torch.Generator().manual_seed(start)
        phase = torch.rand(magnitude.shape, generator=generator) * (2 * math.pi)
        estimate = torch.polar(magnitude, phase)
        previous = torch.zeros_like(estimate)
        length = (stop - first) * cfg.hop_length
        for _ in range(cfg.griffin_lim_iterations):
            frames = torch.cat([fixed, estimate]).T
            signal = torch.istft(frames, cfg.n_fft, cfg.hop_length, window=self._window, center=True, length=length)
            rebuilt = torch.stft(
                signal, cfg.n_fft, cfg.hop_length, window=self._window, center=True, return_complex=True
            )
            projected = rebuilt[:, start - first : stop - first].T
            accelerated = projected + _GL_MOMENTUM * (projected - previous)
            previous = projected
            estimate = torch.polar(magnitude, torch.angle(accelerated))
        return estimate[: end - start]


def _overlap_add(frames: torch.Tensor, cfg: EmbeddedCodecConfig) -> np.ndarray:
    """Inverse STFT of (frames, bins); sample n belongs to the frames centred within n_fft/2 of it."""
    audio = torch.istft(
        frames.T, cfg.n_fft, cfg.hop_length, window=_window(cfg), center=True, length=len(frames) * cfg.hop_length
    )
    return audio.numpy().astype(np.float32)


# ---------------------------------------------------------------------------------------------- codec


class EmbeddedCodec(AudioCodec):
    """Residual-k-means codec over stacked log-mel frames, decoded by code tables + Griffin-Lim."""

    def __init__(self, cfg: EmbeddedCodecConfig, params: Mapping[str, np.ndarray]) -> None:
        self.config = cfg
        missing = [k for k in _param_names(cfg) if k not in params]
        if missing:
            raise ValueError(f"embedded codec parameters missing: {missing}")
        self._params = {k: np.asarray(params[k]) for k in _param_names(cfg)}
        self._fbank = torch.from_numpy(mel_filterbank(cfg))
        self._feature_mean = torch.from_numpy(self._params["feature_mean"]).float()
        self._projection = torch.from_numpy(self._params["projection"]).float()
        self._codebooks = [torch.from_numpy(self._params[f"codebook_{s}"]).float() for s in range(cfg.num_stages)]
        self._tables = [torch.from_numpy(self._params[f"table_{s}"]).float() for s in range(cfg.num_stages)]
        self._logmag_mean = torch.from_numpy(self._params["logmag_mean"]).float()
        self._offsets = np.concatenate([[0], np.cumsum(cfg.codebook_sizes)[:-1]]).astype(np.int64)
        self._identity = CodecIdentity(
            name=NAME,
            version=VERSION,
            token_rate=cfg.token_rate,
            codebook_size=int(sum(cfg.codebook_sizes)),
            sample_rate=cfg.sample_rate,
            output_sample_rate=cfg.sample_rate,
            params_hash=_params_hash(cfg, self._params),
        )

    @classmethod
    def load(cls, path: str | Path) -> EmbeddedCodec:
        """Load a fitted codec from its directory (or its .safetensors file); checks version and hash."""
        path = Path(path)
        directory = path if path.is_dir() else path.parent
        params_path, meta_path = directory / PARAMS_FILE, directory / META_FILE
        if not params_path.exists() or not meta_path.exists():
            raise FileNotFoundError(
                f"no fitted embedded codec in {directory} (expected {PARAMS_FILE} and {META_FILE}); "
                "fit one with `python workflows/prepare_data.py` or tokenization.codecs.embedded.fit_embedded_codec"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("name") != NAME or meta.get("version") != VERSION:
            raise ValueError(
                f"{meta_path} holds {meta.get('name')} version {meta.get('version')}, this code reads "
                f"{NAME} version {VERSION}; refit the codec"
            )
        codec = cls(EmbeddedCodecConfig.from_mapping(meta["config"]), load_file(str(params_path)))
        if codec.identity.params_hash != meta.get("params_hash"):
            raise ValueError(f"{params_path} does not match the params_hash in {meta_path} (corrupt or edited)")
        return codec

    @property
    def identity(self) -> CodecIdentity:
        return self._identity

    def num_codes(self, num_samples: int, sample_rate: int) -> int:
        resampled = math.ceil(Fraction(int(num_samples) * self.config.sample_rate, int(sample_rate)))
        return self.config.num_stages * max(1, math.ceil(resampled / self.config.samples_per_token))

    def _features(self, waveform: np.ndarray, sample_rate: int) -> torch.Tensor:
        spec = _spectrogram(_prepare(waveform, sample_rate, self.config), self.config)
        feats = _token_features(spec, self._fbank, self.config)
        return (feats - self._feature_mean) @ self._projection

    def _codes(self, z: torch.Tensor) -> np.ndarray:
        """(frames, pca_dim) -> interleaved 1-D ids: frame t holds stage s at 2t + s, offset by stage."""
        stages = torch.stack(_quantise(z, self._codebooks), dim=1).numpy().astype(np.int64)
        return (stages + self._offsets[None, :]).reshape(-1)

    def encode(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        return self._codes(self._features(waveform, sample_rate))

    def encode_batch(self, waveforms: Sequence[np.ndarray], sample_rates: Sequence[int]) -> list[np.ndarray]:
        """One quantisation pass over all utterances (fewer, larger matrix products than one per utterance)."""
        feats = [self._features(w, sr) for w, sr in zip(waveforms, sample_rates, strict=True)]
        if not feats:
            return []
        codes = self._codes(torch.cat(feats))
        bounds = np.cumsum([0, *(len(f) * self.config.num_stages for f in feats)])
        return [codes[a:b] for a, b in itertools.pairwise(bounds)]

    def stage_codes(self, codes: np.ndarray) -> np.ndarray:
        """1-D ids -> (frames, stages) per-stage indices; raises ValueError unless whole frames in order."""
        ids = np.asarray(codes)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"codes must be a 1-D integer array, got shape {ids.shape} dtype {ids.dtype}")
        stages = self.config.num_stages
        if ids.size % stages:
            raise ValueError(f"{ids.size} codes is not a whole number of frames of {stages} codes")
        per_stage = ids.astype(np.int64).reshape(-1, stages) - self._offsets[None, :]
        sizes = np.asarray(self.config.codebook_sizes)[None, :]
        bad = np.argwhere((per_stage < 0) | (per_stage >= sizes))
        if bad.size:
            frame, stage = bad[0]
            raise ValueError(
                f"code {ids[frame * stages + stage]} at position {frame * stages + stage} is not a stage-{stage} "
                f"code (stage {stage} ids are [{self._offsets[stage]}, {self._offsets[stage] + sizes[0, stage]}))"
            )
        return per_stage

    def _magnitudes(self, per_stage: np.ndarray) -> torch.Tensor:
        """(frames, stages) indices -> linear STFT magnitudes, (frames * frames_per_token, bins)."""
        logmag = self._logmag_mean + sum(
            (table[torch.from_numpy(per_stage[:, s])] for s, table in enumerate(self._tables)), torch.zeros(())
        )
        return torch.exp(logmag.reshape(-1, self.config.num_bins))

    def decode(self, codes: np.ndarray) -> tuple[np.ndarray, int]:
        per_stage = self.stage_codes(codes)
        if len(per_stage) == 0:
            return np.zeros(0, dtype=np.float32), self.config.sample_rate
        gl = _BlockGriffinLim(self.config)
        gl.append(self._magnitudes(per_stage))
        gl.run(final=True)
        return _overlap_add(gl.committed, self.config), self.config.sample_rate

    def resynthesize(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """The input through this codec's analysis and Griffin-Lim but without quantisation: the ceiling
        of what any codes could give (benchmarks report it next to the round trip)."""
        spec = _spectrogram(_prepare(waveform, sample_rate, self.config), self.config)
        gl = _BlockGriffinLim(self.config)
        gl.append(spec.abs())
        gl.run(final=True)
        return _overlap_add(gl.committed, self.config)

    def stream_decoder(self) -> StreamingDecoder:
        """Block-wise decoder; its pushes and flush concatenate to `decode` of all codes (float tolerance)."""
        return _EmbeddedStreamDecoder(self)


class _EmbeddedStreamDecoder(StreamingDecoder):
    """Feeds whole codec frames to a `_BlockGriffinLim` and returns samples whose frames are all final.

    Latency: a block is solved once `block_frames + lookahead_frames` STFT frames past the last block have
    arrived (0.4 s of audio with the defaults); a sample is final when every frame overlapping it is.
    """

    def __init__(self, codec: EmbeddedCodec) -> None:
        self._codec = codec
        self._cfg = codec.config
        self._gl = _BlockGriffinLim(codec.config)
        self._pending = np.zeros(0, dtype=np.int64)
        self._emitted = 0
        self._overlap = math.ceil(self._cfg.n_fft / (2 * self._cfg.hop_length))

    def push(self, codes: np.ndarray) -> np.ndarray:
        new = np.asarray(codes)
        if new.ndim != 1 or (new.size and not np.issubdtype(new.dtype, np.integer)):
            raise ValueError(f"codes must be a 1-D integer array, got shape {new.shape} dtype {new.dtype}")
        ids = np.concatenate([self._pending, new.astype(np.int64)])
        whole = len(ids) - len(ids) % self._cfg.num_stages
        self._pending = ids[whole:]
        if whole:
            self._gl.append(self._codec._magnitudes(self._codec.stage_codes(ids[:whole])))
        self._gl.run(final=False)
        return self._emit(max(0, len(self._gl.committed) - self._overlap) * self._cfg.hop_length)

    def flush(self) -> np.ndarray:
        if len(self._pending):
            raise ValueError(f"stream ended inside a codec frame ({len(self._pending)} codes of a frame pending)")
        self._gl.run(final=True)
        return self._emit(len(self._gl.committed) * self._cfg.hop_length)

    def _emit(self, final_samples: int) -> np.ndarray:
        """Samples [emitted, final_samples), from an inverse STFT of just the frames that reach them."""
        if final_samples <= self._emitted:
            return np.zeros(0, dtype=np.float32)
        hop = self._cfg.hop_length
        first = max(0, self._emitted // hop - 2 * self._overlap)
        audio = _overlap_add(self._gl.committed[first:], self._cfg)
        out = audio[self._emitted - first * hop : final_samples - first * hop]
        self._emitted = final_samples
        return out


def _param_names(cfg: EmbeddedCodecConfig) -> list[str]:
    stages = range(cfg.num_stages)
    return [
        "feature_mean",
        "projection",
        "logmag_mean",
        *(f"codebook_{s}" for s in stages),
        *(f"table_{s}" for s in stages),
    ]


def load_codec(cfg: Mapping[str, Any]) -> EmbeddedCodec:
    """Factory entry (tokenization.codecs.build_codec): the fitted codec at `cfg["path"]`."""
    path = cfg.get("path")
    if not path:
        raise ValueError("the embedded codec config needs `path` (the directory the fit wrote)")
    return EmbeddedCodec.load(path)
