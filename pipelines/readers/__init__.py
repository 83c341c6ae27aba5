"""Corpus readers: every supported corpus in its native layout -> `RawRow` dicts (pipelines/records.py).

The tokenize job looks a reader up by the source's `kind`, calls `validate` and `units` on the driver,
and `read(source, unit)` in parallel tasks. Readers are stateless module-level objects, so they pickle
into Ray tasks as plain references.
"""

from __future__ import annotations

from pipelines.readers.aishell import Aishell1Reader, Aishell2Reader
from pipelines.readers.commonvoice import CommonVoiceReader
from pipelines.readers.fleurs import FleursReader
from pipelines.readers.gigaspeech import GigaSpeechReader
from pipelines.readers.hf_parquet import HfParquetReader
from pipelines.readers.lhotse import LhotseReader
from pipelines.readers.librispeech import LibriSpeechReader
from pipelines.readers.sharegpt import ShareGptReader
from pipelines.readers.spoken_qa import SpokenQaReader
from pipelines.readers.ttt_json import TttJsonReader
from pipelines.readers.wenetspeech import WenetSpeechReader
from pipelines.records import CorpusReader

READERS: dict[str, CorpusReader] = {
    r.kind: r
    for r in (
        LibriSpeechReader(), CommonVoiceReader(), Aishell1Reader(), Aishell2Reader(), WenetSpeechReader(),
        GigaSpeechReader(), FleursReader(), HfParquetReader(), LhotseReader(), ShareGptReader(), TttJsonReader(),
        SpokenQaReader(),
    )
}


def get_reader(kind: str) -> CorpusReader:
    """The reader for a source kind; ValueError listing the known kinds for a typo'd config."""
    try:
        return READERS[kind]
    except KeyError:
        raise ValueError(f"unknown corpus kind {kind!r}; known kinds: {', '.join(sorted(READERS))}") from None


__all__ = ["READERS", "get_reader"]
