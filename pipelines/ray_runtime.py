"""Joining or starting Ray, the same way for every job (tokenize, train, evaluate, full_run).

One place decides how a process gets its Ray: reuse a running one (tests, notebooks, the stages of
full_run); join `address` or RAY_ADDRESS (a cluster, or the job's own cluster under `ray job submit`);
otherwise start a local one with more logical CPUs than cores, so Ray Train workers cannot starve
Ray Data's read tasks on a 2-core machine (docs/ray.md). The local dashboard stays on, bound to 127.0.0.1:
Train V2 queries its state API, and the Jobs API must never listen on a public interface. What Ray prints
goes where pipelines/console.py says (the run's log file; the console only when it matters).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)
REPO_ROOT = str(Path(__file__).resolve().parents[1])


def ensure_ray(address: str | None = None, num_cpus: int = 4, object_store_gb: float = 1.0) -> bool:
    """Connect this process to Ray; returns True when this call connected (the caller then shuts down).

    `address="local"` always starts a fresh local cluster (tests must never join a cluster on the box).
    """
    import ray

    from pipelines.console import CONSOLE, route_ray_logging, route_worker_output

    route_ray_logging()  # before ray.init, which logs through them (pipelines/console.py; a no-op when verbose)
    if ray.is_initialized():
        route_worker_output()
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        ray.init(address=address)
        route_worker_output()
        log.info("joined the Ray cluster at %s", address, extra=CONSOLE)  # which cluster a job ran on, for its logs
        return True
    pythonpath = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(address="local", num_cpus=num_cpus, object_store_memory=int(object_store_gb * (1 << 30)),
             dashboard_host="127.0.0.1", runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    route_worker_output()
    log.info("started a local Ray cluster (%d logical CPUs)", num_cpus)
    return True
