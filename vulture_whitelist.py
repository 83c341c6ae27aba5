"""Names vulture reports as unused that are used, by code vulture cannot see (tests/test_dead_code.py).

vulture (a dead-code finder) reads the packages statically; it cannot know that Ray calls a method we override,
that a library reads an attribute we set, or that a config file passes a keyword argument. Each line below
names one such symbol (an attribute access on `_` marks the name as used; nothing runs this file) with the
reason. Only true false positives belong here: code that is unused should be deleted instead. vulture matches
by name, not by place, so a name here is exempt everywhere: keep the names specific.
"""
# ruff: noqa: B018  (the lines are bare expressions on purpose)

_ = object

# Ray Data calls these on our subclasses (pipelines/console.py DatasetBar, pipelines/tokenize_stages.py
# StagingSink); the signatures are Ray's, parameters included.
_.update_operator_progress
_.resource_manager
_.close_with_finishing_description
_.min_rows_per_write

# Attributes set for a library or the interpreter to read.
_.showwarning  # warnings.showwarning = ... (pipelines/console.py): the warnings module calls it
_.mtime  # tarfile.TarInfo fields (pipelines/shards.py): written into each tar member header
_.uname
_.gname
_.encode_special_tokens  # tokenizers.Tokenizer switch (tokenization/text.py, text_subset.py)
_.eos_token_id  # model.config.eos_token_id (ttt_model/core/model.py): read by transformers' generation utils
_.preserve_order  # Ray Data execution options (workflows/train.py)
_.__spec__  # the torchaudio placeholder module (tokenization/codecs/whisper_vq.py): read by importlib
_.__getattr__

# Keyword arguments of the CosyVoice decoder classes: the released cosyvoice.yaml passes them, so the constructors
# accept them (tokenization/codecs/cosyvoice/conformer.py, flow.py), though inference does not use them.
_.use_dynamic_chunk
_.use_dynamic_left_chunk
_.positionwise_conv_kernel_size
_.cnn_module_kernel
_.cnn_module_norm
_.gradient_checkpointing
_.n_spks
_.only_mask_loss
_.decoder_conf
_.mel_feat_conf

# Fields of GLM-4-Voice's released config.json (tokenization/codecs/whisper_vq.py WhisperVQConfig): kept so the
# config round-trips unchanged, though tokenisation does not read them.
_.quantize_commit_coefficient
_.quantize_loss_scale
_.quantize_ema_decay
_.quantize_restart_interval
_.quantize_encoder_only
_.skip_language_detection

# Public API that only tests and users call (the library's own code has no caller).
_.make_random_s3_tokenizer  # tokenization/codecs/s3.py: random-weight S3 tokenizer files for tests
_.up_to_date  # pipelines/tokenize_job.py JobReport: what the run did, for callers
_.resumed_records
_.generate_stream  # ttt_model/decoding/speech_lm.py: streaming generation (README: Generation)
_.column_ids  # ttt_model/decoding/events.py LogitsContext: for user logits processors
_.text_tokens  # ttt_model/decoding/events.py DecodeStats: a decode statistic for callers (none in the repo yet)
