"""Evaluation: ASR models that listen to generated speech, error rates, answer judges, the Ray Data eval sweep
and the run report.

Modules (imported on demand, so a judge-only process never loads Whisper, torch or Ray):
    asr         `Transcriber` behind one interface (faster-whisper, transformers Whisper, Paraformer-zh)
    metrics     text normalisation + corpus-level WER/CER with S/D/I counts and a bootstrap interval
    judges      rule-based alias judge and the OpenAI-compatible LLM judge (per-subset templates)
    llm_client  the HTTP client the LLM judge uses (retries with backoff + jitter, key from the environment)
    items       eval sets (any corpus layout, through the readers) -> one Arrow table of items per task
    stages      the generate / transcribe / judge Ray Data stages (actor pools)
    jobs        the sweep: checkpoints x sampler settings -> per-item Parquet, results.json, table.json
    table       the paper's Table 1 shape from per-run results
    report      Markdown + HTML report built from result files only
"""
