"""Detection latency over real OOM kills: kernel kill line -> OomKill record.

Each run makes a kubepods-shaped container cgroup (64 MiB) below our own, starts a
memory hog, and times from the kmsg stamp of the "Killed process" line (corrected
for the kernel clock's offset) to the moment the watcher hands out the record.
Needs root. Prints a table: median, p95, max over all kills, and

    python bench/detection_latency.py [--kills 20]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import time
import uuid

from oomguard.cgroups.hierarchy import detect_memory_hierarchy
from oomguard.engine import OomWatcher
from oomguard.kclock import kernel_clock_offset_us
from oomguard.records import OomKill
from oomguard.scratch import MIB, ScratchTree


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[k]


def measure(kills_wanted: int) -> list[float]:
    hierarchy = detect_memory_hierarchy()
    offset = kernel_clock_offset_us()
    latencies: list[float] = []
    with ScratchTree(hierarchy, f"oomguard-bench-{os.getpid()}") as tree:
        kills: list[OomKill] = []
        watcher = OomWatcher(
            hierarchy,
            tree.top,
            kills.append,
            kernel_clock_offset_us=offset,
        )
        watcher.start()
        try:
            for _ in range(kills_wanted):
                uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
                container = tree.make(f"kubepods/burstable/pod{uid}/{cid}", limit_bytes=64 * MIB)
                before = len(kills)
                hog = tree.start_hog(container, "benchhog")
                deadline = time.monotonic() + 30
                while len(kills) == before and time.monotonic() < deadline:
                    watcher.poll_once(max_wait_s=0.5)
                hog.wait(timeout=30)
                if len(kills) == before or kills[-1].detection_latency_ms is None:
                    raise SystemExit(
                        f"kill {len(latencies) + 1}: not detected from the kernel log within "
                        f"30 s (hog exit {hog.returncode}, records: {kills[before:]})"
                    )
                latencies.append(kills[-1].detection_latency_ms)
        finally:
            watcher.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    args = parser.parse_args()
    lat = measure(args.kills)
    print(f"detection latency, kernel kill line -> record ({len(lat)} real kills, cgroup v1 host)")
    print(f"| {'':<22} | {'median ms':>9} | {'p95 ms':>7} | {'max ms':>7} |")
    print(f"|{'-' * 24}|{'-' * 11}|{'-' * 9}|{'-' * 9}|")
    print(
        f"| {'kmsg + eventfd':<22} | {statistics.median(lat):>9.2f} | "
        f"{percentile(lat, 0.95):>7.2f} | {max(lat):>7.2f} |"
    )


if __name__ == "__main__":
    main()
