"""Make the raw corpora of the embedded default: synthetic speech in native corpus layouts, chat and document
text, spoken QA sets, then fit the embedded codec on the synthesised audio (pipelines/synthetic/prepare.py).

    python workflows/prepare_data.py                       # embedded size, outputs under runs/local/raw
    python workflows/prepare_data.py prepare=small paths.root=/nfs/ttt/run1
    python workflows/prepare_data.py force=true            # redo although prepared.json says it is done

Re-running with the same config is a no-op (the raw dir's prepared.json records the config hash).
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from pipelines.console import setup_console
from pipelines.synthetic.prepare import prepare_from_config

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    """The whole preparation for a composed root config; returns the `prepared.json` content."""
    marker = prepare_from_config(cfg)
    corpora = marker["corpora"]
    log.info("raw corpora in %s: %s", cfg.paths.raw, ", ".join(s["source"]["name"] for s in corpora["sources"]))
    if "codec" in marker:
        log.info("embedded codec in %s", marker["codec"]["path"])
    return marker


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    setup_console(cfg, "prepare_data")
    run(cfg)


if __name__ == "__main__":
    main()
