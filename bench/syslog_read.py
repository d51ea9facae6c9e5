"""What one read of the kernel log through syslog(2) costs (`klog_syslog`).

Times, on this machine's real kernel log (needs CAP_SYSLOG or kernel.dmesg_restrict=0):
klogctl(SYSLOG_ACTION_READ_ALL) alone for several buffer sizes; numbering every line of
the whole log; and `SyslogReader.read_available` as the engine calls it, with nothing
new (the common case: a counter change whose report was already read) and from the start
of the log (a restart on a new boot). Medians of --runs; wall time, one thread.

    python bench/syslog_read.py [--runs 200]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from oomguard.kernel.syslog import SyslogReader, _Klogctl, number_lines


def median_ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    klog = _Klogctl()
    size = klog.size()
    whole = klog.read_all(4 * size)
    lines = whole.count(b"\n")
    print(f"kernel log buffer {size // 1024} KiB; printed {len(whole) // 1024} KiB, {lines} lines")
    print()
    print("| what | bytes | median ms |")
    print("|---|---|---|")
    for window in (16 * 1024, 64 * 1024, size, 2 * size):
        got = len(klog.read_all(window))
        ms = median_ms(lambda w=window: klog.read_all(w), args.runs)  # type: ignore[misc]
        print(f"| READ_ALL, {window // 1024} KiB buffer | {got} | {ms:.2f} |")
    split = whole.split(b"\n")
    ms = median_ms(lambda: number_lines(split), max(10, args.runs // 10))
    print(f"| number every line of the log | {len(whole)} | {ms:.2f} |")
    reader = SyslogReader()
    ms = median_ms(reader.read_available, args.runs)
    print(f"| read_available, nothing new (the usual read) | - | {ms:.2f} |")
    ms = median_ms(lambda: SyslogReader(after_pos=-1).read_available(), max(10, args.runs // 10))
    print(f"| open + read_available of the whole log (new boot) | {len(whole)} | {ms:.2f} |")


if __name__ == "__main__":
    main()
