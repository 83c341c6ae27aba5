"""Token encoder of the CosyVoice flow model: a Conformer with ESPnet-style relative positions.

Two variants exist in released checkpoints and differ only in their attention mask:
`ConformerEncoder` (CosyVoice-300M, full context) and `BlockConformerEncoder` (GLM-4-Voice-Decoder:
every token sees all earlier tokens plus its whole block of `block_size` tokens, which is what lets the
decoder start after 10 tokens and re-encode a growing prefix without changing earlier outputs).
Attribute names (`embed.out`, `encoders.N.self_attn.linear_q`, `pos_bias_u`, `norm_mha`, ...) follow
the upstream WeNet/CosyVoice modules so their state dicts load unchanged. Only the options used by
released decoder configs are implemented; the others raise a clear error instead of silently differing.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_LAYER_NORM_EPS = 1e-5


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_len) bool, True on valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def chunk_attention_mask(size: int, chunk_size: int, device: torch.device) -> torch.Tensor:
    """(size, size) bool: query i sees every key before the end of its own chunk.

    This is WeNet's `subsequent_chunk_mask` with unlimited left context, and it equals GLM-4-Voice's
    block grid mask (lower triangle OR same block): j <= i or j // b == i // b  <=>  j < (i // b + 1) * b.
    """
    positions = torch.arange(size, device=device)
    chunk_end = (positions // chunk_size + 1) * chunk_size
    return positions[None, :] < chunk_end[:, None]


def relative_position_table(size: int, d_model: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """ESPnet relative positional encodings for relative offsets size-1, ..., 0, ..., -(size-1).

    Returns (1, 2*size-1, d_model). Computed exactly as upstream (float32 sin/cos of offset * div_term,
    even channels sin, odd channels cos), only for the offsets needed instead of a 5000-long table:
    each entry depends on its offset alone, so the values are identical.
    """
    div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model))
    offsets = torch.arange(size - 1, -size, -1, dtype=torch.float32).unsqueeze(1)
    table = torch.zeros(2 * size - 1, d_model)
    table[:, 0::2] = torch.sin(offsets * div_term)
    table[:, 1::2] = torch.cos(offsets * div_term)
    return table.unsqueeze(0).to(device=device, dtype=dtype)


class EspnetRelPositionalEncoding(nn.Module):
    """Scales the input by sqrt(d_model) and returns the relative position table for its length."""

    def __init__(self, d_model: int, dropout_rate: float) -> None:
        super().__init__()
        self.d_model = d_model
        self.xscale = math.sqrt(d_model)
        self.dropout = nn.Dropout(p=dropout_rate)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos_emb = relative_position_table(x.size(1), self.d_model, x.dtype, x.device)
        return self.dropout(x * self.xscale), self.dropout(pos_emb)


class LinearNoSubsampling(nn.Module):
    """Input layer 'linear': Linear -> LayerNorm -> Dropout, then the positional encoding."""

    def __init__(self, idim: int, odim: int, dropout_rate: float, pos_enc: nn.Module) -> None:
        super().__init__()
        self.out = nn.Sequential(
            nn.Linear(idim, odim), nn.LayerNorm(odim, eps=_LAYER_NORM_EPS), nn.Dropout(dropout_rate)
        )
        self.pos_enc = pos_enc

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pos_enc(self.out(x))


class RelPositionMultiHeadedAttention(nn.Module):
    """Transformer-XL style attention (content + position terms with learned biases u and v)."""

    def __init__(self, n_head: int, n_feat: int, dropout_rate: float, key_bias: bool = True) -> None:
        super().__init__()
        if n_feat % n_head:
            raise ValueError(f"attention size {n_feat} is not divisible by {n_head} heads")
        self.d_k = n_feat // n_head
        self.h = n_head
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k = nn.Linear(n_feat, n_feat, bias=key_bias)
        self.linear_v = nn.Linear(n_feat, n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.dropout = nn.Dropout(p=dropout_rate)
        self.linear_pos = nn.Linear(n_feat, n_feat, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(self.h, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.empty(self.h, self.d_k))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), -1, self.h, self.d_k).transpose(1, 2)

    @staticmethod
    def rel_shift(scores: torch.Tensor) -> torch.Tensor:
        """(B, H, T, 2T-1) scores against offsets T-1..-(T-1) -> (B, H, T, T) scores against key j.

        Query i and key j have offset i - j, stored at column (T-1) - i + j, so row i is a length-T
        window starting at column T-1-i; in the flat row-major buffer that is a stride of 2T-2 per row.
        Same result as the pad-and-reshape trick upstream, without the copy.
        """
        scores = scores.contiguous()
        b, h, t, width = scores.shape
        stride_b, stride_h = scores.stride(0), scores.stride(1)
        return scores.as_strided((b, h, t, t), (stride_b, stride_h, width - 1, 1), scores.storage_offset() + t - 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        """x: (B, T, D); mask: (B, 1 or T, T) bool, True = may attend; pos_emb: (1, 2T-1, D)."""
        q = self._heads(self.linear_q(x)).transpose(1, 2)  # (B, T, H, d_k) to add the per-head biases
        k = self._heads(self.linear_k(x))
        v = self._heads(self.linear_v(x))
        p = self._heads(self.linear_pos(pos_emb))
        matrix_ac = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))
        matrix_bd = self.rel_shift(torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1)))
        scores = (matrix_ac + matrix_bd) / math.sqrt(self.d_k)
        blocked = ~mask.unsqueeze(1)
        attn = torch.softmax(scores.masked_fill(blocked, -float("inf")), dim=-1).masked_fill(blocked, 0.0)
        context = torch.matmul(self.dropout(attn), v).transpose(1, 2).reshape(x.size(0), -1, self.h * self.d_k)
        return self.linear_out(context)


class PositionwiseFeedForward(nn.Module):
    """w_2(dropout(activation(w_1(x))))."""

    def __init__(self, idim: int, hidden_units: int, dropout_rate: float, activation: nn.Module) -> None:
        super().__init__()
        self.w_1 = nn.Linear(idim, hidden_units)
        self.activation = activation
        self.dropout = nn.Dropout(dropout_rate)
        self.w_2 = nn.Linear(hidden_units, idim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(self.activation(self.w_1(x))))


class ConformerEncoderLayer(nn.Module):
    """Self-attention and feed-forward sub-blocks with residuals (no macaron FFN, no conv module)."""

    def __init__(
        self,
        size: int,
        self_attn: RelPositionMultiHeadedAttention,
        feed_forward: PositionwiseFeedForward,
        dropout_rate: float,
        normalize_before: bool,
    ) -> None:
        super().__init__()
        self.self_attn = self_attn
        self.feed_forward = feed_forward
        self.norm_ff = nn.LayerNorm(size, eps=_LAYER_NORM_EPS)
        self.norm_mha = nn.LayerNorm(size, eps=_LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout_rate)
        self.normalize_before = normalize_before

    def forward(self, x: torch.Tensor, mask: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        h = self.norm_mha(x) if self.normalize_before else x
        x = x + self.dropout(self.self_attn(h, mask, pos_emb))
        if not self.normalize_before:
            x = self.norm_mha(x)
        h = self.norm_ff(x) if self.normalize_before else x
        x = x + self.dropout(self.feed_forward(h))
        if not self.normalize_before:
            x = self.norm_ff(x)
        return x


class ConformerEncoder(nn.Module):
    """CosyVoice's `cosyvoice.transformer.encoder.ConformerEncoder` restricted to the released options.

    Constructor arguments are the upstream ones so config.yaml can be passed through; training-only
    switches (dropout rates apply only in train mode, dynamic chunking, gradient checkpointing) are
    accepted and have no effect at inference, as upstream.
    """

    attention_type = "rel_selfattn"

    def __init__(
        self,
        input_size: int,
        output_size: int = 256,
        attention_heads: int = 4,
        linear_units: int = 2048,
        num_blocks: int = 6,
        dropout_rate: float = 0.1,
        positional_dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
        input_layer: str = "linear",
        pos_enc_layer_type: str = "rel_pos_espnet",
        normalize_before: bool = True,
        static_chunk_size: int = 0,
        use_dynamic_chunk: bool = False,
        global_cmvn: nn.Module | None = None,
        use_dynamic_left_chunk: bool = False,
        positionwise_conv_kernel_size: int = 1,
        macaron_style: bool = True,
        selfattention_layer_type: str = "rel_selfattn",
        activation_type: str = "swish",
        use_cnn_module: bool = True,
        cnn_module_kernel: int = 15,
        causal: bool = False,
        cnn_module_norm: str = "batch_norm",
        key_bias: bool = True,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        _require(input_layer == "linear", f"input_layer={input_layer!r} (only 'linear')")
        _require(pos_enc_layer_type == "rel_pos_espnet", f"pos_enc_layer_type={pos_enc_layer_type!r}")
        _require(
            selfattention_layer_type == self.attention_type, f"selfattention_layer_type={selfattention_layer_type!r}"
        )
        _require(activation_type == "swish", f"activation_type={activation_type!r} (only 'swish')")
        _require(not macaron_style, "macaron_style=True")
        _require(not use_cnn_module, "use_cnn_module=True")
        _require(global_cmvn is None, "global_cmvn")
        self._output_size = output_size
        self.static_chunk_size = static_chunk_size
        self.normalize_before = normalize_before
        self.embed = LinearNoSubsampling(
            input_size, output_size, dropout_rate, EspnetRelPositionalEncoding(output_size, positional_dropout_rate)
        )
        self.after_norm = nn.LayerNorm(output_size, eps=_LAYER_NORM_EPS)
        self.encoders = nn.ModuleList(
            ConformerEncoderLayer(
                output_size,
                RelPositionMultiHeadedAttention(attention_heads, output_size, attention_dropout_rate, key_bias),
                PositionwiseFeedForward(output_size, linear_units, dropout_rate, nn.SiLU()),
                dropout_rate,
                normalize_before,
            )
            for _ in range(num_blocks)
        )

    def output_size(self) -> int:
        return self._output_size

    def attention_mask(self, valid: torch.Tensor) -> torch.Tensor:
        """(B, T) valid positions -> (B, 1 or T, T) attention mask (static chunks when configured)."""
        mask = valid.unsqueeze(1)
        if self.static_chunk_size > 0:
            mask = mask & chunk_attention_mask(valid.size(1), self.static_chunk_size, valid.device)
        return mask

    def forward(self, xs: torch.Tensor, xs_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """xs: (B, T, input_size), xs_lens: (B,) -> encoded (B, T, output_size), valid mask (B, 1, T)."""
        valid = length_mask(xs_lens, xs.size(1))
        xs, pos_emb = self.embed(xs)
        mask = self.attention_mask(valid)
        for layer in self.encoders:
            xs = layer(xs, mask, pos_emb)
        if self.normalize_before:
            xs = self.after_norm(xs)
        return xs, valid.unsqueeze(1)


class BlockConformerEncoder(ConformerEncoder):
    """GLM-4-Voice-Decoder's encoder: block-causal attention over blocks of `block_size` tokens."""

    attention_type = "block_rel_selfattn"

    def __init__(self, input_size: int = 512, *, block_size: int = 10, **kwargs: object) -> None:
        defaults = {"macaron_style": False, "use_cnn_module": False, "attention_dropout_rate": 0.1}
        super().__init__(input_size, **{**defaults, **kwargs})  # type: ignore[arg-type]
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size

    def attention_mask(self, valid: torch.Tensor) -> torch.Tensor:
        return super().attention_mask(valid) & chunk_attention_mask(valid.size(1), self.block_size, valid.device)


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise ValueError(f"unsupported flow encoder option: {what}; no released CosyVoice/GLM-4-Voice decoder uses it")
