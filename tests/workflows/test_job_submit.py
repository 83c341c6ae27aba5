"""`ray job submit --working-dir <repo> -- python workflows/full_run.py ...` against a running cluster, the way
cluster/README.md submits runs, on a private local `ray start --head`: prepare, tokenize, a one-step train of a tiny
model (Ray Train under a job's driver) and the report.

The cluster is private to this test and never meets the session's `ray_local` (tests/conftest.py), which is alive
while it runs and is checked to still work after this cluster is stopped. Its own ports: every port `ray start` takes
by flag, and a private worker-port range (Ray's default, 10002-19999, is the one `ray_local`'s workers use). They are
consecutive ports outside the kernel's ephemeral range (where every other process's port-0 binds land) and above
Ray's default ports, each checked free by binding it; another process may still take one in the seconds before Ray
binds it, and then `ray start` exits and the head is started again on new ports. Its own --temp-dir (where Ray
records the address of "the last cluster started", which the job's driver is given), and no RAY_ADDRESS passed down.
Authentication is token mode as on the real clusters (cluster/README.md, cluster/submit.sh: RAY_AUTH_MODE=token with
RAY_AUTH_TOKEN_PATH), not the conftest's `disabled`, so the submit path under test is the one users take; the token
is fresh and lives in this test's temp dir, never in ~/.ray.
`ray stop` is never called: it has no scoping in Ray 2.60 and kills every Ray process on the machine, the
session's cluster and other test runs' clusters included. The cluster is stopped through its own process tree.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from tests.workflows.test_prepare_data import TINY

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent  # the interpreter running the tests: the repository's venv under `make test`
RAY_CLI = str(VENV_BIN / "ray")

# The embedded corpora at a few utterances each, espeak voices only (Piper's model load alone takes tens of
# seconds on 2 cores; tests/workflows/test_prepare_data.py covers it). Written as a config group file and found
# through hydra.searchpath, the way a user adds a size of their own without editing the repository.
TINY_PREPARE: dict[str, Any] = {
    **TINY,
    "textgen": {**TINY["textgen"], "heldout_fraction": 0.2, "documents_state_heldout_facts": True},
    "speakers": {"en": [{"voice": "espeak:en", "gender": "male"}, {"voice": "espeak:en", "speed": 1.1}],
                 "zh": [{"voice": "espeak:cmn"}]},
    "chat": 2,
    "documents": 1,
}
# A codec small enough to fit on seconds of audio; speech for text-only records from espeak too.
TINY_OVERRIDES = ("++codec.codebook_sizes=[16,16]", "++codec.kmeans_iterations=3", "data.tts.voice=espeak:en",
                  "data.tts.pool_size=1")
# One optimizer step of a tiny model on one Ray Train worker (tests/workflows/test_train.py's TINY_MODEL): the job
# proves Ray Train runs under a job's driver, tests/workflows/test_train.py what training computes.
TINY_TRAIN = ("model.config.hidden_size=64", "model.config.intermediate_size=128", "model.config.num_hidden_layers=2",
              "model.config.num_attention_heads=4", "model.config.num_key_value_heads=2", "train.max_steps=1",
              "train.scaling.num_workers=1", "train.batch.global_size=2", "train.batch.micro_size=1",
              "train.max_tokens=256")
STAGES = ("prepare", "tokenize", "train", "report")
PORT_FLAGS = ("--port", "--dashboard-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
              "--runtime-env-agent-port", "--ray-client-server-port", "--metrics-export-port", "--node-manager-port",
              "--object-manager-port")
WORKER_PORTS = 200  # one per live worker process (drivers, actors, tasks); far more than this cluster ever holds
# Ray's fixed defaults lie below 20000 (GCS 6379, dashboard 8265, client server 10001, workers 10002-19999), except
# the dashboard agent's 52365
LOWEST_PORT = 20000
RAY_DEFAULT_PORTS = frozenset({52365})
HEAD_START_ATTEMPTS = 3
OBJECT_STORE_BYTES = 512 * 1024 * 1024
SUBMIT_TIMEOUT_S = 120  # `ray job submit --no-wait` uploads the working_dir and returns
JOB_TIMEOUT_S = 480  # 150 s measured on 2 loaded cores; with the head's start and stop, inside pytest-timeout's 900 s
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def get_json(url: str, token: str) -> Any:
    """GET a Jobs REST endpoint as JSON (the `ray job` CLI prints Python reprs, not JSON)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@dataclass(frozen=True)
class Head:
    """A running private head node: where its Jobs API and GCS listen, and how to talk to it."""

    dashboard_url: str
    gcs_address: str
    temp_dir: Path
    token: str
    env: dict[str, str]

    def api(self, path: str) -> Any:
        return get_json(f"{self.dashboard_url}{path}", self.token)

    def job_logs(self, submission_id: str) -> str:
        return self.api(f"/api/jobs/{submission_id}/logs")["logs"]


def ephemeral_port_range() -> range:
    """The ports the kernel hands out to binds of port 0 (every Ray process's unnamed ports, ours and others')."""
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return range(low, high + 1)


def private_ports(n: int, rng: random.Random, tries: int = 50) -> list[int]:
    """n consecutive ports above Ray's default ports and outside the ephemeral range, each free: bound here on all
    interfaces (as Ray binds them) and held until all n are, then released for Ray to take."""
    ephemeral = ephemeral_port_range()
    starts = [s for s in range(LOWEST_PORT, 65536 - n + 1)
              if (s + n <= ephemeral.start or s >= ephemeral.stop) and not RAY_DEFAULT_PORTS & set(range(s, s + n))]
    assert starts, f"no {n} consecutive ports from {LOWEST_PORT} lie outside the ephemeral range {ephemeral}"
    for _ in range(tries):
        ports = range(start := rng.choice(starts), start + n)
        try:
            with ExitStack() as stack:
                for port in ports:
                    stack.enter_context(closing(socket.socket())).bind(("", port))
        except OSError:
            continue
        return list(ports)
    pytest.fail(f"no {n} consecutive free ports found in {tries} tries")


def cluster_env(token_path: Path) -> dict[str, str]:
    """The environment of `ray start` and `ray job submit`: the venv first on PATH (as after activating it, so the
    job's `python` is the venv's), token auth, and no address that could point at another cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH_"))}
    env.update(PATH=os.pathsep.join((str(VENV_BIN), env.get("PATH", ""))), RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN_PATH=str(token_path),
               # SIGTERM would otherwise wait up to 30 s for the node to drain (for Ray Serve; nothing to drain here)
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    return env


def stop_head(proc: subprocess.Popen, temp_dir: Path) -> None:
    """Stop only this cluster. SIGTERM makes `ray start --block` stop the processes it started (GCS, raylet,
    dashboard; the raylet takes its workers down); anything of the tree that outlives it, or that still names the
    private temp dir (a worker whose parent already died), is killed."""
    tree = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    strays = {p.pid: p for p in tree if p.is_running()}
    for p in psutil.process_iter(["cmdline"]):
        if any(str(temp_dir) in arg for arg in p.info["cmdline"] or ()):
            strays.setdefault(p.pid, p)
    for p in strays.values():
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(list(strays.values()), timeout=10)


@contextmanager
def running_head(ports: list[int], temp_dir: Path, log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """`ray start --head --block` on these ports (one per PORT_FLAGS, then the worker range), 4 logical CPUs
    (docs/ray.md: Ray Data needs more than the 2 cores); on exit it is stopped and its temp dir removed."""
    flags = [str(a) for flag_port in zip(PORT_FLAGS, ports, strict=False) for a in flag_port]
    command = [RAY_CLI, "start", "--head", "--block", "--num-cpus", "4",
               "--object-store-memory", str(OBJECT_STORE_BYTES), "--include-dashboard", "true",
               "--dashboard-host", "127.0.0.1", "--temp-dir", str(temp_dir), "--disable-usage-stats", *flags,
               "--min-worker-port", str(ports[len(PORT_FLAGS)]), "--max-worker-port", str(ports[-1])]
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        stop_head(proc, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_until_ready(proc: subprocess.Popen, log: Path, dashboard_url: str, token: str, agent_port: int,
                     temp_dir: Path, timeout_s: float = 120) -> str | None:
    """Until the Jobs API answers and the node's dashboard agent (which runs the job supervisor; it comes up seconds
    after `ray start` reports the node, and the Jobs API answers "No available agent" before) accepts connections.
    Returns the GCS address the node recorded in its temp dir, the one a job's driver is given, or None when
    `ray start` exited first (a port taken after it was chosen, among other causes)."""
    deadline = time.monotonic() + timeout_s
    address_file = temp_dir / "ray_current_cluster"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        try:
            get_json(f"{dashboard_url}/api/jobs/", token)
            socket.create_connection(("127.0.0.1", agent_port), timeout=2).close()
            if address_file.is_file():
                return address_file.read_text().strip()
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"the private head was not ready in {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


@contextmanager
def private_head(workdir: Path) -> Iterator[Head]:
    """A private head with a fresh token, started again on new ports (HEAD_START_ATTEMPTS in all) when `ray start`
    exits before it is ready."""
    token = secrets.token_hex(32)
    token_path = workdir / "auth_token"
    token_path.write_text(token)
    token_path.chmod(0o600)
    env = cluster_env(token_path)
    rng = random.Random()  # unseeded: parallel test runs must not all try the same ports
    exits: list[str] = []
    for attempt in range(1, HEAD_START_ATTEMPTS + 1):
        ports = private_ports(len(PORT_FLAGS) + WORKER_PORTS, rng)
        by_flag = dict(zip(PORT_FLAGS, ports, strict=False))
        # Ray's unix sockets live under the temp dir and their paths may not exceed 107 bytes: a short dir in /tmp.
        temp_dir = Path(tempfile.mkdtemp(prefix="ttt-ray-", dir="/tmp"))
        log = workdir / f"ray_start_{attempt}.log"
        with running_head(ports, temp_dir, log, env) as proc:
            dashboard_url = f"http://127.0.0.1:{by_flag['--dashboard-port']}"
            gcs_address = wait_until_ready(proc, log, dashboard_url, token,
                                           by_flag["--dashboard-agent-listen-port"], temp_dir)
            if gcs_address is not None:
                assert gcs_address.endswith(f":{by_flag['--port']}"), gcs_address
                yield Head(dashboard_url, gcs_address, temp_dir, token, env)
                return
            exits.append(f"attempt {attempt}, ports {ports[0]}-{ports[-1]}, exit {proc.returncode}:\n"
                         f"{log.read_text()[-2000:]}")
    pytest.fail(f"ray start exited early {HEAD_START_ATTEMPTS} times:\n" + "\n".join(exits))


@pytest.fixture
def head(ray_local: Any, tmp_path: Path) -> Iterator[Head]:
    """The private head; after it is stopped, the session's cluster must still run tasks (stopping ours must never
    reach it: `ray stop` would)."""
    with private_head(tmp_path) as running:
        yield running

    def one() -> int:
        return 1

    assert ray_local.get(ray_local.put(1)) == 1
    assert ray_local.get(ray_local.remote(one).remote(), timeout=60) == 1


def tree_mib(root: Path) -> float:
    """Bytes of the files under root, in MiB."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / (1 << 20)


def git_ignored(paths: list[str]) -> list[str]:
    """Those of the repository-relative paths that the repository's .gitignore files exclude (by pattern, tracked or
    not, as Ray applies them to a working_dir; the user's global excludes play no part)."""
    result = subprocess.run(["git", "-c", "core.excludesFile=/dev/null", "check-ignore", "--no-index", "--stdin", "-z"],
                            cwd=ROOT, input="\0".join(paths), capture_output=True, text=True, check=False)
    assert result.returncode in (0, 1), result.stderr  # 1: none of them is ignored
    return [p for p in result.stdout.split("\0") if p]


def wait_for_job(head: Head, submission_id: str, timeout_s: float) -> dict[str, Any]:
    """The job's info once it is SUCCEEDED, FAILED or STOPPED; the test fails with the job's logs when it is not
    after timeout_s. A busy dashboard (2 cores, a job using both) may miss a request: the next poll retries."""
    deadline = time.monotonic() + timeout_s
    info: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            info = head.api(f"/api/jobs/{submission_id}")
        except (urllib.error.URLError, OSError):
            info = {}
        if info.get("status") in TERMINAL:
            return info
        time.sleep(2)
    pytest.fail(f"job {submission_id} still {info.get('status')} after {timeout_s:.0f} s:\n"
                f"{head.job_logs(submission_id)[-5000:]}")


def test_full_run_submitted_as_a_ray_job(head: Head, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    (conf / "prepare").mkdir(parents=True)
    (conf / "prepare" / "tiny.yaml").write_text(yaml.safe_dump(TINY_PREPARE))
    run_root = tmp_path / "run"
    submission_id = f"ttt-test-{uuid.uuid4().hex[:12]}"
    entrypoint = ["python", "workflows/full_run.py", f"paths.root={run_root}", f"hydra.searchpath=[file://{conf}]",
                  "prepare=tiny", *TINY_OVERRIDES, *TINY_TRAIN, f"stages=[{','.join(STAGES)}]"]

    # without the token the Jobs API refuses: authentication is really on
    with pytest.raises(urllib.error.HTTPError) as refused:
        get_json(f"{head.dashboard_url}/api/jobs/", token="not-the-token")
    assert refused.value.code in (401, 403)

    t0 = time.perf_counter()
    try:
        submit = subprocess.run([RAY_CLI, "job", "submit", "--no-wait", "--address", head.dashboard_url,
                                 "--working-dir", str(ROOT), "--submission-id", submission_id, "--", *entrypoint],
                                cwd=tmp_path, env=head.env, capture_output=True, text=True, timeout=SUBMIT_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"ray job submit --no-wait did not return in {SUBMIT_TIMEOUT_S} s:\n{e.stdout!r}\n{e.stderr!r}")
    output = submit.stdout + submit.stderr
    assert submit.returncode == 0 and f"Job '{submission_id}' submitted successfully" in output, output[-5000:]
    info = wait_for_job(head, submission_id, JOB_TIMEOUT_S)
    job_s = time.perf_counter() - t0
    logs = head.job_logs(submission_id)
    if info["status"] != "SUCCEEDED":
        pytest.fail(f"job {info['status']}: {info.get('message')}\n{logs[-5000:]}")
    print(f"ray job: {job_s:.1f} s for {info['entrypoint']}")
    print("\n".join(re.findall(r"stage \w+: done in [\d.]+ s", logs)))

    # the job ran in the uploaded working_dir, the source tree alone: .git and .venv are excluded by Ray, whatever
    # the repository's .gitignore files exclude (runs/, gigabytes after a `make run`; __pycache__) too
    package = info["runtime_env"]["working_dir"].removeprefix("gcs://").removesuffix(".zip")
    unpacked = head.temp_dir / "session_latest" / "runtime_resources" / "working_dir_files" / package
    uploaded = [str(p.relative_to(unpacked)) for p in unpacked.rglob("*") if p.is_file()]
    assert (unpacked / "workflows" / "full_run.py").is_file()
    assert not {".git", ".venv"} & {p.name for p in unpacked.iterdir()}
    assert not git_ignored(uploaded)
    assert tree_mib(unpacked) < 16

    # the driver joined the cluster it was submitted to, with the venv's interpreter, ran the uploaded copy of the
    # code (not the editable install's), and started no Ray of its own
    assert info["driver_info"] and info["driver_exit_code"] == 0
    assert f"joined the Ray cluster at {head.gcs_address}" in logs
    assert "started a local Ray cluster" not in logs and "Started a local Ray instance" not in logs
    ran = re.search(rf"stages {', '.join(STAGES)} with (\S+), code (\S+)", logs)
    assert ran, logs[-3000:]
    assert Path(ran[1]).parent == VENV_BIN
    assert Path(ran[2]) == (unpacked / "workflows" / "full_run.py").resolve()

    # the stages' outputs, where paths.root says
    assert json.loads((run_root / "raw" / "prepared.json").read_text())["status"] == "complete"
    manifest = json.loads((run_root / "shards" / "manifest.json").read_text())
    samples = sum(s["written_samples"] for s in manifest["counts"]["sources"].values())
    parquet = [run_root / "shards" / "parquet" / name for name in manifest["shards"]["parquet"]]
    assert samples > 0 and sum(pq.ParquetFile(p).metadata.num_rows for p in parquet) == samples
    final = json.loads((run_root / "train" / "ttt-cpu" / "final.json").read_text())
    assert final["total_steps"] == 1 and (Path(final["model"]) / "model.safetensors").is_file()
    assert (run_root / "report" / "report.md").is_file()
