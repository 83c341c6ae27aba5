"""Vector-field estimator of CosyVoice's flow matching: `ConditionalDecoder`, a 1-D U-Net.

Each level is a ResNet block (conv + GroupNorm + Mish, time embedding added) followed by transformer
blocks; the levels go down by strided convs and up by transposed convs with skip connections. The
building blocks come from Matcha-TTS, which takes its transformer block and attention from diffusers;
we re-implement them here (no matcha/diffusers dependency) with the same module names, so keys such as
`down_blocks.0.1.0.attn1.to_q.weight` and `ff.net.0.proj.weight` match released `flow.pt` files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

_GROUPS = 8  # Matcha's Block1D GroupNorm groups: channel counts must be multiples of 8


class SinusoidalPosEmb(nn.Module):
    """Sinusoidal embedding of the flow time t in [0, 1] (scaled by 1000, sin half then cos half)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError("SinusoidalPosEmb requires an even dimension")
        self.dim = dim

    def forward(self, t: torch.Tensor, scale: float = 1000.0) -> torch.Tensor:
        t = t.reshape(-1)
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device).float() * -(math.log(10000) / (half - 1)))
        angles = scale * t.unsqueeze(1) * freqs.unsqueeze(0)
        return torch.cat((angles.sin(), angles.cos()), dim=-1)


class TimestepEmbedding(nn.Module):
    """linear_1 -> SiLU -> linear_2 (diffusers' TimestepEmbedding with act_fn='silu')."""

    def __init__(self, in_channels: int, time_embed_dim: int, act_fn: str = "silu") -> None:
        super().__init__()
        if act_fn != "silu":
            raise ValueError(f"unsupported time embedding activation {act_fn!r}")
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(sample)))


class Block1D(nn.Module):
    """Masked conv(k=3) -> GroupNorm -> Mish."""

    def __init__(self, dim: int, dim_out: int, groups: int = _GROUPS) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(dim, dim_out, 3, padding=1), nn.GroupNorm(groups, dim_out), nn.Mish())

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.block(x * mask) * mask


class ResnetBlock1D(nn.Module):
    """Two Block1Ds with the projected time embedding added in between, plus a 1x1 residual conv."""

    def __init__(self, dim: int, dim_out: int, time_emb_dim: int, groups: int = _GROUPS) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_emb_dim, dim_out))
        self.block1 = Block1D(dim, dim_out, groups=groups)
        self.block2 = Block1D(dim_out, dim_out, groups=groups)
        self.res_conv = nn.Conv1d(dim, dim_out, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x, mask) + self.mlp(time_emb).unsqueeze(-1)
        return self.block2(h, mask) + self.res_conv(x * mask)


class Downsample1D(nn.Module):
    """Halves the length with a stride-2 conv."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample1D(nn.Module):
    """Doubles the length with a transposed conv (Matcha's Upsample1D with use_conv_transpose=True)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(channels, channels, 4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Attention(nn.Module):
    """diffusers' self-attention: bias-free q/k/v projections, `to_out` = [Linear, Dropout]."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, dropout: float = 0.0, bias: bool = False) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(query_dim, inner, bias=bias)
        self.to_v = nn.Linear(query_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(dropout)])

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (proj(x).view(b, t, self.heads, -1).transpose(1, 2) for proj in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.transpose(1, 2).reshape(b, t, -1)
        return self.to_out[1](self.to_out[0](out))


class GELU(nn.Module):
    """diffusers' GELU block: a projection followed by exact (erf) GELU."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class FeedForward(nn.Module):
    """`net` = [GELU(dim -> 4 dim), Dropout, Linear(4 dim -> dim)]."""

    def __init__(self, dim: int, dropout: float = 0.0, activation_fn: str = "gelu", mult: int = 4) -> None:
        super().__init__()
        if activation_fn != "gelu":
            raise ValueError(f"unsupported estimator activation {activation_fn!r} (released decoders use 'gelu')")
        inner = dim * mult
        self.net = nn.ModuleList([GELU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.net:
            x = module(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention + feed-forward (Matcha's BasicTransformerBlock without cross-attention)."""

    def __init__(
        self, dim: int, num_attention_heads: int, attention_head_dim: int, dropout: float, activation_fn: str
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, num_attention_heads, attention_head_dim, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout, activation_fn=activation_fn)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), attn_mask)
        return x + self.ff(self.norm3(x))


def _attention_mask(mask: torch.Tensor) -> torch.Tensor | None:
    """(B, 1, T) float frame mask -> (B, 1, T, T) bool key/query mask, or None when nothing is padded.

    Upstream (early CosyVoice, used by GLM-4-Voice) hands the float outer product mask^T mask to
    diffusers, where it is *added* to the scores; for unpadded input that adds a constant and changes
    nothing, which is the only case the decoder meets (one utterance at a time). Padded batches get a
    proper boolean mask here instead.
    """
    if bool(mask.min() > 0):
        return None
    valid = mask.bool()
    return (valid.transpose(1, 2) & valid).unsqueeze(1)


class ConditionalDecoder(nn.Module):
    """U-Net estimating the flow's velocity from (x_t, mu, speaker, prompt condition, t)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (256, 256),
        dropout: float = 0.05,
        attention_head_dim: int = 64,
        n_blocks: int = 1,
        num_mid_blocks: int = 2,
        num_heads: int = 4,
        act_fn: str = "snake",
    ) -> None:
        super().__init__()
        channels = tuple(channels)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.time_embeddings = SinusoidalPosEmb(in_channels)
        time_embed_dim = channels[0] * 4
        self.time_mlp = TimestepEmbedding(in_channels, time_embed_dim, act_fn="silu")

        def transformer_stack(dim: int) -> nn.ModuleList:
            return nn.ModuleList(
                BasicTransformerBlock(dim, num_heads, attention_head_dim, dropout, act_fn) for _ in range(n_blocks)
            )

        self.down_blocks = nn.ModuleList()
        output_channel = in_channels
        for i, channel in enumerate(channels):
            input_channel, output_channel = output_channel, channel
            is_last = i == len(channels) - 1
            down = (
                Downsample1D(output_channel) if not is_last else nn.Conv1d(output_channel, output_channel, 3, padding=1)
            )
            self.down_blocks.append(
                nn.ModuleList(
                    [
                        ResnetBlock1D(input_channel, output_channel, time_embed_dim),
                        transformer_stack(output_channel),
                        down,
                    ]
                )
            )
        self.mid_blocks = nn.ModuleList(
            nn.ModuleList([ResnetBlock1D(channels[-1], channels[-1], time_embed_dim), transformer_stack(channels[-1])])
            for _ in range(num_mid_blocks)
        )
        up_channels = (*channels[::-1], channels[0])
        self.up_blocks = nn.ModuleList()
        for i in range(len(up_channels) - 1):
            input_channel, output_channel = up_channels[i] * 2, up_channels[i + 1]
            is_last = i == len(up_channels) - 2
            up = Upsample1D(output_channel) if not is_last else nn.Conv1d(output_channel, output_channel, 3, padding=1)
            self.up_blocks.append(
                nn.ModuleList(
                    [
                        ResnetBlock1D(input_channel, output_channel, time_embed_dim),
                        transformer_stack(output_channel),
                        up,
                    ]
                )
            )
        self.final_block = Block1D(up_channels[-1], up_channels[-1])
        self.final_proj = nn.Conv1d(up_channels[-1], out_channels, 1)
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        """Upstream's init (Kaiming for Conv1d/Linear, unit GroupNorm); only matters for random models."""
        for m in self.modules():
            if isinstance(m, nn.Conv1d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.GroupNorm):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    @staticmethod
    def _transformers(blocks: nn.ModuleList, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attn_mask = _attention_mask(mask)
        h = x.transpose(1, 2)
        for block in blocks:
            h = block(h, attn_mask)
        return h.transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor,
        t: torch.Tensor,
        spks: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x, mu, cond: (B, 80, T); mask: (B, 1, T); t: (B,) or scalar; spks: (B, 80) -> (B, out, T)."""
        time_emb = self.time_mlp(self.time_embeddings(t))
        parts = [x, mu]
        if spks is not None:
            parts.append(spks.unsqueeze(-1).expand(-1, -1, x.size(-1)))
        if cond is not None:
            parts.append(cond)
        h = torch.cat(parts, dim=1)

        skips: list[torch.Tensor] = []
        masks = [mask]
        for resnet, transformers, downsample in self.down_blocks:
            mask_down = masks[-1]
            h = self._transformers(transformers, resnet(h, mask_down, time_emb), mask_down)
            skips.append(h)
            h = downsample(h * mask_down)
            masks.append(mask_down[:, :, ::2])
        masks.pop()
        mask_mid = masks[-1]
        for resnet, transformers in self.mid_blocks:
            h = self._transformers(transformers, resnet(h, mask_mid, time_emb), mask_mid)
        mask_up = mask
        for resnet, transformers, upsample in self.up_blocks:
            mask_up = masks.pop()
            skip = skips.pop()
            h = torch.cat([h[:, :, : skip.size(-1)], skip], dim=1)
            h = self._transformers(transformers, resnet(h, mask_up, time_emb), mask_up)
            h = upsample(h * mask_up)
        h = self.final_block(h, mask_up)
        return self.final_proj(h * mask_up) * mask
