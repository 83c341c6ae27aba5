"""The package layering stays as designed (docs/architecture.md): `lint-imports` checks the contracts in
pyproject.toml ([tool.importlinter]) over every import, lazy ones inside functions included."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    return subprocess.run([exe, "--no-cache", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_layering_contracts_hold() -> None:
    proc = lint_imports()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    """The same tool with the layers upside down must fail: the check is not vacuous."""
    config = tmp_path / "upside_down.ini"
    config.write_text("[importlinter]\nroot_packages =\n    workflows\n    tokenization\n\n"
                      "[importlinter:contract:1]\nname = upside down\ntype = layers\nlayers =\n"
                      "    tokenization\n    workflows\n")
    proc = lint_imports("--config", str(config))
    assert proc.returncode != 0 and "BROKEN" in proc.stdout
