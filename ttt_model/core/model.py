"""The TtT model: a stock Hugging Face `Qwen2ForCausalLM` over the unified vocabulary, run with our mask.

Why a plain `Qwen2ForCausalLM` and no subclass: checkpoints stay loadable by stock transformers and any Qwen2
serving stack. Everything TtT-specific lives outside the module: the vocabulary (extra embedding rows), the
modality-aware attention mask (`ttt_model.core.attention`) and the loss (`ttt_model.core.loss`, which applies the LM
head only at target positions, so `forward_hidden` returns hidden states, never full [B, L, V] logits).

Mask hand-off (transformers 5.23, `Qwen2Model.forward`): when `attention_mask` is a dict `{layer_type: mask}`,
the model skips mask construction entirely (no `create_causal_mask`, no packed-sequence detection from
position ids) and gives the same object to every layer. The attention interface then receives it unchanged:
`sdpa` passes a bool [B, 1, L, L] tensor (True = attend) straight to `scaled_dot_product_attention`, and
`flex_attention` passes a `BlockMask` straight to `flex_attention`. So the mask is built once per batch from
the span table, never per layer, and never widened to a dense float mask. The `eager` implementation is
refused: it adds the mask to the scores, which is wrong for a bool mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention.flex_attention import BlockMask
from transformers import Qwen2Config, Qwen2ForCausalLM

from tokenization.vocab import UnifiedVocab
from ttt_common.config_tools import reject_unknown_keys
from ttt_model.core.attention import build_attention
from ttt_model.core.checkpoint_layout import MANIFEST_FILE
from ttt_model.core.collator import PackedBatch
from ttt_model.core.model_checkpoint import load_checkpoint

# attn_implementation (transformers name) -> mask kind that ttt_model.core.attention.build_attention makes for it.
BACKENDS = {"sdpa": "sdpa", "flex_attention": "flex"}
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}
# Architecture keys compared between a preset and a pretrained checkpoint, so `model=qwen2.5-3b` pointed at
# a 1.5B directory fails loudly instead of training the wrong model.
_SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
_CONFIG_KEYS = frozenset(Qwen2Config.__dataclass_fields__) | {"rope_theta"}  # rope_theta: legacy spelling, accepted
_TOP_KEYS = frozenset({"name", "init", "path", "config", "attn_implementation", "dtype", "seed", "new_rows"})
_NEW_ROW_KEYS = frozenset({"audio_noise", "special_noise"})


def build_model(model_cfg: Mapping[str, Any], vocab: UnifiedVocab,
                device: str | torch.device | None = None) -> Qwen2ForCausalLM:
    """Build the TtT model described by `model_cfg` (a `workflows/conf/model/*.yaml` group) for `vocab`.

    Keys:
      init: "random" (the `config` architecture with fresh weights) | "pretrained" (weights from `path`).
      path: for init=pretrained: a Qwen2/2.5 checkpoint directory in Hugging Face layout (config.json +
        safetensors), or a TtT checkpoint written by `save_checkpoint` (recognised by its vocab manifest,
        which must match `vocab`; its rows are already trained and are loaded as they are).
      config: Qwen2Config keyword arguments (init=random); with init=pretrained its shape keys, when given,
        must agree with the checkpoint.
      attn_implementation: "auto" (flex_attention on CUDA, sdpa elsewhere) | "sdpa" | "flex_attention".
      dtype: parameter dtype ("float32" default, "bfloat16", "float16").
      seed: seed of every random draw made here (init of fresh weights or of new rows), drawn from a forked
        RNG so the build is reproducible and the caller's RNG state is untouched.
      new_rows: {audio_noise, special_noise}, see `init_new_rows`.

    The embedding (and an untied LM head) always ends with `vocab.padded_size()` rows. Random init: every row
    comes from the model's own initialiser (N(0, initializer_range)); there is no pretrained knowledge to keep.
    Pretrained base LLM: rows from `vocab.text_vocab_size` on (our span markers, the mask token, the audio
    codes, layout gaps and round-up padding) are (re)initialised by `init_new_rows`; the checkpoint's own
    rows past the tokenizer (Qwen pads its matrix to 151,936 rows with untrained entries) are not trusted.
    A checkpoint in the reference layout (`data.vocab_layout=reference`, at least that vocabulary's rows, and
    `data.text_tokenizer` its own tokenizer: the reference's released TtT checkpoints) keeps every row of the
    vocabulary; only the round-up padding is new (`_trained_rows`).
    """
    cfg = _plain(model_cfg)
    reject_unknown_keys(cfg, _TOP_KEYS, "model")  # a misspelt option would otherwise be silently ignored
    reject_unknown_keys(cfg.get("new_rows") or {}, _NEW_ROW_KEYS, "model.new_rows")
    init = cfg.get("init", "random")
    impl = resolve_attn_implementation(cfg.get("attn_implementation", "auto"), device)
    dtype = _dtype(cfg.get("dtype", "float32"))
    arch = dict(cfg.get("config") or {})
    reject_unknown_keys(arch, _CONFIG_KEYS, "model.config (Qwen2Config)", list_known=False)
    with torch.random.fork_rng(devices=[]):  # weights are drawn on the CPU; only its generator is seeded
        torch.default_generator.manual_seed(int(cfg.get("seed", 0)))
        if init == "random":
            model = _random_model(arch, vocab, impl, dtype)
        elif init == "pretrained":
            model = _pretrained_model(cfg, arch, vocab, impl, dtype)
        else:
            raise ValueError(f"model.init must be 'random' or 'pretrained', got {init!r}")
    _check_full_attention(model.config)
    return model.to(device) if device is not None else model


def resolve_attn_implementation(requested: str, device: str | torch.device | None) -> str:
    """"auto" -> flex_attention on CUDA (block-sparse kernels, skips fully masked tiles) and sdpa elsewhere
    (FlexAttention has no CPU backward, and its CPU forward needs a long inductor compile)."""
    if requested == "auto":
        return "flex_attention" if device is not None and torch.device(device).type == "cuda" else "sdpa"
    if requested not in BACKENDS:
        raise ValueError(f"attn_implementation must be auto|{'|'.join(BACKENDS)}, got {requested!r}")
    return requested


def attention_backend(model: Qwen2ForCausalLM) -> str:
    """The `build_attention` backend ("sdpa" | "flex") matching the model's attention implementation."""
    impl = model.config._attn_implementation
    if impl not in BACKENDS:
        raise ValueError(f"model uses attn_implementation={impl!r}; TtT masks need one of {sorted(BACKENDS)}")
    return BACKENDS[impl]


def forward_hidden(model: Qwen2ForCausalLM, batch: PackedBatch, backend: str | None = None) -> torch.Tensor:
    """Last hidden states [B, L, H] of a packed batch under the modality-aware mask.

    Position ids come from the batch (they restart at 0 for every packed sample, so RoPE sees each sample
    as if it were alone); the mask comes from `build_attention(batch, backend)` and is handed to every layer
    as is (see the module docstring). `backend` defaults to the model's own; a mismatch is an error because
    a bool tensor reaching flex_attention (or a BlockMask reaching sdpa) would be misread.
    """
    own = attention_backend(model)
    if backend is not None and backend != own:
        raise ValueError(f"mask backend {backend!r} does not match the model's attention ({own!r})")
    batch = batch.to(model.device)
    return forward_masked(model, batch.input_ids, batch.position_ids, build_attention(batch, own))


def forward_masked(model: Qwen2ForCausalLM, input_ids: torch.Tensor, position_ids: torch.Tensor,
                   mask: torch.Tensor | BlockMask, cache: Any = None) -> torch.Tensor:
    """Last hidden states [B, L, H] of the transformer (no LM head) with our own `mask` handed to every layer as
    is (the dict hand-off in the module docstring) and explicit `position_ids`. Training (`forward_hidden`), the
    sampler's KV-cache backend and its full-recompute oracle all run the model through it. `cache`: an object with
    the `Cache.update` method that this pass's keys/values go to (ttt_model/decoding/kv_cache.py `RaggedKVCache`);
    None runs without a cache.
    """
    extra: dict[str, Any] = {"use_cache": False} if cache is None else {"cache": cache, "use_cache": True}
    out = model.model(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=dict.fromkeys(model.config.layer_types, mask),
        **extra,
    )
    return out.last_hidden_state


def lm_head_weight(model: Qwen2ForCausalLM) -> torch.Tensor:
    """The [V_padded, H] output projection (the embedding itself when tied), for `hybrid_loss_sums`."""
    return model.get_output_embeddings().weight


@torch.no_grad()
def init_new_rows(weight: torch.Tensor, vocab: UnifiedVocab, n_trained: int, audio_noise: float = 0.1,
                  special_noise: float = 1.0) -> None:
    """Initialise rows [n_trained, len(weight)) of an embedding/head matrix whose first `n_trained` rows are
    pretrained, in place: row = mu + s * sigma * z, with mu, sigma the per-dimension mean and standard
    deviation of the trained rows and z ~ N(0, I).

    - Audio codes, s = `audio_noise` (0.1): close to the mean embedding, as Hugging Face's `mean_resizing`
      does (Hewitt, "Initializing new word embeddings"). Through the (tied) head a new token's logit is then
      about the average text logit, so 16k new tokens barely move the pretrained text distribution at step 0;
      the small noise makes codes distinct directions from the start, breaking their symmetry.
    - Our span markers and the mask token, s = `special_noise` (1.0): each a typical-looking token, far from
      the audio cluster and from each other. They are control signals (a span opens, this position is
      masked), so the network must tell [M] from every code at the very first step.
    - Anything else (layout gaps, round-up padding): exactly mu. Never an input and never a target; the loss
      pushes their logits down.
    """
    n_rows, _ = weight.shape
    if n_rows <= n_trained:
        return
    var, mean = torch.var_mean(weight[:n_trained].float(), dim=0)
    std = var.sqrt()
    ids = torch.arange(n_trained, n_rows)
    scale = torch.zeros(n_rows - n_trained)
    scale[torch.from_numpy(vocab.is_audio(ids.numpy()))] = audio_noise
    specials = torch.tensor(sorted(vocab.specials.values()))
    scale[torch.isin(ids, specials)] = special_noise
    noise = torch.randn(n_rows - n_trained, weight.shape[1])
    weight[n_trained:] = (mean + noise * std * scale[:, None]).to(device=weight.device, dtype=weight.dtype)


def _random_model(arch: Mapping[str, Any], vocab: UnifiedVocab, impl: str, dtype: torch.dtype) -> Qwen2ForCausalLM:
    if not arch:
        raise ValueError("model.init=random needs a `config` block (Qwen2Config keyword arguments)")
    config = Qwen2Config(**{**arch, "vocab_size": vocab.padded_size(), "pad_token_id": None,
                            "eos_token_id": vocab.eos_id, "bos_token_id": None})
    return Qwen2ForCausalLM._from_config(config, attn_implementation=impl, dtype=dtype)


def _pretrained_model(cfg: Mapping[str, Any], arch: Mapping[str, Any], vocab: UnifiedVocab, impl: str,
                      dtype: torch.dtype) -> Qwen2ForCausalLM:
    if not cfg.get("path"):
        raise ValueError("model.init=pretrained needs model.path (a local checkpoint directory)")
    path = Path(cfg["path"]).expanduser()
    if (path / MANIFEST_FILE).is_file():
        model, _ = load_checkpoint(path, vocab.manifest(), attn_implementation=impl, dtype=dtype)
        _check_shape(model.config, arch, path)
        return model
    model = Qwen2ForCausalLM.from_pretrained(path, local_files_only=True, attn_implementation=impl, dtype=dtype)
    _check_shape(model.config, arch, path)
    n_trained = _trained_rows(model, vocab, path)
    if model.get_input_embeddings().weight.shape[0] < n_trained:
        raise ValueError(f"{path}: embedding has {model.get_input_embeddings().weight.shape[0]} rows, fewer than "
                         f"the text tokenizer's {n_trained} ids; is this the checkpoint of that tokenizer?")
    if vocab.text.base_ids:
        _select_text_rows(model, vocab.text.base_ids)
    model.resize_token_embeddings(vocab.padded_size(), mean_resizing=False)
    rows = cfg.get("new_rows") or {}
    heads = [model.get_input_embeddings().weight]
    if not model.config.tie_word_embeddings:
        heads.append(model.get_output_embeddings().weight)
    for weight in heads:
        init_new_rows(weight, vocab, n_trained, float(rows.get("audio_noise", 0.1)),
                      float(rows.get("special_noise", 1.0)))
    model.config.eos_token_id = vocab.eos_id
    return model


def _trained_rows(model: Qwen2ForCausalLM, vocab: UnifiedVocab, path: Path) -> int:
    """How many leading embedding rows of a checkpoint without our manifest already mean what `vocab` says: the
    text ids of a Qwen2/2.5 base, or every id of a checkpoint in the reference layout (the reference's released
    TtT checkpoints, with trained rows for the span markers, the mask and all 16,384 audio codes: initialising
    those afresh would throw away the model's speech)."""
    rows = model.get_input_embeddings().weight.shape[0]
    if vocab.layout != "reference" or rows < vocab.size:
        return vocab.text_vocab_size
    if vocab.text.token_to_id("<|audio_0|>") is None:
        raise ValueError(f"{path} has {rows} embedding rows, the shape of a checkpoint in the reference layout, but "
                         f"the text tokenizer ({vocab.text.name}) does not define the reference's audio tokens, so "
                         f"its marker ids would be guesses: set data.text_tokenizer={path} (the checkpoint's own "
                         "tokenizer)")
    return vocab.size


def _select_text_rows(model: Qwen2ForCausalLM, base_ids: tuple[int, ...]) -> None:
    """A corpus-sized text vocabulary (tokenization.text_subset): row i becomes the pretrained row of base id
    base_ids[i], so every kept token keeps its pretrained embedding (and output row when untied)."""
    index = torch.tensor(base_ids, dtype=torch.long)
    rows = [model.get_input_embeddings().weight.detach()[index].clone()]
    if not model.config.tie_word_embeddings:
        rows.append(model.get_output_embeddings().weight.detach()[index].clone())
    model.resize_token_embeddings(len(base_ids), mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(rows[0])
        if len(rows) > 1:
            model.get_output_embeddings().weight.copy_(rows[1])


def _check_shape(config: Qwen2Config, arch: Mapping[str, Any], path: Path) -> None:
    diffs = [f"{k}: preset {arch[k]} != checkpoint {getattr(config, k)}"
             for k in _SHAPE_KEYS if k in arch and arch[k] != getattr(config, k)]
    if diffs:
        raise ValueError(f"{path} does not have the configured architecture: {'; '.join(diffs)}")


def _check_full_attention(config: Qwen2Config) -> None:
    """Our mask has no sliding window: refuse configs whose layers would expect one."""
    if any(t != "full_attention" for t in config.layer_types):
        raise ValueError(f"sliding-window layers are not supported (layer_types={sorted(set(config.layer_types))}); "
                         "set use_sliding_window: false")


def _dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in _DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def _plain(cfg: Any) -> Any:
    """Mappings/sequences (OmegaConf containers included) -> plain dicts/lists, so Qwen2Config gets plain values."""
    if isinstance(cfg, Mapping):
        return {str(k): _plain(v) for k, v in cfg.items()}
    if isinstance(cfg, Sequence) and not isinstance(cfg, str | bytes):
        return [_plain(v) for v in cfg]
    return cfg
