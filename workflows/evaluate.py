"""Evaluation sweeps on Ray Data: checkpoints x sampler settings -> a Table-1-shaped table (pipelines/eval/jobs.py).

    python workflows/evaluate.py                                   # eval=embedded: CPU, Whisper tiny.en, rule judge
    python workflows/evaluate.py eval=production                   # GPUs, Whisper-large-v3 + Paraformer, LLM judge
    python workflows/evaluate.py 'eval.grid.samplers=[{},{steps_per_block: 4},{threshold: 0.9}]'
    python workflows/evaluate.py force=true                        # re-evaluate runs that are up to date

Writes {paths.eval}/<run>/items/*.parquet (every item's outputs, status and errors), <run>/results.json, and
{paths.eval}/table.json + table.md. Runs already evaluated with the same checkpoint and settings are reused.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from pipelines.console import setup_console
from pipelines.eval.jobs import EvalConfigError, run_evaluation


def run(cfg: DictConfig) -> dict:
    """The whole sweep for a composed root config; returns the table written to {paths.eval}/table.json."""
    return run_evaluation(OmegaConf.to_container(cfg, resolve=True))


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    setup_console(cfg, "evaluate")
    try:
        run(cfg)
    except (EvalConfigError, FileNotFoundError) as e:  # config or missing-input mistakes: say what to fix
        print(f"evaluate: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
