"""Smoke test of bench/train_throughput.py --quick: it runs the loop's own optimizer step and the bare loop on the
same batches and writes the report the README and bench/RESULTS.md quote (the numbers are not checked: the test
box is shared, ratios are measured by the full benchmark)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_writes_both_sides(tmp_path: Path) -> None:
    out = tmp_path / "train_throughput.json"
    proc = subprocess.run([sys.executable, "bench/train_throughput.py", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["name"] == "train_throughput" and report["config"]["quick"]
    small = report["results"]["small"]
    assert small["vocab_rows"] < 8000 and not small["project_fsdp2"]
    assert small["project_tokens_per_s"] > 0 and small["bare_tokens_per_s"] > 0
    assert small["ratio"] == small["project_tokens_per_s"] / small["bare_tokens_per_s"]
    assert 0 <= small["padding_fraction"] < 1
    assert abs(small["first_step_loss"]["project"] - small["first_step_loss"]["bare"]) < 1e-4
