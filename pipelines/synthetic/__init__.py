"""Offline synthetic corpora for the embedded default: real (synthesised) speech without a network.

The embedded run needs ASR/TTS corpora, chat data and spoken QA sets on a machine that can download
nothing, so they are generated here and written in the native layouts of LibriSpeech, Common Voice,
AISHELL-2, lhotse, OpenAudioBench and OpenHermes; the tokenize job then reads them with the same readers
as the real corpora. Modules: `facts` (tables), `textgen` (text, held-out split), `synthesis` (voices ->
audio files, in parallel), `layouts` (native layouts), `prepare` (the whole step, idempotent).
Entry point: `python workflows/prepare_data.py`.
"""
