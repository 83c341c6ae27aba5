"""No dead code: vulture finds no unused function, class, method, constant, attribute, import or unreachable code
in the packages and benchmarks. Its false positives (names Ray, a library or a config file uses where vulture
cannot see) are listed, with reasons, in vulture_whitelist.py; code that is really unused is deleted instead.

Tests are not scanned: code that only tests call is dead unless it is deliberate public API (then whitelisted).
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("tokenization", "ttt_common", "ttt_model", "pipelines", "workflows", "bench")
WHITELIST = "vulture_whitelist.py"
MIN_CONFIDENCE = "60"  # vulture's lowest: unused functions, classes, variables and attributes included


def vulture(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("vulture", path=str(Path(sys.executable).parent)) or "vulture"
    return subprocess.run([exe, "--min-confidence", MIN_CONFIDENCE, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_no_dead_code() -> None:
    proc = vulture(*PATHS, WHITELIST)
    assert proc.returncode == 0, (f"vulture reports unused code: delete it, or add a true false positive to "
                                  f"{WHITELIST} with the reason\n{proc.stdout[-6000:]}{proc.stderr[-2000:]}")


def test_every_whitelist_entry_is_needed() -> None:
    """A whitelisted name vulture no longer reports (its code was deleted or is now used) must leave the list,
    or it would hide a future unused symbol of the same name."""
    tree = ast.parse((ROOT / WHITELIST).read_text())
    listed = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    reported = set(re.findall(r"unused \w+ '([^']+)'", vulture(*PATHS).stdout))
    assert listed and listed <= reported, f"not reported any more, remove from {WHITELIST}: {sorted(listed - reported)}"


def test_the_check_sees_dead_code(tmp_path: Path) -> None:
    """The same command over a module with an unused function fails: the check is not vacuous."""
    (tmp_path / "mod.py").write_text("def used() -> int:\n    return 1\n\n\ndef unused() -> int:\n    return used()\n")
    proc = vulture(str(tmp_path / "mod.py"))
    assert proc.returncode != 0 and "unused function 'unused'" in proc.stdout
