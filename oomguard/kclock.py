"""How far the kernel log's clock is from CLOCK_MONOTONIC.

kmsg stamps records with the scheduler clock, which runs a little apart from
CLOCK_MONOTONIC (1.7 ms on the test host). Detection latency is "now minus the
kernel's stamp", so the demo and the benchmark measure the offset once by writing a
probe record and reading its stamp back. It needs write access to /dev/kmsg (root);
without it the offset is 0 and latencies are over-stated by that much.
"""

from __future__ import annotations

import os
import time

PROBE = b"oomguard: kernel clock calibration probe\n"


def kernel_clock_offset_us(path: str = "/dev/kmsg", samples: int = 5) -> int:
    """Microseconds to add to a kmsg stamp to get CLOCK_MONOTONIC; 0 when unknown."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return 0
    offsets: list[float] = []
    try:
        os.lseek(fd, 0, os.SEEK_END)
        for _ in range(samples):
            t0 = time.monotonic()
            os.write(fd, PROBE)
            t1 = time.monotonic()
            while True:
                try:
                    raw = os.read(fd, 8192)
                except BlockingIOError:
                    break
                except BrokenPipeError:
                    continue
                head, _, message = raw.partition(b";")
                if message.startswith(PROBE.rstrip(b"\n")):
                    fields = head.split(b",")
                    if len(fields) >= 3 and fields[2].isdigit():
                        offsets.append((t0 + t1) / 2 * 1e6 - int(fields[2]))
                    break
    except OSError:
        return 0
    finally:
        os.close(fd)
    if not offsets:
        return 0
    offsets.sort()
    return int(offsets[len(offsets) // 2])
