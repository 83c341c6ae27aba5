"""HiFT vocoder (HiFTNet: neural source filter + iSTFTNet) of CosyVoice v1 / GLM-4-Voice-Decoder.

mel (80 x T) -> f0 (ConvRNNF0Predictor) -> harmonic source (SineGen, 9 harmonics merged by a linear
layer + tanh) -> STFT of the source fused into a HiFi-GAN generator (2 transposed-conv upsamplings,
Snake-activated ResBlocks) -> conv_post gives log-magnitude and phase of a 16-point STFT -> iSTFT with
hop 4 -> 256 samples per mel frame. Weight-normalised convs use torch's parametrizations; its load
hook accepts the legacy `weight_g`/`weight_v` keys of the released `hift.pt`, and
`legacy_weight_norm_state_dict` writes that layout back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

_PARAMETRIZED_SUFFIXES = {
    ".parametrizations.weight.original0": ".weight_g",
    ".parametrizations.weight.original1": ".weight_v",
}


def legacy_weight_norm_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename parametrized weight-norm keys to the `weight_g`/`weight_v` layout of released checkpoints."""
    renamed = {}
    for key, value in state_dict.items():
        for new_suffix, old_suffix in _PARAMETRIZED_SUFFIXES.items():
            if key.endswith(new_suffix):
                key = key[: -len(new_suffix)] + old_suffix
                break
        renamed[key] = value
    return renamed


def _padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


class Snake(nn.Module):
    """Snake activation x + sin^2(alpha x) / alpha with a learned per-channel alpha (linear scale)."""

    def __init__(self, in_features: int, alpha: float = 1.0, alpha_logscale: bool = False) -> None:
        super().__init__()
        self.alpha_logscale = alpha_logscale
        init = torch.zeros(in_features) if alpha_logscale else torch.ones(in_features) * alpha
        self.alpha = nn.Parameter(init)
        self.no_div_by_zero = 1e-9

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha.unsqueeze(0).unsqueeze(-1)
        if self.alpha_logscale:
            alpha = torch.exp(alpha)
        return x + (1.0 / (alpha + self.no_div_by_zero)) * torch.pow(torch.sin(x * alpha), 2)


class ResBlock(nn.Module):
    """HiFi-GAN/BigVGAN residual block: per dilation, Snake -> dilated conv -> Snake -> conv, residual."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, 1, dilation=d, padding=_padding(kernel_size, d)))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, 1, dilation=1, padding=_padding(kernel_size)))
            for _ in dilations
        )
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv1, conv2, act1, act2 in zip(
            self.convs1, self.convs2, self.activations1, self.activations2, strict=True
        ):
            x = x + conv2(act2(conv1(act1(x))))
        return x


class SineGen(nn.Module):
    """Harmonic sine source from a sample-rate f0 track (NSF's SineGen, CosyVoice v1 variant).

    Harmonic h has instantaneous phase 2*pi*frac(cumsum(f0 * (h+1) / sr)) plus a random initial phase
    (zero for the fundamental). Voiced samples (f0 > threshold) get the sines plus small noise,
    unvoiced ones only noise of std sine_amp / 3.
    """

    def __init__(
        self,
        samp_rate: int,
        harmonic_num: int = 0,
        sine_amp: float = 0.1,
        noise_std: float = 0.003,
        voiced_threshold: float = 0,
    ) -> None:
        super().__init__()
        self.sine_amp = sine_amp
        self.noise_std = noise_std
        self.harmonic_num = harmonic_num
        self.sampling_rate = samp_rate
        self.voiced_threshold = voiced_threshold

    def forward(self, f0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """f0: (B, 1, N) in Hz -> excitation (B, harmonic_num + 1, N)."""
        harmonics = torch.arange(1, self.harmonic_num + 2, device=f0.device, dtype=f0.dtype).view(1, -1, 1)
        cycles = f0 * harmonics / self.sampling_rate
        theta = 2 * np.pi * (torch.cumsum(cycles, dim=-1) % 1)
        shape = (f0.size(0), self.harmonic_num + 1, 1)
        phase = torch.rand(shape, generator=generator, device=generator.device) * (2 * math.pi) - math.pi
        phase = phase.to(f0.device, f0.dtype)
        phase[:, 0, :] = 0
        sines = self.sine_amp * torch.sin(theta + phase)
        uv = (f0 > self.voiced_threshold).to(f0.dtype)
        noise_amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
        noise = torch.randn(sines.shape, generator=generator, device=generator.device).to(f0.device, f0.dtype)
        return sines * uv + noise_amp * noise


class SourceModuleHnNSF(nn.Module):
    """Merges the harmonics into one excitation: tanh(l_linear(sines))."""

    def __init__(
        self,
        sampling_rate: int,
        upsample_scale: int,
        harmonic_num: int = 0,
        sine_amp: float = 0.1,
        add_noise_std: float = 0.003,
        voiced_threshod: float = 0,
    ) -> None:
        super().__init__()
        self.l_sin_gen = SineGen(sampling_rate, harmonic_num, sine_amp, add_noise_std, voiced_threshod)
        self.l_linear = nn.Linear(harmonic_num + 1, 1)
        self.l_tanh = nn.Tanh()

    def forward(self, f0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """f0: (B, 1, N) -> source (B, 1, N)."""
        sines = self.l_sin_gen(f0, generator)
        return self.l_tanh(self.l_linear(sines.transpose(1, 2))).transpose(1, 2)


class ConvRNNF0Predictor(nn.Module):
    """Five weight-normed conv(k=3)+ELU layers and a linear head; |output| is f0 in Hz per mel frame."""

    def __init__(self, num_class: int = 1, in_channels: int = 80, cond_channels: int = 512) -> None:
        super().__init__()
        self.num_class = num_class
        layers: list[nn.Module] = []
        for i in range(5):
            conv = nn.Conv1d(in_channels if i == 0 else cond_channels, cond_channels, kernel_size=3, padding=1)
            layers += [weight_norm(conv), nn.ELU()]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(cond_channels, num_class)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """mel (B, 80, T) -> f0 (B, T)."""
        return torch.abs(self.classifier(self.condnet(x).transpose(1, 2)).squeeze(-1))


class HiFTGenerator(nn.Module):
    """`cosyvoice.hifigan.generator.HiFTGenerator` (the CosyVoice v1 / 22.05 kHz variant)."""

    def __init__(
        self,
        in_channels: int = 80,
        base_channels: int = 512,
        nb_harmonics: int = 8,
        sampling_rate: int = 22050,
        nsf_alpha: float = 0.1,
        nsf_sigma: float = 0.003,
        nsf_voiced_threshold: float = 10,
        upsample_rates: Sequence[int] = (8, 8),
        upsample_kernel_sizes: Sequence[int] = (16, 16),
        istft_params: Mapping[str, int] | None = None,
        resblock_kernel_sizes: Sequence[int] = (3, 7, 11),
        resblock_dilation_sizes: Sequence[Sequence[int]] = ((1, 3, 5), (1, 3, 5), (1, 3, 5)),
        source_resblock_kernel_sizes: Sequence[int] = (7, 11),
        source_resblock_dilation_sizes: Sequence[Sequence[int]] = ((1, 3, 5), (1, 3, 5)),
        lrelu_slope: float = 0.1,
        audio_limit: float = 0.99,
        f0_predictor: ConvRNNF0Predictor | None = None,
    ) -> None:
        super().__init__()
        if f0_predictor is None:
            raise ValueError("HiFTGenerator needs an f0_predictor")
        if int(sampling_rate) != 22050:
            # Upstream switches to a different source module (SineGen2) for CosyVoice2's 24 kHz vocoder.
            raise ValueError(f"only the 22.05 kHz CosyVoice v1 HiFT is implemented, got sampling_rate={sampling_rate}")
        istft = dict(istft_params or {"n_fft": 16, "hop_len": 4})
        self.n_fft, self.hop_len = int(istft["n_fft"]), int(istft["hop_len"])
        upsample_rates = [int(u) for u in upsample_rates]
        self.sampling_rate = int(sampling_rate)
        self.upsample_scale = int(np.prod(upsample_rates)) * self.hop_len  # waveform samples per mel frame
        self.lrelu_slope = lrelu_slope
        self.audio_limit = audio_limit
        self.num_kernels = len(resblock_kernel_sizes)
        self.num_upsamples = len(upsample_rates)
        self.m_source = SourceModuleHnNSF(
            sampling_rate, self.upsample_scale, nb_harmonics, nsf_alpha, nsf_sigma, nsf_voiced_threshold
        )
        self.conv_pre = weight_norm(nn.Conv1d(in_channels, base_channels, 7, 1, padding=3))
        self.ups = nn.ModuleList(
            weight_norm(
                nn.ConvTranspose1d(base_channels // 2**i, base_channels // 2 ** (i + 1), k, u, padding=(k - u) // 2)
            )
            for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes, strict=True))
        )
        # The source STFT (n_fft + 2 channels at the final frame rate) enters every upsampling stage,
        # strided down to that stage's rate.
        cum_rates = np.cumprod([1, *upsample_rates[::-1][:-1]])[::-1]
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        for i, (u, k, d) in enumerate(
            zip(cum_rates, source_resblock_kernel_sizes, source_resblock_dilation_sizes, strict=True)
        ):
            ch = base_channels // 2 ** (i + 1)
            u = int(u)
            down = (
                nn.Conv1d(self.n_fft + 2, ch, 1, 1)
                if u == 1
                else nn.Conv1d(self.n_fft + 2, ch, u * 2, u, padding=u // 2)
            )
            self.source_downs.append(down)
            self.source_resblocks.append(ResBlock(ch, k, d))
        self.resblocks = nn.ModuleList(
            ResBlock(base_channels // 2 ** (i + 1), k, d)
            for i in range(self.num_upsamples)
            for k, d in zip(resblock_kernel_sizes, resblock_dilation_sizes, strict=True)
        )
        final_ch = base_channels // 2**self.num_upsamples
        self.conv_post = weight_norm(nn.Conv1d(final_ch, self.n_fft + 2, 7, 1, padding=3))
        self.reflection_pad = nn.ReflectionPad1d((1, 0))
        self.f0_predictor = f0_predictor

    def remove_weight_norm(self) -> None:
        """Fold every weight-norm parametrization into a plain weight (inference speed; not reversible)."""
        for module in self.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)

    def _window(self, device: torch.device) -> torch.Tensor:
        # scipy.signal.get_window("hann", n_fft, fftbins=True) in float64, cast to float32 as upstream.
        return torch.hann_window(self.n_fft, periodic=True, dtype=torch.float64).to(device=device, dtype=torch.float32)

    def source(self, mel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """mel (B, 80, T) -> harmonic source waveform (B, 1, T * upsample_scale)."""
        f0 = self.f0_predictor(mel)
        f0 = F.interpolate(f0[:, None], scale_factor=float(self.upsample_scale), mode="nearest")
        return self.m_source(f0, generator)

    def decode(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """mel (B, 80, T) + source (B, 1, T * upsample_scale) -> waveform (B, T * upsample_scale)."""
        window = self._window(mel.device)
        spec = torch.stft(source.squeeze(1), self.n_fft, self.hop_len, self.n_fft, window=window, return_complex=True)
        s_stft = torch.cat([spec.real, spec.imag], dim=1)
        x = self.conv_pre(mel)
        for i in range(self.num_upsamples):
            x = self.ups[i](F.leaky_relu(x, self.lrelu_slope))
            if i == self.num_upsamples - 1:
                x = self.reflection_pad(x)
            x = x + self.source_resblocks[i](self.source_downs[i](s_stft))
            stage = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            x = sum(block(x) for block in stage) / self.num_kernels
        x = self.conv_post(F.leaky_relu(x))  # default slope 0.01 here, as upstream
        bins = self.n_fft // 2 + 1
        magnitude = torch.clip(torch.exp(x[:, :bins]), max=1e2)
        phase = torch.sin(x[:, bins:])  # upstream's "sin is redundancy": kept, it changes the numerics
        spectrum = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        audio = torch.istft(spectrum, self.n_fft, self.hop_len, self.n_fft, window=window)
        return torch.clamp(audio, -self.audio_limit, self.audio_limit)

    def inference(
        self, mel: torch.Tensor, generator: torch.Generator, cache_source: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """GLM-4-Voice's `hift.inference(mel, cache_source)`: returns (waveform, source).

        `cache_source` replaces the start of the new source with the tail of the previous chunk's source,
        so the excitation's phase continues across streaming chunks instead of restarting.
        """
        source = self.source(mel, generator)
        if cache_source is not None and cache_source.size(-1) > 0:
            source[:, :, : cache_source.size(-1)] = cache_source
        return self.decode(mel, source), source
