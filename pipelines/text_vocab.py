"""`data.text_vocab: corpus`: the text vocabulary sized to the configured sources.

Before the tokenize job builds anything it needs the final vocabulary (ids are written into the shards), so
this is a separate, cheap pass: every source's reader yields its rows (text and metadata only; no audio is
decoded), and every string that can become training text is collected — transcripts, chat contents,
metadata such as answers and labels, plus the task builders' prompts and the chat template's role headers.
The pass runs on the driver: it is meant for corpora of up to about a million records (the embedded default
reads a few thousand in well under a second); a production run keeps the whole Qwen vocabulary
(`data.text_vocab: full`), as a pretrained checkpoint needs.

Nothing is lost by collecting too little: the subset keeps all 256 byte tokens, so a string this pass missed
still encodes exactly (only in more tokens). Collecting too much only keeps a few more rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pipelines.records import SourceConfig
from pipelines.tasks import PROMPTS
from tokenization.text import TextTokenizer
from tokenization.text_subset import corpus_subset

TEXT_VOCABS = ("full", "corpus")
# Text the chat template writes around every turn (tokenization.sequence.build_chat).
TEMPLATE_TEXTS = ("system\n", "user\n", "assistant\n", "\n")


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a JSON value (metadata holds answers, aliases and labels at any depth)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def _row_texts(row: Mapping[str, Any]) -> Iterator[str]:
    """A row's strings; its text also inside every TTS prompt, because BPE merges across the seam (" GO"
    after "Read this aloud:" is one token, "GO" alone another; a CJK text merges with a full-width colon)."""
    if row.get("text"):
        text = str(row["text"])
        yield text
        for options in PROMPTS["tts"].values():
            for prompt in options:
                yield prompt.format(text=text)
    for key in ("messages_json", "meta_json"):
        raw = row.get(key)
        if raw:
            try:
                yield from _strings(json.loads(raw))
            except json.JSONDecodeError:  # the job quarantines the row; it contributes no text
                continue


def corpus_texts(sources: Sequence[SourceConfig]) -> Iterator[str]:
    """The template and prompt texts, then every text-bearing field of every row of every source. A unit
    whose reader fails is skipped here; the job itself quarantines it."""
    from pipelines.readers import get_reader

    yield from TEMPLATE_TEXTS
    for by_language in PROMPTS.values():
        for options in by_language.values():
            for prompt in options:
                yield prompt.replace("{text}", "")
    for source in sources:
        reader = get_reader(source.kind)
        for unit in reader.units(source):
            try:
                for row in reader.read(source, unit):
                    yield from _row_texts(row)
            except Exception:  # a broken unit must not stop vocabulary building
                continue


def corpus_text_tokenizer(base: TextTokenizer, sources: Sequence[SourceConfig]) -> TextTokenizer:
    """The subset of `base` the sources use (tokenization.text_subset)."""
    return corpus_subset(base, corpus_texts(sources))


__all__ = ["TEMPLATE_TEXTS", "TEXT_VOCABS", "corpus_text_tokenizer", "corpus_texts"]
