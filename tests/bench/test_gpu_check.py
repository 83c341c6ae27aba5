"""Smoke test of bench/gpu_check.py --smoke: one command writes the JSON and Markdown summaries with every part
recorded, and the correctness parts pass on whatever device runs the tests (the CPU here: FlexAttention kernels
are skipped with their reason, the mask they would use is still checked against the SDPA oracle). Speed numbers
are not checked: the box is shared, and they mean something only on a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PARTS = {"correctness_attention", "correctness_sampler", "correctness_train_step", "training_throughput",
         "decode_latency", "codec_throughput"}


def test_smoke_records_every_part(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--smoke", "--threads", "1", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["name"] == "gpu_check" and report["mode"] == "smoke"
    assert report["machine"]["torch"] and report["machine"]["name"] and report["date"]
    parts = report["parts"]
    assert set(parts) == PARTS
    for name, part in parts.items():
        assert part["status"] in {"ok", "skipped", "failed"}, name
        assert part["seconds"] >= 0 and part["budget_s"] > 0, name
    for name in ("correctness_attention", "correctness_sampler", "correctness_train_step"):
        part = parts[name]
        assert part["status"] == "ok" or (part["status"] == "skipped" and part["reason"]), (name, part)
    attention = parts["correctness_attention"]["result"]
    assert attention["documents"] > attention["rows"] and attention["audio_blocks"] > 0  # packed, with spans
    checks = attention["checks"]
    assert checks["mask_equal"]["passed"] and checks["block_sparsity_equal"]["passed"]
    for key in ("logits_float32", "logits_bfloat16"):
        assert checks[key].get("passed") or checks[key].get("skipped"), (key, checks[key])
    assert all(c["passed"] for c in parts["correctness_sampler"]["result"]["checks"].values())
    step = parts["correctness_train_step"]["result"]
    assert step["fp32"]["finite"] and step["bf16"]["finite"]
    summary = (tmp_path / "gpu_check.md").read_text()
    assert all(f"| {name} |" in summary for name in PARTS)
