"""The `ttt` console script: small user-facing commands over the pipelines and models.

Each sub-command lives in its own module exposing `add_parser(subparsers)`; the parser it registers
sets `func` (called with the parsed args, returning an exit code). Modules import their heavy
dependencies inside `func`, so `ttt --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

SUBCOMMAND_MODULES = ("workflows.cli_codec", "workflows.cli_query", "workflows.cli_generate", "workflows.cli_reference")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttt", description="TtT speech-text LM tools")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
