"""Every example in examples/ runs offline and succeeds; the demo tells the whole story."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))


def _run(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("AGENTGUARD_STORE", None)
    return subprocess.run(
        [sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs_offline(path: Path) -> None:
    result = _run(path)
    assert result.returncode == 0, f"{path.name} failed:\n{result.stdout}\n{result.stderr}"
    assert result.stdout.strip(), f"{path.name} printed nothing"


def test_every_example_is_a_demo_section() -> None:
    demo = (ROOT / "examples" / "demo.py").read_text()
    for path in EXAMPLES:
        if path.name != "demo.py":
            assert f'"{path.name}"' in demo, f"{path.name} is not in the demo's SECTIONS"


def test_budget_demo_holds_the_line() -> None:
    out = _run(ROOT / "examples" / "budget_leak.py").stdout
    assert "CRM calls that actually happened: 20" in out
    assert "later call on the stopped pool is refused" in out
