"""The whole pipeline: prepare → tokenize → train → evaluate → report.

    python workflows/full_run.py                                  # embedded default, Ray started in-process
    ray job submit --working-dir . -- python workflows/full_run.py paths.root=/nfs/ttt/run1
    python workflows/full_run.py stages=[tokenize,train] force=true

Every stage skips itself when its outputs are complete for the same config (prepare: prepared.json;
tokenize: the manifest fingerprint; train: the final checkpoint; evaluate: unchanged runs), so a rerun
after a crash redoes only what is missing; `force=true` redoes everything. Ray is joined (RAY_ADDRESS, as
under `ray job submit`) or started once here and shared by all stages. The console shows the stages, a progress
bar per long stage and actionable warnings; the full log is `<paths.root>/hydra/<time>/full_run.log`
(pipelines/console.py; `console.verbose=true` prints everything).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("full_run")
STAGES = ("prepare", "tokenize", "train", "evaluate", "report")


def _prepare(cfg: DictConfig) -> Any:
    from workflows.prepare_data import run

    return run(cfg)


def _tokenize(cfg: DictConfig) -> Any:
    from workflows.tokenize_data import run

    return run(cfg)


def _train(cfg: DictConfig) -> Any:
    from workflows.train import run

    return run(cfg)


def _evaluate(cfg: DictConfig) -> Any:
    from workflows.evaluate import run

    return run(cfg)


def _report(cfg: DictConfig) -> Any:
    from pipelines.eval.report import build_report

    sweep = cfg.get("sweep")  # the Table-1 sweep's table (workflows/sweep.py), wherever sweep.root puts it
    return build_report(OmegaConf.to_container(cfg.paths, resolve=True),
                        sweep_eval_dir=Path(str(sweep.root)).expanduser() / "eval" if sweep else None)


RUNNERS: dict[str, Callable[[DictConfig], Any]] = {
    "prepare": _prepare, "tokenize": _tokenize, "train": _train, "evaluate": _evaluate, "report": _report,
}


def selected_stages(requested: Sequence[str] | None) -> list[str]:
    """The stages to run, in pipeline order; unknown names fail before any work."""
    if not requested:
        return list(STAGES)
    unknown = sorted(set(requested) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; stages are {', '.join(STAGES)}")
    return [s for s in STAGES if s in requested]


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the selected stages in order; returns seconds per stage."""
    from pipelines.console import CONSOLE, set_stage
    from pipelines.ray_runtime import ensure_ray

    stages = selected_stages(cfg.get("stages"))
    # Under `ray job submit` the interpreter is whatever `python` the cluster's PATH gives, and the code is the
    # uploaded working_dir's copy unpacked on the node: say which ran.
    log.info("stages %s with %s, code %s", ", ".join(stages), sys.executable, Path(__file__).resolve(),
             extra=CONSOLE)
    started = ensure_ray(address=cfg.get("ray_address"))
    timings: dict[str, float] = {}
    try:
        for stage in stages:
            t0 = time.perf_counter()
            log.info("stage %s: start", stage, extra=CONSOLE)
            set_stage(stage)
            RUNNERS[stage](cfg)
            timings[stage] = round(time.perf_counter() - t0, 1)
            log.info("stage %s: done in %.1f s", stage, timings[stage], extra=CONSOLE)
    finally:
        if started:
            import ray

            ray.shutdown()
    return timings


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    from pipelines.console import setup_console

    setup_console(cfg, "full_run")
    timings = run(cfg)
    print("stage timings (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    report = Path(cfg.paths.report) / "report.md"
    if "report" in timings:
        print(f"report: {report.resolve()}")


if __name__ == "__main__":
    main()
