"""Runs lane 2 from the host: boots the cgroup v2 VM and the `vm`-marked tests in it.

This is what puts lane 2 into the one test command (`python -m pytest`). Set
OOMGUARD_SKIP_VM=1 to leave it out of a quick local run.

The lane passes only when every `vm` test passed in the VM: pytest exits 0 on a run
where everything skipped, so its summary is read and counted against the tests the
host collects. The tests of that judgement run on the host, always (no VM needed), on
summaries printed by real pytest runs.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

RUNNER = Path(__file__).with_name("run_lane2.py")


def _load_runner() -> ModuleType:
    """run_lane2.py is a script, not a package module: load it by path (registered, so
    its dataclasses resolve their annotations)."""
    spec = importlib.util.spec_from_file_location("oomguard_lane2_runner", RUNNER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


runner = _load_runner()


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
    # The runner judged the run; say here too what passing means: pytest's own summary
    # from the VM counts every `vm` test the host collects as passed, none skipped.
    expected = runner.collect_vm_tests([])
    summary = runner.parse_summary(result.stdout)
    assert summary is not None, "no pytest summary from the VM in the output above"
    assert summary.count("passed") == expected > 0, summary
    assert summary.count("skipped") == 0, summary.skips
    assert runner.judge(summary, expected) == []


# --------------------------------------------------------- the judgement, on the host

# A stand-in for the lane's tests: what each outcome looks like to pytest.
OUTCOMES = {
    "passed": "def test_{i}():\n    pass\n",
    "skipped": (
        "import pytest\n\ndef test_{i}():\n"
        "    pytest.skip('lowering oom_score_adj needs CAP_SYS_RESOURCE')\n"
    ),
    "failed": "def test_{i}():\n    assert False\n",
}


def real_run(tmp_path: Path, *outcomes: str, args: tuple[str, ...] = ("-q", "-rA")) -> str:
    """The output of a real pytest run of one test per outcome, with lane 2's flags."""
    for i, outcome in enumerate(outcomes):
        (tmp_path / f"test_{i}.py").write_text(textwrap.dedent(OUTCOMES[outcome].format(i=i)))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args, str(tmp_path)],
        cwd=tmp_path,
        env=dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return proc.stdout


def test_a_run_where_everything_skipped_fails_although_pytest_exits_0(tmp_path: Path) -> None:
    output = real_run(tmp_path, "skipped", "skipped", "skipped")
    summary = runner.parse_summary(output)
    assert summary is not None, output
    assert (summary.count("passed"), summary.count("skipped")) == (0, 3)
    problems = runner.judge(summary, expected=3)
    assert "0 passed of the 3 `vm` tests the host collects" in problems
    # Each skip is named with its reason: lowering oom_score_adj never skips in the VM,
    # which is root (with CAP_SYS_RESOURCE), unlike the host.
    assert sum("must run: " in p and "CAP_SYS_RESOURCE" in p for p in problems) == 3, problems


def test_one_skip_among_passes_fails(tmp_path: Path) -> None:
    summary = runner.parse_summary(real_run(tmp_path, "passed", "skipped", "passed"))
    assert summary is not None
    problems = runner.judge(summary, expected=3)
    assert any("skipped in the VM, where it must run" in p for p in problems), problems
    assert "2 passed of the 3 `vm` tests the host collects" in problems


def test_a_skip_whose_reason_is_allowed_counts(tmp_path: Path) -> None:
    summary = runner.parse_summary(real_run(tmp_path, "passed", "skipped"))
    assert summary is not None
    allowed = [re.compile(r"needs CAP_SYS_RESOURCE$")]
    assert runner.judge(summary, expected=2, allowed_skips=allowed) == []


def test_every_test_passed_is_the_one_verdict_without_problems(tmp_path: Path) -> None:
    summary = runner.parse_summary(real_run(tmp_path, "passed", "passed", "passed"))
    assert summary is not None and summary.count("passed") == 3
    assert runner.judge(summary, expected=3) == []
    # Fewer ran than the host collects (a module the guest could not import, a
    # narrower selection): a shortfall, even with all that ran passing.
    assert runner.judge(summary, expected=4) == ["3 passed of the 4 `vm` tests the host collects"]


def test_failures_are_named(tmp_path: Path) -> None:
    summary = runner.parse_summary(real_run(tmp_path, "passed", "failed", args=("-rA",)))
    assert summary is not None
    assert runner.judge(summary, expected=2) == [
        "1 failed",
        "1 passed of the 2 `vm` tests the host collects",
    ]


def test_no_summary_line_is_a_failure_not_zero_tests() -> None:
    cut_off = "lane2-guest: running pytest at 31.2 s\n....\n"
    assert runner.parse_summary(cut_off) is None
    assert runner.judge(None, expected=12) == [
        "the VM's output has no pytest summary line (crashed or cut off)"
    ]


@pytest.mark.parametrize(
    ("line", "counts"),
    [
        # Verbatim summary lines of pytest 9 (plain, with rules, with colour).
        ("12 passed in 73.21s (0:01:13)", {"passed": 12}),
        (
            "======== 1 failed, 10 passed, 1 skipped, 2 warnings in 80.02s (0:01:20) ========",
            {"failed": 1, "passed": 10, "skipped": 1, "warning": 2},
        ),
        ("2 errors in 0.31s", {"error": 2}),
        ("\x1b[32m\x1b[1m3 passed\x1b[0m\x1b[32m in 0.01s\x1b[0m", {"passed": 3}),
        ("no tests ran in 0.01s", {}),
    ],
)
def test_summary_lines(line: str, counts: dict[str, int]) -> None:
    summary = runner.parse_summary(f"lane2-guest: booted\n{line}\nlane2-guest: pytest exited 0\n")
    assert summary is not None and dict(summary.counts) == counts


def test_the_host_collects_the_vm_tests() -> None:
    """The expected count is pytest's own collection of tests/vm with `-m vm`."""
    expected = runner.collect_vm_tests(["-q", "-rA"])
    node_ids = subprocess.run(
        [sys.executable, *runner.pytest_command(["--collect-only", "-q"])],
        cwd=RUNNER.parents[2],
        env=dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1"),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.splitlines()
    vm_tests = [line for line in node_ids if line.startswith("tests/vm/") and "::" in line]
    assert expected == len(vm_tests) > 0
    assert not any("test_lane2.py" in t for t in vm_tests)  # the wrapper is not a vm test
    assert runner.collect_vm_tests(["-k", "smoke"]) < expected  # the same selection
