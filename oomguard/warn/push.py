"""Asking the kernel to wake the watcher: v1 usage thresholds, v2 PSI triggers.

- cgroup v1: `cgroup.event_control` takes "<eventfd> <fd of memory.usage_in_bytes>
  <bytes>" and signals the eventfd whenever usage crosses that many bytes, either way
  (checked every ~128 page charges, so within ~0.5 MiB). Registered at the early level,
  it replaces the cheap looks below it: nothing is read until usage gets there.
- cgroup v2: a trigger written to `memory.pressure` ("some 150000 1000000": tasks
  stalled 150 ms within 1 s) makes the file poll with POLLPRI when reclaim stalls the
  cgroup's tasks; the watcher then looks at once. There is no usage threshold on v2
  (memory.high would throttle, not notify), so below the early level it samples.

- cgroup v1, reclaim: `memory.pressure_level` (vmpressure) registered the same way
  with "low,local" signals the eventfd each time reclaim scanned the cgroup's own pages
  (every 512 pages scanned, also at a limit). It is not polled (a cgroup streaming a
  file through its limit signals hundreds of times a second): the count is read on each
  full look and stands in for `memory.failcnt`, which stays 0 on kernel 6.18.

All need write access to the cgroup's files. On a read-only cgroup mount (EROFS), or
where the kernel has no PSI, registration fails and the watcher samples instead: said
once, not per cgroup. Closing the descriptor unregisters (both kernels drop the
registration when its file is released).
"""

from __future__ import annotations

import os

from oomguard.cgroups.watch import register_v1_event

PSI_TRIGGER = b"some 150000 1000000"


def register_usage_threshold(directory: str, threshold_bytes: int) -> int:
    """A v1 eventfd signalled when the cgroup's usage crosses `threshold_bytes`."""
    return register_v1_event(directory, "memory.usage_in_bytes", str(threshold_bytes))


def register_vmpressure(directory: str) -> int:
    """A v1 eventfd counting reclaim in the cgroup itself (vmpressure, any level)."""
    return register_v1_event(directory, "memory.pressure_level", "low,local")


def register_psi_trigger(directory: str) -> int:
    """A v2 memory.pressure descriptor that polls POLLPRI when the cgroup stalls."""
    fd = os.open(directory + "/memory.pressure", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.write(fd, PSI_TRIGGER)
    except OSError:
        os.close(fd)
        raise
    return fd


def drain_eventfd(fd: int) -> int:
    """Reset a signalled eventfd so poll() blocks again; how many signals it held."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0
