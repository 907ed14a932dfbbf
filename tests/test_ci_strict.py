"""With CI=true a check that skips for want of a tool CI installs (chromium, node and the glTF validator,
network namespaces) fails instead (tests/conftest.py); other skips (no CUDA) stay skips, and without CI=true
nothing changes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = '''
import pytest

@pytest.mark.skipif(True, reason="no chromium (apt-get install chromium)")
def test_browser():
    pass

def test_validator():
    pytest.skip("node is not installed")

def test_cuda():
    pytest.skip("needs a CUDA device")
'''


def run_cases(tmp_path: Path, ci: str | None) -> str:
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_cases.py").write_text(CASES)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True).stdout


def test_missing_tools_fail_in_ci(tmp_path):
    out = run_cases(tmp_path, "true")
    # a skip at setup (skipif) reads as an error, one in the test as a failure: either makes the run red
    assert "1 failed, 1 skipped, 1 error" in out
    assert "ERROR test_cases.py::test_browser" in out and "FAILED test_cases.py::test_validator" in out
    assert "needs a tool that is missing" in out


def test_outside_ci_they_skip(tmp_path):
    assert "3 skipped" in run_cases(tmp_path, None)
