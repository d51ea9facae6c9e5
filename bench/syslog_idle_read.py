"""How soon a kill no counter signals is reported: the idle read of syslog(2).

Where the agent cannot register for the cgroups' OOM signal (a read-only cgroup v1
mount refuses eventfds) and /dev/kmsg is refused (an unprivileged container), only its
idle read of the kernel log through syslog(2) finds a kill before the counters' resync.
This runs the watcher that way (`push=False`, no /dev/kmsg, a resync an hour away, the
read interval the engine picks for it unless `--idle-s`: every 0.75 s while some
cgroup cannot signal), causes real kills at random moments and prints the engine's own
account of its reads, how long after the victim was reaped each record came, and how far
apart the reads were. The system test (tests/system/test_syslog_detection.py) asserts that
the idle read reports the kill; this measures how soon. Needs root.

    python bench/syslog_idle_read.py [--kills 10] [--idle-s 5]
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import secrets
import statistics
import time
import uuid

from oomguard.cgroups.hierarchy import detect_memory_hierarchy
from oomguard.cgroups.scratch import MIB, ScratchTree
from oomguard.detect.loop import OomWatcher
from oomguard.kernel.parse import KmsgRecord
from oomguard.kernel.read_timing import SYSLOG_IDLE_READ_INTERVAL_S
from oomguard.kernel.syslog import SyslogReader
from oomguard.records import OomKill


def measure(kills_wanted: int, idle_s: float) -> tuple[str, list[float], list[float]]:
    """(the engine's kernel log status, seconds from each victim's reaping to its
    record, gaps between reads)."""
    hierarchy = detect_memory_hierarchy()
    delays: list[float] = []
    reads: list[float] = []
    with ScratchTree(hierarchy, f"oomguard-bench-{os.getpid()}") as tree:
        kills: list[OomKill] = []
        watcher = OomWatcher(
            hierarchy,
            tree.top,
            kills.append,
            kmsg_path=str(tree.top / "no-such-kmsg"),
            push=False,
            resync_interval_s=3600.0,
            syslog_idle_read_interval_s=idle_s,
        )
        watcher.start()
        status = watcher.kernel_log_status
        try:
            reader = watcher.kernel_log.reader
            if not isinstance(reader, SyslogReader):
                raise SystemExit(f"the kernel log is not read through syslog(2): {reader}")
            inner = reader.read_available

            def timed_read() -> list[KmsgRecord]:
                reads.append(time.monotonic())
                return inner()

            reader.read_available = timed_read  # type: ignore[method-assign]
            for n in range(kills_wanted):
                # A random moment in the idle timer's cycle, as a real kill would come.
                pause = time.monotonic() + random.uniform(0, idle_s)
                while time.monotonic() < pause:
                    watcher.poll_once(max_wait_s=0.1)
                uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
                container = tree.make(f"kubepods/burstable/pod{uid}/{cid}", limit_bytes=48 * MIB)
                before = len(kills)
                hog = tree.start_hog(container, "benchhog")
                hog.wait(timeout=30)
                reaped = time.monotonic()
                deadline = reaped + 10 * max(idle_s, 1.0)
                while len(kills) == before and time.monotonic() < deadline:
                    watcher.poll_once(max_wait_s=0.01)
                if len(kills) == before:
                    raise SystemExit(f"kill {n + 1}: no record within {deadline - reaped:g} s")
                delays.append(time.monotonic() - reaped)
        finally:
            watcher.close()
    return status, delays, [b - a for a, b in itertools.pairwise(reads)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument(
        "--idle-s", type=float, default=SYSLOG_IDLE_READ_INTERVAL_S, help="idle read interval"
    )
    args = parser.parse_args()
    status, delays, gaps = measure(args.kills, args.idle_s)
    print(
        f"syslog(2) reads, no push, no /dev/kmsg: {args.kills} real kills, "
        f"--idle-s {args.idle_s:g}, cgroup v1 host"
    )
    print(f"engine: {status}")
    print(f"| {'':<32} | {'n':>4} | {'median s':>8} | {'max s':>7} |")
    print(f"|{'-' * 34}|{'-' * 6}|{'-' * 10}|{'-' * 9}|")
    for name, values in (("victim reaped -> record", delays), ("gap between reads", gaps)):
        print(
            f"| {name:<32} | {len(values):>4} | {statistics.median(values):>8.2f} | "
            f"{max(values):>7.2f} |"
        )


if __name__ == "__main__":
    main()
