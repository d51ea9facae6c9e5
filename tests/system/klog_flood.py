"""A flood of ordinary lines into the kernel log, for the flood test and its benchmark."""

from __future__ import annotations

import os
from multiprocessing import Process

FLOOD_LINES = 50_000
WRITERS = 3
LINE = b"oomguard-test flood %d.%d: usb 1-1: reset high-speed USB device number 2\n"


def write_flood(lines: int, tag: int) -> None:
    """Ordinary lines into the kernel log. /dev/kmsg rate-limits each open file to 10
    lines per 5 s (printk_devkmsg=ratelimit): one open per line, as many writers would."""
    for i in range(lines):
        fd = os.open("/dev/kmsg", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, LINE % (tag, i))
        finally:
            os.close(fd)


def start_flood(lines: int = FLOOD_LINES, writers: int = WRITERS) -> list[Process]:
    """Start `writers` processes that print `lines` lines between them."""
    procs = [Process(target=write_flood, args=(lines // writers, n)) for n in range(writers)]
    for p in procs:
        p.start()
    return procs
