"""Idle cost of `oomguard watch` over 500 container cgroups.

Makes 250 kubepods-shaped pods with 2 containers each (500 container cgroups, ~750
cgroups in all, each registered for push notification) below our own cgroup, runs
`oomguard watch --json` on them, and reads its CPU time and RSS from /proc over a
quiet window. Several runs; the table gives the median. Needs root.

`--kernel-log syslog` points `--kmsg-path` at a file that does not exist, so the watcher
reads the kernel log through syslog(2) as in an unprivileged container, idle reads
included (one every 5 s).

    python bench/idle_watch.py [--seconds 60] [--runs 3] [--containers 500]
                               [--kernel-log kmsg|syslog]
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
import uuid

from oomguard.cgroups.hierarchy import detect_memory_hierarchy
from oomguard.cgroups.scratch import ScratchTree

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """Every thread's (the warning thread's too): /proc/PID/schedstat is the main one's."""
    try:  # nanoseconds on the CPU (CONFIG_SCHED_INFO): finer than the 10 ms ticks below
        total = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one_run(containers: int, seconds: float, kernel_log: str) -> tuple[float, float, int]:
    hierarchy = detect_memory_hierarchy()
    with ScratchTree(hierarchy, f"oomguard-bench-idle-{os.getpid()}") as tree:
        for i in range(containers // 2):
            qos = ("burstable", "besteffort")[i % 2]
            uid = str(uuid.uuid4())
            for _ in range(2):
                tree.make(f"kubepods/{qos}/pod{uid}/{secrets.token_hex(32)}")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "oomguard.cli",
                "watch",
                "--json",
                "--cgroup-root",
                str(tree.top),
                *(["--kmsg-path", str(tree.top / "no-kmsg")] if kernel_log == "syslog" else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stderr is not None
            banner = proc.stderr.readline()
            watched = int(banner.split("watching ")[1].split()[0])
            want = "syslog(2)" if kernel_log == "syslog" else "reading the kernel log from"
            assert want in banner, banner
            time.sleep(2)  # let start-up settle
            c0 = cpu_seconds(proc.pid)
            time.sleep(seconds)
            c1 = cpu_seconds(proc.pid)
            rss = rss_mib(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    return (c1 - c0) / seconds * 100, rss, watched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--containers", type=int, default=500)
    parser.add_argument("--kernel-log", choices=["kmsg", "syslog"], default="kmsg")
    args = parser.parse_args()
    results = [one_run(args.containers, args.seconds, args.kernel_log) for _ in range(args.runs)]
    cpu = statistics.median(r[0] for r in results)
    rss = statistics.median(r[1] for r in results)
    watched = results[0][2]
    print(
        f"idle `oomguard watch`: {args.containers} container cgroups ({watched} cgroups watched), "
        f"kernel log through {args.kernel_log}, {args.seconds:.0f} s window, "
        f"median of {args.runs} runs"
    )
    print(f"| {'metric':<22} | {'value':>10} | {'target':>10} |")
    print(f"|{'-' * 24}|{'-' * 12}|{'-' * 12}|")
    print(f"| {'CPU (% of one core)':<22} | {cpu:>10.3f} | {'<= 0.1':>10} |")
    print(f"| {'RSS (MiB)':<22} | {rss:>10.1f} | {'<= 60':>10} |")


if __name__ == "__main__":
    main()
