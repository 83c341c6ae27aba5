"""The unified vocabulary V = V_text ∪ V_audio ∪ S and its manifest.

Layouts:
- "compact" (default): text ids [0, T) as the tokenizer defines them, then our specials, then one token
  per codec code. Works for any codec size.
- "reference": reproduces the TtT reference checkpoint's ids (docs/paper-to-code.md): <|audio|>=151684, codes
  151685..168068, <|mask_token|>=168069, <|end_of_audio_new|>=168070, <|end_of_audio_span_last|>=168071.
  Requires a 16,384-code codec. Marker ids come from the tokenizer when it defines them (the reference
  checkpoint's tokenizer does); for a plain Qwen tokenizer the span-open/user-close markers, whose ids the
  paper does not publish, go to the free slots 151669.. in a fixed order.

The manifest is the contract between shards, checkpoints and the sampler: anything that changes what an
id means (tokenizer file, codec identity, layout, special ids) changes the manifest, and
`check_compatible` refuses to mix them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenization.codecs.base import DECLARED, CodecIdentity
from tokenization.text import TextTokenizer

MANIFEST_FORMAT = 1

# Our span markers, named after the reference implementation's tokens (docs/paper-to-code.md).
SOA = "<|begin_of_audio|>"  # opens user audio and non-final generated spans
SOA_FINAL = "<|begin_of_quad|>"  # opens the final, variable-length span of a turn
EOA_USER = "<|end_of_audio|>"  # closes user (prompt) audio
EOA = "<|end_of_audio_new|>"  # closes a generated non-final span
EOA_FINAL = "<|end_of_audio_span_last|>"  # closes the final span of a turn
MASK = "<|mask_token|>"
AUDIO_TAG = "<|audio|>"
# Qwen chat specials (present in every Qwen2/2.5/3 tokenizer).
IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

OUR_SPECIALS = (SOA, SOA_FINAL, EOA_USER, EOA, EOA_FINAL, MASK, AUDIO_TAG)
OPENERS = (SOA, SOA_FINAL)
CLOSERS = (EOA_USER, EOA, EOA_FINAL)
AUDIO_TOKEN_RE = re.compile(r"<\|audio_(\d+)\|>")
# Any `<|name|>` inline token: a marker outside the vocabulary must fail, not pass as literal text.
_SPECIAL_RE = re.compile(r"(<\|audio_\d+\|>|<\|[A-Za-z0-9_]+\|>)")

_REFERENCE_IDS = {
    SOA: 151669, SOA_FINAL: 151670, EOA_USER: 151671, AUDIO_TAG: 151684,
    MASK: 168069, EOA: 168070, EOA_FINAL: 168071,
}
_REFERENCE_AUDIO_OFFSET, _REFERENCE_CODEBOOK, _REFERENCE_SIZE = 151685, 16384, 168072


class VocabMismatchError(ValueError):
    """Shards, checkpoint or sampler disagree about what token ids mean."""


@dataclass(frozen=True)
class Segment:
    """A decoded piece of a sequence: text, an audio-code run, or one special token."""

    kind: str  # "text" | "audio" | "special"
    text: str = ""
    codes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


class UnifiedVocab:
    """Maps text, audio codes and span markers to one id space, and back."""

    def __init__(self, text: TextTokenizer, codec: CodecIdentity, layout: str = "compact") -> None:
        self.text = text
        self.codec = codec
        self.layout = layout
        t = text.vocab_size
        qwen = {tok: text.token_to_id(tok) for tok in (IM_START, IM_END, ENDOFTEXT)}
        missing = [k for k, v in qwen.items() if v is None]
        if missing:
            raise VocabMismatchError(f"text tokenizer {text.name} lacks Qwen chat tokens {missing}")
        ours: dict[str, int]
        if layout == "compact":
            ours = {tok: t + i for i, tok in enumerate(OUR_SPECIALS)}
            self.audio_offset = t + len(OUR_SPECIALS)
            self.size = self.audio_offset + codec.codebook_size
        elif layout == "reference":
            ours = self._reference_ids(text, codec)
            self.audio_offset, self.size = _REFERENCE_AUDIO_OFFSET, _REFERENCE_SIZE
            t = min(t, _REFERENCE_AUDIO_OFFSET)  # a reference tokenizer lists the audio codes as added tokens
        else:
            raise ValueError(f"unknown vocabulary layout {layout!r} (compact | reference)")
        self.specials: dict[str, int] = {**{k: int(v) for k, v in qwen.items()}, **ours}
        self._by_id = {v: k for k, v in self.specials.items()}
        self.text_vocab_size = t
        self.codebook_size = codec.codebook_size

    @staticmethod
    def _reference_ids(text: TextTokenizer, codec: CodecIdentity) -> dict[str, int]:
        """Ids of our markers in the reference layout.

        A tokenizer that defines a marker (the reference checkpoint's own tokenizer directory does) is
        authoritative for its id; the defaults fill in only for tokenizers that lack it (plain Qwen). Either
        way the audio codes must sit at 151685.. and nothing may collide with a text token.
        """
        if codec.codebook_size != _REFERENCE_CODEBOOK:
            raise VocabMismatchError(
                f"reference layout needs a {_REFERENCE_CODEBOOK}-code codec, got {codec.codebook_size}"
            )
        first_code = text.token_to_id("<|audio_0|>")
        if first_code is not None and first_code != _REFERENCE_AUDIO_OFFSET:
            raise VocabMismatchError(f"tokenizer puts <|audio_0|> at {first_code}, reference layout needs 151685")
        ours: dict[str, int] = {}
        for tok, default in _REFERENCE_IDS.items():
            defined = text.token_to_id(tok)
            if defined is not None:
                ours[tok] = int(defined)
                continue
            taken = text.tokenizer.id_to_token(default)
            if taken is not None:
                raise VocabMismatchError(f"reference layout: id {default} for {tok} is the tokenizer's {taken!r}")
            ours[tok] = default
        ids = list(ours.values())
        if len(set(ids)) != len(ids) or any(
            _REFERENCE_AUDIO_OFFSET <= i < _REFERENCE_AUDIO_OFFSET + _REFERENCE_CODEBOOK for i in ids
        ):
            raise VocabMismatchError(f"reference layout: marker ids collide: {ours}")
        return ours

    # ---- ids of the roles the model and sampler care about -------------------------------------
    @property
    def mask_id(self) -> int:
        return self.specials[MASK]

    @property
    def pad_id(self) -> int:
        return self.specials[ENDOFTEXT]

    @property
    def eos_id(self) -> int:
        return self.specials[IM_END]

    def id(self, token: str) -> int:
        return self.specials[token]

    def opener_ids(self) -> tuple[int, int]:
        return self.specials[SOA], self.specials[SOA_FINAL]

    def closer_ids(self) -> tuple[int, int, int]:
        return self.specials[EOA_USER], self.specials[EOA], self.specials[EOA_FINAL]

    def padded_size(self, multiple: int = 64) -> int:
        """Embedding rows to allocate: the vocabulary rounded up for efficient matmuls."""
        return -(-self.size // multiple) * multiple

    # ---- encoding -------------------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        return self.text.encode(text)

    def audio_ids(self, codes: Iterable[int] | np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"audio codes out of range [0, {self.codebook_size})")
        return codes + self.audio_offset

    def is_audio(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        return (ids >= self.audio_offset) & (ids < self.audio_offset + self.codebook_size)

    def encode_mixed(self, s: str) -> list[int]:
        """Text with inline special tokens and `<|audio_N|>` codes (the reference TtT format) -> ids.

        Raises ValueError on unknown `<|...|>` tokens or out-of-range codes, naming the token and where it
        is, so imported data is validated against this vocabulary rather than silently re-tokenized (the
        tokenize job quarantines the record with that message).
        """
        out: list[int] = []
        at = 0
        for piece in _SPECIAL_RE.split(s):
            if not piece:
                continue
            m = AUDIO_TOKEN_RE.fullmatch(piece)
            if m:
                code = int(m.group(1))
                if code >= self.codebook_size:
                    raise ValueError(f"audio token {piece} at character {at} is out of range: codec "
                                     f"{self.codec.name} has {self.codebook_size} codes (<|audio_0|> .. "
                                     f"<|audio_{self.codebook_size - 1}|>)")
                out.append(self.audio_offset + code)
            elif piece in self.specials:
                out.append(self.specials[piece])
            elif piece.startswith("<|") and piece.endswith("|>") and self.text.token_to_id(piece) is not None:
                out.append(int(self.text.token_to_id(piece)))
            elif _SPECIAL_RE.fullmatch(piece):
                raise ValueError(f"unknown special token {piece!r} at character {at} (not in this vocabulary; span "
                                 f"markers are {', '.join((*OPENERS, *CLOSERS))})")
            else:
                out.extend(self.encode_text(piece))
            at += len(piece)
        return out

    # ---- decoding -------------------------------------------------------------------------------
    def segments(self, ids: Iterable[int]) -> list[Segment]:
        """ids -> [text | audio codes | special] runs; the inverse of building a sequence."""
        out: list[Segment] = []
        text_run: list[int] = []
        audio_run: list[int] = []

        def flush() -> None:
            if text_run:
                out.append(Segment("text", text=self.text.decode(text_run)))
                text_run.clear()
            if audio_run:
                out.append(Segment("audio", codes=np.asarray(audio_run, dtype=np.int64) - self.audio_offset))
                audio_run.clear()

        for i in (int(x) for x in ids):
            if self.audio_offset <= i < self.audio_offset + self.codebook_size:
                if text_run:
                    flush()
                audio_run.append(i)
            elif i in self._by_id:
                flush()
                out.append(Segment("special", text=self._by_id[i]))
            elif 0 <= i < self.text_vocab_size:
                if audio_run:
                    flush()
                text_run.append(i)
            else:
                raise ValueError(f"id {i} outside the vocabulary (size {self.size})")
        flush()
        return out

    def to_mixed_string(self, ids: Iterable[int]) -> str:
        """ids -> the reference's inline string format (text, specials, `<|audio_N|>`)."""
        parts = []
        for seg in self.segments(ids):
            if seg.kind == "audio":
                parts.append("".join(f"<|audio_{c}|>" for c in seg.codes.tolist()))
            else:
                parts.append(seg.text)
        return "".join(parts)

    # ---- manifest -------------------------------------------------------------------------------
    def _text_entry(self) -> dict[str, Any]:
        """The text tokenizer's identity; a corpus subset also records its base and the id mapping, which is
        all that `text_subset.from_manifest_entry` needs to rebuild it from the base tokenizer."""
        entry: dict[str, Any] = {"name": self.text.name, "sha256": self.text.sha256,
                                 "vocab_size": self.text_vocab_size}
        if self.text.base_ids:
            entry.update(base_sha256=self.text.base_sha256, base_ids=list(self.text.base_ids))
        return entry

    def manifest(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "layout": self.layout,
            "text_tokenizer": self._text_entry(),
            "codec": self.codec.to_dict(),
            "audio_offset": self.audio_offset,
            "codebook_size": self.codebook_size,
            "vocab_size": self.size,
            "special_tokens": dict(sorted(self.specials.items(), key=lambda kv: kv[1])),
        }


# Fields whose difference changes the meaning of ids (names are informational only).
_IDENTITY_KEYS = ("format", "layout", "audio_offset", "codebook_size", "vocab_size", "special_tokens")
_CODEC_KEYS = ("name", "version", "token_rate", "codebook_size", "params_hash")
# A declared identity (pre-coded data, no weights: tokenization/codecs/declared.py) matches a real codec on these:
# it knows neither our encode procedure's version nor the weights' hash, only what the codes are.
_DECLARED_CODEC_KEYS = ("name", "token_rate", "codebook_size", "sample_rate", "output_sample_rate")


def check_compatible(ours: Mapping[str, Any], theirs: Mapping[str, Any], what: str = "shards") -> None:
    """Raise VocabMismatchError naming every field where two manifests disagree.

    When exactly one side's codec identity is declared (`params_hash: declared`), the codecs are compared on
    name, codebook size and rates only: a model trained on pre-coded data runs with the real codec, whose
    weights' hash the caller's manifest then records."""
    diffs = [k for k in _IDENTITY_KEYS if ours.get(k) != theirs.get(k)]
    if ours.get("text_tokenizer", {}).get("sha256") != theirs.get("text_tokenizer", {}).get("sha256"):
        diffs.append("text_tokenizer.sha256")
    oc, tc = dict(ours.get("codec", {})), dict(theirs.get("codec", {}))
    one_declared = (oc.get("params_hash") == DECLARED) != (tc.get("params_hash") == DECLARED)
    diffs += [f"codec.{k}" for k in (_DECLARED_CODEC_KEYS if one_declared else _CODEC_KEYS)
              if oc.get(k) != tc.get(k)]
    if diffs:
        detail = "; ".join(f"{k}: {_get(ours, k)!r} != {_get(theirs, k)!r}" for k in diffs)
        raise VocabMismatchError(f"vocabulary manifest of {what} does not match: {detail}")


def _get(m: Mapping[str, Any], dotted: str) -> Any:
    cur: Any = m
    for part in dotted.split("."):
        cur = cur.get(part) if isinstance(cur, Mapping) else None
    return cur


def write_manifest(manifest: Mapping[str, Any], path: str | Path, **extra: Any) -> None:
    """Write a manifest (plus extra sections such as per-source counts) as stable, sorted JSON."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({**manifest, **extra}, indent=2, sort_keys=True) + "\n")


def read_manifest(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"vocabulary manifest not found: {p}")
    return json.loads(p.read_text())
