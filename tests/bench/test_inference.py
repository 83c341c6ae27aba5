"""Smoke test of bench/inference.py: both audio attention modes decode the benchmark's workload with the cache,
match the full-recompute oracle token for token where it runs end to end, and the report carries the numbers
bench/RESULTS.md quotes (not checked: the test box is shared; the full benchmark measures them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_reports_both_attention_modes(tmp_path: Path) -> None:
    out = tmp_path / "inference.json"
    args = ["--quick", "--prompt-lengths", "24", "48", "--span", "64", "--block-length", "16", "--steps-per-block",
            "4", "--samples", "2", "--verify", "24", "--threads", "1", "--checkpoint", str(tmp_path / "none"),
            "--out", str(out)]
    proc = subprocess.run([sys.executable, "bench/inference.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["config"]["quick"] and report["config"]["attention"] == ["bidirectional", "block_causal"]
    assert [r["prompt_tokens"] for r in report["results"]] == [24, 48]
    for r in report["results"]:
        assert r["reference_method"]["from_mode"] == "bidirectional"
        for mode, m in r["modes"].items():
            ours, oracle = m["ours"], m["oracle"]
            assert ours["audio_tokens"] == 64 and ours["diffusion_steps"] == 4 * 4, mode
            assert oracle["measured"] == (r["prompt_tokens"] == 24)
            assert oracle["tokens_equal"] is (True if oracle["measured"] else None)
            assert m["speedup_vs_oracle"] > 0 and oracle["forward_passes"] == ours["forward_passes"]
        # block-causal steps run one block (two at a block's first step), bidirectional ones the open span
        modes = r["modes"]
        assert modes["block_causal"]["ours"]["tokens_processed"] < modes["bidirectional"]["ours"]["tokens_processed"]
    assert "skipped" in report["embedded"]
