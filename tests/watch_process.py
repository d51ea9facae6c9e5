"""`oomguard watch --json` as a user runs it, for the tests and benches that need the
product as it runs (no calibration, its own process), through either kernel log reader."""

from __future__ import annotations

import subprocess
import sys
from typing import IO, AnyStr

from oomguard.cgroups.scratch import ScratchTree

KERNEL_LOGS = ("kmsg", "syslog")


def watch_argv(tree: ScratchTree, kernel_log: str = "kmsg", *extra: str) -> list[str]:
    """The command line; `kernel_log` "syslog" points --kmsg-path nowhere, as in an
    unprivileged container, so syslog(2) is read instead."""
    if kernel_log not in KERNEL_LOGS:
        raise ValueError(f"kernel_log must be one of {KERNEL_LOGS}")
    reader = [] if kernel_log == "kmsg" else ["--kmsg-path", "/nonexistent/kmsg"]
    argv = [sys.executable, "-m", "oomguard.cli", "watch", "--json", *reader, *extra]
    return [*argv, "--cgroup-root", str(tree.top)]


def start_watch(tree: ScratchTree, kernel_log: str = "kmsg", *extra: str) -> subprocess.Popen[str]:
    """Start it with stdout (records) and stderr (its start line, logs) as text pipes."""
    return subprocess.Popen(
        watch_argv(tree, kernel_log, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def is_warning(line: str | bytes) -> bool:
    """A warning line (`--warn-at`, on by default), JSON or human: kill tests skip them."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    return '"kind":"oom_warning"' in text or " OOM kill near: " in text


def next_kill_line(stream: IO[AnyStr]) -> AnyStr:
    """The next kill line of `watch` (a warning may come first: a hog passes 90 % of
    its limit on the way to its kill); "" at the end of the stream."""
    while True:
        line = stream.readline()
        if not line or not is_warning(line):
            return line
