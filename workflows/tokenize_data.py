"""The Ray Data tokenize job: configured corpora -> Parquet + WebDataset shards (pipelines/tokenize_job.py).

    python workflows/tokenize_data.py                                # embedded corpora -> runs/local/shards
    python workflows/tokenize_data.py data.sources_file=my_sources.yaml paths.root=/nfs/ttt/run1
    python workflows/tokenize_data.py data.job.address=auto          # on a running Ray cluster (or RAY_ADDRESS)
    python workflows/tokenize_data.py force=true                     # rebuild although the shards are up to date

Re-running an interrupted job resumes it; re-running a finished one is a no-op (manifest fingerprint).

(Named `workflows/tokenize.py` before 2026-12-05: that name shadowed the standard library's `tokenize`.)
"""

from __future__ import annotations

import sys


def run(cfg: object) -> object:
    """The whole job for a composed root config; returns a JobReport (manifest, timings, resume info)."""
    from omegaconf import OmegaConf

    from pipelines.tokenize_job import run_tokenize_job

    return run_tokenize_job(OmegaConf.to_container(cfg, resolve=True))


def main() -> None:
    from pathlib import Path

    import hydra
    from omegaconf import DictConfig

    from pipelines.console import setup_console
    from pipelines.tokenize_job import JobConfigError

    @hydra.main(config_path="conf", config_name="config", version_base=None)
    def app(cfg: DictConfig) -> None:
        setup_console(cfg, "tokenize")
        try:
            run(cfg)
        except JobConfigError as e:  # a config mistake: the message says what to fix, a traceback would bury it
            hint = ""
            # the embedded corpora live under paths.raw; a sources file names its own data
            if not cfg.data.get("sources_file") and not Path(str(cfg.paths.raw)).exists():
                hint = f"\n(no {cfg.paths.raw}: `python workflows/prepare_data.py` makes the embedded corpora)"
            print(f"tokenize: {e}{hint}", file=sys.stderr)
            sys.exit(2)

    app()


if __name__ == "__main__":
    main()
