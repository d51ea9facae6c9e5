"""Runs lane 2 from the host: boots the cgroup v2 VM and the `vm`-marked tests in it.

This is what puts lane 2 into the one test command (`python -m pytest`). Set
OOMGUARD_SKIP_VM=1 to leave it out of a quick local run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).with_name("run_lane2.py")


def test_lane2_in_vm() -> None:
    if os.environ.get("OOMGUARD_IN_VM") == "1":
        pytest.skip("already inside the VM")
    if os.environ.get("OOMGUARD_SKIP_VM") == "1":
        pytest.skip("OOMGUARD_SKIP_VM=1")
    if os.geteuid() != 0:
        pytest.skip("lane 2 needs root on the host (apt packages, qemu)")
    result = subprocess.run(
        [sys.executable, str(RUNNER), "-q", "-rA"],
        capture_output=True,
        text=True,
        timeout=40 * 60,
        cwd=RUNNER.parents[2],
    )
    sys.stdout.write(result.stdout[-20000:])
    sys.stderr.write(result.stderr[-5000:])
    assert result.returncode == 0, f"lane 2 failed (exit {result.returncode}), output above"
    assert " passed" in result.stdout
