"""`ttt reference`: the reference implementation's (ai4ed/TtT) data formats (pipelines/reference_format.py).

    ttt reference sources data_config/data_config_TtT.json > sources.yaml
        its data_config as our sources list (what data.sources_file=data_config_TtT.json uses directly), to
        edit before use, e.g. to set `task:` per file
    ttt reference export --shards runs/ttt_ref/shards --out runs/ttt_ref/reference_json
    ttt reference export --where "task = 'asr' AND copy = 0" --out asr_json
        shards back to the reference's JSON (one file per source, `<|audio_N|>` inline) plus data_config.json,
        for its trainer: python train_TtT.py --data_path <out>/data_config.json ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "reference", help="the reference implementation's data: its data_config as sources, shards back to its JSON",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="reference_command", required=True)
    src = sub.add_parser("sources", help="print a data_config JSON as our sources YAML")
    src.add_argument("data_config", help="the reference's data_config JSON ([{path, sample_ratio, data_type}])")
    src.set_defaults(func=run_sources)
    exp = sub.add_parser("export", help="write shards as the reference's JSON files plus a data_config")
    exp.add_argument("--shards", metavar="DIR", help="shard directory (default: paths.shards of the Hydra config)")
    exp.add_argument("--out", metavar="DIR", required=True, help="where the JSON files and data_config.json go")
    exp.add_argument("--where", default="", help="a DuckDB predicate over the `samples` view (ttt query) selecting "
                                                 "what to export, e.g. \"task = 'asr'\"; default: every sample")
    exp.add_argument("--text-tokenizer", default="bundled:qwen",
                     help="the tokenizer the shards were made with (default: bundled Qwen)")
    exp.set_defaults(func=run_export)


def run_sources(args: argparse.Namespace) -> int:
    import json

    import yaml

    from pipelines.reference_format import is_data_config, sources_from_data_config

    path = Path(args.data_config).expanduser()
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        if not is_data_config(entries):
            raise ValueError("expected a JSON list of {path, sample_ratio, data_type} entries")
        sources = sources_from_data_config(entries, path.absolute().parent)
    except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        print(f"ttt reference sources: {path}: {e}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(sources, sort_keys=False, allow_unicode=True), end="")
    return 0


def run_export(args: argparse.Namespace) -> int:
    import duckdb

    from pipelines.reference_format import DATA_CONFIG_FILE, export_reference
    from workflows.cli_query import default_shards_dir

    shards = Path(args.shards) if args.shards else default_shards_dir()
    try:
        counts = export_reference(shards, args.out, args.where, args.text_tokenizer)
    except (OSError, ValueError, duckdb.Error) as e:  # VocabMismatchError is a ValueError
        print(f"ttt reference export: {e}", file=sys.stderr)
        return 2
    for source, n in sorted(counts.items()):
        print(f"{source}: {n} samples")
    print(f"wrote {sum(counts.values())} samples to {args.out} (data_config: {Path(args.out) / DATA_CONFIG_FILE})")
    return 0
