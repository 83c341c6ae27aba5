"""A workflow's console as a user sees it (pipelines/console.py): quiet by default, with the full log in Hydra's
run directory; `console.verbose=true` puts every log line back on the console."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.workflows.test_prepare_data import TINY, TINY_CODEC

ROOT = Path(__file__).resolve().parents[2]


def test_prepare_prints_its_bar_and_logs_the_rest_to_the_run_log(tmp_path: Path) -> None:
    conf = tmp_path / "conf" / "prepare"
    conf.mkdir(parents=True)
    (conf / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    run = tmp_path / "run"

    def prepare(*overrides: str) -> tuple[str, Path]:
        proc = subprocess.run([sys.executable, "workflows/prepare_data.py", f"paths.root={run}", "prepare=tiny",
                               f"hydra.searchpath=[file://{tmp_path / 'conf'}]", *TINY_CODEC, *overrides],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        console = proc.stdout + proc.stderr
        first = console.splitlines()[0]  # "full log: <path>" (verbose: in Hydra's format)
        assert "full log: " in first and first.endswith("prepare_data.log")
        log_file = Path(first.split("full log: ")[1])
        assert log_file.parent.parent == run / "hydra" and (log_file.parent / ".hydra" / "config.yaml").is_file()
        return console, log_file

    console, log_file = prepare()
    assert "synthesize: 100%" in console  # the stage's bar
    assert "[INFO]" not in console and "raw corpora in" not in console
    assert f"[INFO] - raw corpora in {run / 'raw'}" in log_file.read_text()

    console, log_file = prepare("console.verbose=true")  # up to date: nothing to do but say so
    assert "[pipelines.synthetic.prepare][INFO] - corpora up to date" in console
    assert "corpora up to date" in log_file.read_text()
