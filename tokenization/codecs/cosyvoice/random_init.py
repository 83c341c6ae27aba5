"""Writes a decoder directory (config.yaml, flow.pt, hift.pt) with the real architecture, random weights.

Tests and benchmarks need the production layout without the 500 MB of released weights: the config has
the upstream HyperPyYAML shape (seeding `!apply:` lines, `!ref`, `!new:` class paths, an omegaconf
DictConfig), `flow.pt`/`hift.pt` are `torch.save`d state dicts, and the HiFT keys use the legacy
`weight_g`/`weight_v` weight-norm layout of the released files. `small=False` gives GLM-4-Voice-Decoder
sizes (for timing); `small=True` shrinks every width/depth so a CPU decode takes well under a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from tokenization.codecs.cosyvoice.config import build_decoder_modules
from tokenization.codecs.cosyvoice.hift import legacy_weight_norm_state_dict

GLM4VOICE_TOKEN_RATE = 12.5

_FULL = {
    "input_size": 512, "enc_size": 512, "enc_heads": 8, "enc_units": 2048, "enc_blocks": 6,
    "channels": "[256, 256]", "head_dim": 64, "n_blocks": 4, "mid_blocks": 12, "heads": 8,
    "hift_channels": 512, "f0_channels": 512,
}  # fmt: skip
_SMALL = {
    "input_size": 64, "enc_size": 64, "enc_heads": 4, "enc_units": 128, "enc_blocks": 2,
    "channels": "[64, 64]", "head_dim": 16, "n_blocks": 1, "mid_blocks": 1, "heads": 2,
    "hift_channels": 32, "f0_channels": 32,
}  # fmt: skip

_ENCODERS = {
    "block": ("BlockConformerEncoder", "block_rel_selfattn", "\n        block_size: 10"),
    "full": ("ConformerEncoder", "rel_selfattn", ""),
}

_CONFIG_TEMPLATE = """\
# set random seed, so that you may reproduce your result.
__set_seed1: !apply:random.seed [1986]
__set_seed2: !apply:numpy.random.seed [1986]
__set_seed3: !apply:torch.manual_seed [1986]

# fixed params
sample_rate: 22050
spk_embed_dim: 192

flow: !new:cosyvoice.flow.flow.MaskedDiffWithXvec
    input_size: {input_size}
    output_size: 80
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: {vocab_size}
    input_frame_rate: {token_rate}
    only_mask_loss: True
    encoder: !new:cosyvoice.transformer.encoder.{encoder_class}
        output_size: {enc_size}
        attention_heads: {enc_heads}
        linear_units: {enc_units}
        num_blocks: {enc_blocks}
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.1
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: '{attention_type}'{block_line}
        input_size: {input_size}
        use_cnn_module: False
        macaron_style: False
    length_regulator: !new:cosyvoice.flow.length_regulator.InterpolateRegulator
        channels: 80
        sampling_ratios: [1, 1, 1, 1]
    decoder: !new:cosyvoice.flow.flow_matching.ConditionalCFM
        in_channels: 240
        n_spks: 1
        spk_emb_dim: 80
        cfm_params: !new:omegaconf.DictConfig
            content:
                sigma_min: 1e-06
                solver: 'euler'
                t_scheduler: 'cosine'
                training_cfg_rate: 0.2
                inference_cfg_rate: 0.7
                reg_loss_type: 'l1'
        estimator: !new:cosyvoice.flow.decoder.ConditionalDecoder
            in_channels: 320
            out_channels: 80
            channels: {channels}
            dropout: 0
            attention_head_dim: {head_dim}
            n_blocks: {n_blocks}
            num_mid_blocks: {mid_blocks}
            num_heads: {heads}
            act_fn: 'gelu'

hift: !new:cosyvoice.hifigan.generator.HiFTGenerator
    in_channels: 80
    base_channels: {hift_channels}
    nb_harmonics: 8
    sampling_rate: !ref <sample_rate>
    nsf_alpha: 0.1
    nsf_sigma: 0.003
    nsf_voiced_threshold: 10
    upsample_rates: [8, 8]
    upsample_kernel_sizes: [16, 16]
    istft_params:
        n_fft: 16
        hop_len: 4
    resblock_kernel_sizes: [3, 7, 11]
    resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    source_resblock_kernel_sizes: [7, 11]
    source_resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5]]
    lrelu_slope: 0.1
    audio_limit: 0.99
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor
        num_class: 1
        in_channels: 80
        cond_channels: {f0_channels}
"""


def render_config(vocab_size: int, token_rate: float, *, small: bool, encoder_type: Literal["block", "full"]) -> str:
    """The config.yaml text for the given sizes (GLM-4-Voice-Decoder's file, resized)."""
    encoder_class, attention_type, block_line = _ENCODERS[encoder_type]
    return _CONFIG_TEMPLATE.format(
        vocab_size=vocab_size,
        token_rate=token_rate,
        encoder_class=encoder_class,
        attention_type=attention_type,
        block_line=block_line,
        **(_SMALL if small else _FULL),
    )


def make_random_cosyvoice_decoder(
    out_dir: str | Path,
    vocab_size: int,
    token_rate: float = GLM4VOICE_TOKEN_RATE,
    small: bool = True,
    seed: int = 0,
    *,
    encoder_type: Literal["block", "full"] | None = None,
) -> Path:
    """Write config.yaml, flow.pt and hift.pt for a randomly initialised decoder; return out_dir.

    encoder_type: 'block' (GLM-4-Voice's block-causal BlockConformerEncoder) or 'full' (CosyVoice-300M's
    ConformerEncoder); by default 'block' at 12.5 Hz and 'full' otherwise.
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if token_rate <= 0:
        raise ValueError(f"token_rate must be positive, got {token_rate}")
    if encoder_type is None:
        encoder_type = "block" if token_rate == GLM4VOICE_TOKEN_RATE else "full"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.yaml"
    config_path.write_text(
        render_config(vocab_size, float(token_rate), small=small, encoder_type=encoder_type), encoding="utf-8"
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        modules = build_decoder_modules(config_path)
    torch.save(modules.flow.state_dict(), out / "flow.pt")
    torch.save(legacy_weight_norm_state_dict(modules.hift.state_dict()), out / "hift.pt")
    return out
