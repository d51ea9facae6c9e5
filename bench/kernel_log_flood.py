"""What a kernel log flood costs the agent, and whether kills inside it are all reported.

`oomguard watch --json` as a subprocess, as it runs; 50,000 ordinary lines written to
the kernel log by 3 processes (node-problem-detector #1168's case: a noisy driver),
with 3 real kills in the middle. Per kernel log reader (kmsg, syslog(2)), median of
--runs: the flood's duration, the agent's CPU during it (utime + stime from
/proc/PID/stat, from the flood's start until 2 s after it ended), records and victims
named. Needs root and write access to /dev/kmsg.

    python bench/kernel_log_flood.py [--runs 3] [--lines 50000]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oomguard.cgroups.hierarchy import detect_memory_hierarchy
from oomguard.cgroups.scratch import MIB, ScratchTree
from tests.system.klog_flood import start_flood
from tests.watch_process import next_kill_line, start_watch

KILLS = 3


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(kernel_log: str, lines: int) -> tuple[float, float, int, int]:
    """(flood seconds, agent CPU seconds, records, victims named)"""
    hierarchy = detect_memory_hierarchy()
    with ScratchTree(hierarchy, f"oomguard-bench-{os.getpid()}") as tree:
        paths = [
            f"kubepods/burstable/pod{uuid.uuid4()}/{secrets.token_hex(32)}" for _ in range(KILLS)
        ]
        containers = [tree.make(p, limit_bytes=48 * MIB) for p in paths]
        agent = start_watch(tree, kernel_log)
        try:
            assert agent.stdout is not None and agent.stderr is not None
            agent.stderr.readline()
            time.sleep(1)
            before = cpu_s(agent.pid)
            started = time.monotonic()
            writers = start_flood(lines)
            victims = []
            for container in containers:
                time.sleep(0.3)
                hog = tree.start_hog(container, "floodhog")
                hog.wait(timeout=60)
                victims.append(hog.pid)
            for w in writers:
                w.join()
            flood_s = time.monotonic() - started
            records = [json.loads(next_kill_line(agent.stdout)) for _ in victims]
            time.sleep(2)
            spent = cpu_s(agent.pid) - before
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)
    named = sum(1 for r in records if r["pid"] in victims)
    return flood_s, spent, len(records), named


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lines", type=int, default=50_000)
    args = parser.parse_args()
    print(
        f"kernel log flood: {args.lines} lines by 3 writers, {KILLS} real kills inside; "
        f"median of {args.runs} runs (target: <= 1 core-second, every kill named)"
    )
    print("| kernel log | flood s | lines/s | agent CPU s | records | victims named |")
    print("|------------|---------|---------|-------------|---------|---------------|")
    for kernel_log in ("kmsg", "syslog"):
        runs = [one_run(kernel_log, args.lines) for _ in range(args.runs)]
        flood = statistics.median(r[0] for r in runs)
        print(
            f"| {kernel_log:<10} | {flood:>7.2f} | {args.lines / flood:>7.0f} | "
            f"{statistics.median(r[1] for r in runs):>11.2f} | "
            f"{min(r[2] for r in runs)}/{KILLS} | {min(r[3] for r in runs)}/{KILLS} |"
        )


if __name__ == "__main__":
    main()
