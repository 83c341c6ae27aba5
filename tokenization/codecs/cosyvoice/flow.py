"""CosyVoice v1 flow model: speech tokens (+ optional prompt) -> 80-bin mel spectrogram.

`MaskedDiffWithXvec.inference` follows the GLM-4-Voice-Decoder fork of CosyVoice's flow (the one its
`token2wav` calls): embed prompt+target tokens, encode, project, stretch to the mel length
`int(n_tokens / input_frame_rate * sample_rate / hop)` with the length regulator, put the prompt mel
into the condition, solve the flow ODE (Euler, cosine time schedule, classifier-free guidance), and
return the frames after the prompt. The speaker x-vector is L2-normalised and projected; GLM-4-Voice
passes a zero vector, whose projection is the layer's bias.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from tokenization.codecs.cosyvoice.conformer import ConformerEncoder, length_mask
from tokenization.codecs.cosyvoice.estimator import ConditionalDecoder


def mel_frames(n_tokens: int, token_rate: float, sample_rate: int, hop_length: int) -> int:
    """Mel frames the flow produces for n_tokens, with upstream's float32 arithmetic and truncation.

    Upstream computes `(token_len / input_frame_rate * 22050 / 256).int()` on an int32 tensor, i.e. in
    float32; doing the same keeps the frame count identical at the rare lengths where float32 and
    float64 round differently.
    """
    n = torch.tensor([n_tokens], dtype=torch.int32)
    return int((n / token_rate * sample_rate / hop_length).int().item())


class InterpolateRegulator(nn.Module):
    """Stretches token features to the mel length, then smooths them with conv/GroupNorm/Mish stacks.

    `mode` is our addition: 'nearest' is what CosyVoice v1 and the GLM-4-Voice fork use; later
    CosyVoice switched to 'linear'. Released configs do not name it, so the default keeps GLM-4-Voice's.
    """

    def __init__(
        self,
        channels: int,
        sampling_ratios: tuple[int, ...] | list[int],
        out_channels: int | None = None,
        groups: int = 1,
        mode: str = "nearest",
    ) -> None:
        super().__init__()
        if mode not in ("nearest", "linear"):
            raise ValueError(f"unsupported interpolation mode {mode!r}")
        self.mode = mode
        self.sampling_ratios = list(sampling_ratios)
        layers: list[nn.Module] = []
        for _ in self.sampling_ratios:
            layers += [nn.Conv1d(channels, channels, 3, 1, 1), nn.GroupNorm(groups, channels), nn.Mish()]
        layers.append(nn.Conv1d(channels, out_channels or channels, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, ylens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T_tokens, D), ylens: (B,) mel lengths -> (B, max(ylens), D_out) masked, ylens."""
        target = int(ylens.max())
        stretched = F.interpolate(x.transpose(1, 2).contiguous(), size=target, mode=self.mode)
        out = self.model(stretched).transpose(1, 2).contiguous()
        return out * length_mask(ylens, target).unsqueeze(-1).to(out.dtype), ylens


class ConditionalCFM(nn.Module):
    """Conditional flow matching sampler around the U-Net estimator (only the estimator has weights)."""

    def __init__(
        self,
        in_channels: int,
        cfm_params: Mapping[str, object],
        n_spks: int = 1,
        spk_emb_dim: int = 64,
        estimator: ConditionalDecoder | None = None,
    ) -> None:
        super().__init__()
        if estimator is None:
            raise ValueError("ConditionalCFM needs an estimator")
        solver = cfm_params.get("solver", "euler")
        if solver != "euler":
            raise ValueError(f"unsupported ODE solver {solver!r} (only 'euler')")
        self.t_scheduler = str(cfm_params.get("t_scheduler", "linear"))
        if self.t_scheduler not in ("linear", "cosine"):
            raise ValueError(f"unsupported t_scheduler {self.t_scheduler!r}")
        self.inference_cfg_rate = float(cfm_params.get("inference_cfg_rate", 0.7))  # type: ignore[arg-type]
        self.spk_emb_dim = spk_emb_dim
        self.estimator = estimator

    def time_span(self, n_timesteps: int, device: torch.device) -> torch.Tensor:
        t_span = torch.linspace(0, 1, n_timesteps + 1, device=device)
        if self.t_scheduler == "cosine":
            t_span = 1 - torch.cos(t_span * 0.5 * torch.pi)
        return t_span

    def forward(
        self,
        mu: torch.Tensor,
        mask: torch.Tensor,
        n_timesteps: int,
        noise: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
    ) -> torch.Tensor:
        """Integrate dx/dt = v(x, t | mu, spks, cond) from x_0 = noise to t = 1 with n Euler steps.

        With guidance rate r > 0 the velocity is (1 + r) v_cond - r v_uncond, where the unconditional
        pass zeroes mu, the speaker and the prompt condition (VoiceBox-style CFG, as upstream). Both
        passes run as one batch of 2.
        """
        if n_timesteps < 1:
            raise ValueError("n_timesteps must be >= 1")
        t_span = self.time_span(n_timesteps, mu.device)
        guided = self.inference_cfg_rate > 0
        if guided:
            mask_in = torch.cat([mask, mask])
            mu_in = torch.cat([mu, torch.zeros_like(mu)])
            spks_in = torch.cat([spks, torch.zeros_like(spks)])
            cond_in = torch.cat([cond, torch.zeros_like(cond)])
        else:
            mask_in, mu_in, spks_in, cond_in = mask, mu, spks, cond
        x = noise
        t, dt = t_span[0], t_span[1] - t_span[0]
        for step in range(1, n_timesteps + 1):
            x_in = torch.cat([x, x]) if guided else x
            velocity = self.estimator(x_in, mask_in, mu_in, t.expand(x_in.size(0)), spks_in, cond_in)
            if guided:
                v_cond, v_uncond = velocity.chunk(2)
                velocity = (1.0 + self.inference_cfg_rate) * v_cond - self.inference_cfg_rate * v_uncond
            x = x + dt * velocity
            t = t + dt
            if step < n_timesteps:
                dt = t_span[step + 1] - t
        return x


class MaskedDiffWithXvec(nn.Module):
    """The flow model of CosyVoice v1 / GLM-4-Voice-Decoder (`cosyvoice.flow.flow.MaskedDiffWithXvec`).

    `only_mask_loss`, `decoder_conf` and `mel_feat_conf` are training-time arguments, accepted so the
    upstream config passes through unchanged.
    """

    def __init__(
        self,
        input_size: int = 512,
        output_size: int = 80,
        spk_embed_dim: int = 192,
        output_type: str = "mel",
        vocab_size: int = 4096,
        input_frame_rate: float = 50,
        only_mask_loss: bool = True,
        encoder: ConformerEncoder | None = None,
        length_regulator: InterpolateRegulator | None = None,
        decoder: ConditionalCFM | None = None,
        decoder_conf: Mapping[str, object] | None = None,
        mel_feat_conf: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__()
        if encoder is None or length_regulator is None or decoder is None:
            raise ValueError("MaskedDiffWithXvec needs encoder, length_regulator and decoder")
        if output_type != "mel":
            raise ValueError(f"unsupported output_type {output_type!r}")
        self.input_size = input_size
        self.output_size = output_size
        self.vocab_size = vocab_size
        self.spk_embed_dim = spk_embed_dim
        self.input_frame_rate = float(input_frame_rate)
        self.input_embedding = nn.Embedding(vocab_size, input_size)
        self.spk_embed_affine_layer = nn.Linear(spk_embed_dim, output_size)
        self.encoder = encoder
        self.encoder_proj = nn.Linear(encoder.output_size(), output_size)
        self.decoder = decoder
        self.length_regulator = length_regulator

    def inference(
        self,
        token: torch.Tensor,
        prompt_token: torch.Tensor,
        prompt_feat: torch.Tensor,
        embedding: torch.Tensor,
        *,
        n_timesteps: int,
        sample_rate: int,
        hop_length: int,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """token: (1, N), prompt_token: (1, P), prompt_feat: (1, P_mel, 80), embedding: (1, spk_dim).

        Returns the mel (1, 80, T - P_mel) for the target tokens, T = mel_frames(P + N). The ODE's
        starting noise is drawn from `generator` (upstream uses the global RNG).
        """
        if token.size(0) != 1:
            raise ValueError("the flow decodes one utterance at a time")
        spks = self.spk_embed_affine_layer(F.normalize(embedding, dim=1))
        tokens = torch.cat([prompt_token, token], dim=1)
        n_total = tokens.size(1)
        h, _ = self.encoder(self.input_embedding(tokens.clamp(min=0)), torch.tensor([n_total], device=tokens.device))
        h = self.encoder_proj(h)
        n_frames = mel_frames(n_total, self.input_frame_rate, sample_rate, hop_length)
        h, _ = self.length_regulator(h, torch.tensor([n_frames], device=tokens.device))
        n_prompt = prompt_feat.size(1)
        if n_prompt > n_frames:
            raise ValueError(f"prompt mel ({n_prompt} frames) is longer than prompt+target ({n_frames} frames)")
        cond = torch.zeros(1, n_frames, self.output_size, device=h.device, dtype=h.dtype)
        cond[:, :n_prompt] = prompt_feat.to(h.dtype)
        mu = h.transpose(1, 2).contiguous()
        noise = torch.randn(mu.shape, generator=generator, device=generator.device).to(mu.device, mu.dtype)
        mask = torch.ones(1, 1, n_frames, device=mu.device, dtype=mu.dtype)
        feat = self.decoder(mu, mask, n_timesteps, noise, spks, cond.transpose(1, 2).contiguous())
        return feat[:, :, n_prompt:]
