"""`ray job submit --working-dir <repo> -- python workflows/full_run.py ...` against a running cluster, the way
cluster/README.md submits runs, on a private local `ray start --head`.

The cluster is private to this test and never meets the session's `ray_local` (tests/conftest.py), which is alive
while it runs: its own ports (all of them, including those Ray would otherwise take by default, e.g. 10001 and
52365), its own --temp-dir (where Ray records the address of "the last cluster started", which the job's driver
is given), and no RAY_ADDRESS passed down. Authentication is token mode as on the real clusters
(cluster/README.md, cluster/submit.sh: RAY_AUTH_MODE=token with RAY_AUTH_TOKEN_PATH), not the conftest's
`disabled`, so the submit path under test is the one users take; the token is fresh and lives in this test's
temp dir, never in ~/.ray.
`ray stop` is never called: it has no scoping in Ray 2.60 and kills every Ray process on the machine, the
session's cluster and other test runs' clusters included. The cluster is stopped through its own process tree.
"""

from __future__ import annotations

import json
import os
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
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent  # the interpreter running the tests: the repository's venv under `make test`
RAY_CLI = str(VENV_BIN / "ray")

# The embedded corpora at a few utterances each, espeak voices only (Piper's model load alone takes tens of
# seconds on 2 cores; tests/workflows/test_prepare_data.py covers it). Written as a config group file and found
# through hydra.searchpath, the way a user adds a size of their own without editing the repository.
TINY_PREPARE: dict[str, Any] = {
    "workers": 2,
    "textgen": {"heldout_fraction": 0.2, "max_operand": 5, "max_factor": 4, "max_count": 20,
                "documents_state_heldout_facts": True},
    "speakers": {"en": [{"voice": "espeak:en", "gender": "male"}, {"voice": "espeak:en", "speed": 1.1}],
                 "zh": [{"voice": "espeak:cmn"}]},
    "librispeech": {"train-clean-100": 2, "test-clean": 1},
    "commonvoice": {"en": {"header": "new", "train": 2, "test": 1}, "zh-CN": {"header": "old", "train": 1, "dev": 1}},
    "aishell2": {"train": 2, "test": 1},
    "lhotse": {"train": 1, "test": 1},
    "spoken_qa": {"train": {"llama_questions": 2, "trivia_qa": 1}, "eval": {"llama_questions": 1, "trivia_qa": 2}},
    "chat": 2,
    "documents": 1,
    "codec_fit_seconds_per_voice": 4,
}
# A codec small enough to fit on seconds of audio; speech for text-only records from espeak too.
TINY_OVERRIDES = ("++codec.codebook_sizes=[16,16]", "++codec.kmeans_iterations=3", "data.tts.voice=espeak:en",
                  "data.tts.pool_size=1", "stages=[prepare,tokenize]")
PORT_FLAGS = ("--port", "--dashboard-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
              "--runtime-env-agent-port", "--ray-client-server-port", "--metrics-export-port", "--node-manager-port",
              "--object-manager-port")
OBJECT_STORE_BYTES = 512 * 1024 * 1024


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


def free_ports(n: int) -> list[int]:
    """n distinct free ports: the sockets stay bound until all are chosen, so no port is handed out twice.
    Another process may still take one before Ray binds it; the head then fails to start and says so."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(closing(socket.socket())) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


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


def wait_until_ready(proc: subprocess.Popen, log: Path, dashboard_url: str, token: str, agent_port: int,
                     temp_dir: Path, timeout_s: float = 120) -> str:
    """Until the Jobs API answers and the node's dashboard agent (which runs the job supervisor; it comes up seconds
    after `ray start` reports the node, and the Jobs API answers "No available agent" before) accepts connections.
    Returns the GCS address the node recorded in its temp dir, the one a job's driver is given."""
    deadline = time.monotonic() + timeout_s
    address_file = temp_dir / "ray_current_cluster"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            get_json(f"{dashboard_url}/api/jobs/", token)
            socket.create_connection(("127.0.0.1", agent_port), timeout=2).close()
            if address_file.is_file():
                return address_file.read_text().strip()
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"the private head was not ready in {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def head(tmp_path: Path) -> Iterator[Head]:
    """A private `ray start --head --block`, 4 logical CPUs (RAY.md: Ray Data needs more than the 2 cores)."""
    # Ray's unix sockets live under the temp dir and their paths may not exceed 107 bytes: a short dir in /tmp.
    temp_dir = Path(tempfile.mkdtemp(prefix="ttt-ray-", dir="/tmp"))
    token = secrets.token_hex(32)
    token_path = tmp_path / "auth_token"
    token_path.write_text(token)
    token_path.chmod(0o600)
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
    command = [RAY_CLI, "start", "--head", "--block", "--num-cpus", "4",
               "--object-store-memory", str(OBJECT_STORE_BYTES), "--include-dashboard", "true",
               "--dashboard-host", "127.0.0.1", "--temp-dir", str(temp_dir), "--disable-usage-stats",
               *(str(a) for flag_port in ports.items() for a in flag_port)]
    env = cluster_env(token_path)
    log = tmp_path / "ray_start.log"
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        dashboard_url = f"http://127.0.0.1:{ports['--dashboard-port']}"
        agent_port = ports["--dashboard-agent-listen-port"]
        gcs_address = wait_until_ready(proc, log, dashboard_url, token, agent_port, temp_dir)
        assert gcs_address.endswith(f":{ports['--port']}"), gcs_address
        yield Head(dashboard_url, gcs_address, temp_dir, token, env)
    finally:
        stop_head(proc, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def tree_mib(root: Path) -> float:
    """Bytes of the files under root, in MiB."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / (1 << 20)


def test_full_run_submitted_as_a_ray_job(ray_local: Any, head: Head, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    (conf / "prepare").mkdir(parents=True)
    (conf / "prepare" / "tiny.yaml").write_text(yaml.safe_dump(TINY_PREPARE))
    run_root = tmp_path / "run"
    submission_id = f"ttt-test-{uuid.uuid4().hex[:12]}"
    entrypoint = ["python", "workflows/full_run.py", f"paths.root={run_root}", f"hydra.searchpath=[file://{conf}]",
                  "prepare=tiny", *TINY_OVERRIDES]

    # without the token the Jobs API refuses: authentication is really on
    with pytest.raises(urllib.error.HTTPError) as refused:
        get_json(f"{head.dashboard_url}/api/jobs/", token="not-the-token")
    assert refused.value.code in (401, 403)

    t0 = time.perf_counter()
    proc = subprocess.run([RAY_CLI, "job", "submit", "--address", head.dashboard_url, "--working-dir", str(ROOT),
                           "--submission-id", submission_id, "--", *entrypoint],
                          cwd=tmp_path, env=head.env, capture_output=True, text=True, timeout=400)
    submit_s = time.perf_counter() - t0
    output = proc.stdout + proc.stderr
    assert f"Job '{submission_id}' submitted successfully" in output, output[-5000:]
    info = head.api(f"/api/jobs/{submission_id}")
    logs = head.api(f"/api/jobs/{submission_id}/logs")["logs"]
    assert proc.returncode == 0 and info["status"] == "SUCCEEDED", f"{info.get('message')}\n{logs[-5000:]}"
    print(f"ray job submit: {submit_s:.1f} s for {info['entrypoint']}")

    # the job ran in the uploaded working_dir, the source tree alone: .git and .venv are excluded by Ray, runs/
    # (gigabytes after a `make run`) by .gitignore
    package = info["runtime_env"]["working_dir"].removeprefix("gcs://").removesuffix(".zip")
    unpacked = head.temp_dir / "session_latest" / "runtime_resources" / "working_dir_files" / package
    assert (unpacked / "workflows" / "full_run.py").read_bytes() == (ROOT / "workflows" / "full_run.py").read_bytes()
    assert not {".git", ".venv", "runs"} & {p.name for p in unpacked.iterdir()}
    assert tree_mib(unpacked) < 16

    # the driver joined the cluster it was submitted to, with the venv's interpreter, and started no Ray of its own
    assert info["driver_info"] and info["driver_exit_code"] == 0
    assert f"joined the Ray cluster at {head.gcs_address}" in logs
    assert "started a local Ray cluster" not in logs and "Started a local Ray instance" not in logs
    ran_with = re.search(r"stages prepare, tokenize with (\S+)", logs)
    assert ran_with and Path(ran_with[1]).parent == VENV_BIN, logs[-3000:]

    # the stages' outputs, where paths.root says
    assert json.loads((run_root / "raw" / "prepared.json").read_text())["status"] == "complete"
    manifest = json.loads((run_root / "shards" / "manifest.json").read_text())
    samples = sum(s["written_samples"] for s in manifest["counts"]["sources"].values())
    parquet = [run_root / "shards" / "parquet" / name for name in manifest["shards"]["parquet"]]
    assert samples > 0 and sum(pq.ParquetFile(p).metadata.num_rows for p in parquet) == samples

    # the session's cluster is another cluster and is still usable
    assert ray_local.get_runtime_context().gcs_address != head.gcs_address
    assert ray_local.get(ray_local.put(samples)) == samples

