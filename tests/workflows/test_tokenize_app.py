"""The `python workflows/tokenize_data.py` entry point: config mistakes exit early with a message, and the
scripts' names do not shadow the standard library (it was once workflows/tokenize.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_missing_corpora_fail_fast_with_a_hint(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "workflows/tokenize_data.py", f"paths.root={tmp_path}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "invalid data sources" in proc.stderr and "does not exist" in proc.stderr
    assert "prepare_data.py" in proc.stderr
    assert not (tmp_path / "shards").exists()


def test_no_script_shadows_a_standard_library_module() -> None:
    """`python <dir>/<script>.py` puts <dir> first on sys.path: a module there named like a standard one (the old
    workflows/tokenize.py) would be imported in its place by every library that imports the standard one."""
    scripts = {p.stem for d in ("workflows", "bench") for p in (ROOT / d).glob("*.py")}
    assert not scripts & set(sys.stdlib_module_names)


def test_a_sources_file_gets_no_hint_about_the_embedded_corpora(tmp_path: Path) -> None:
    """The reference's data_config with GLM-4-Voice but no weights (issue #17): the error says what to set and
    points at the declared codec, without a hint about paths.raw, which a sources file does not use."""
    from tests.pipelines.reference_samples import write_reference_data

    config = write_reference_data(tmp_path / "TtT", bad=False)
    proc = subprocess.run([sys.executable, "workflows/tokenize_data.py", f"paths.root={tmp_path / 'run'}",
                           "data=reference", f"data.sources_file={config}", "codec=glm4voice", "codec.device=cpu"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "cannot build the vocabulary" in proc.stderr and "tokenizer_path is not set" in proc.stderr
    assert "codec=glm4voice_declared" in proc.stderr and "prepare_data.py" not in proc.stderr
