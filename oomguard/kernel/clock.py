"""Kernel log stamps on CLOCK_MONOTONIC, without writing to the log.

What the kernel guarantees, and what follows:
- A record's stamp is `local_clock()` when the record was stored (printk_ringbuffer:
  `ts_nsec`), before any reader can see it. `local_clock()` is the scheduler clock:
  on x86 with a stable TSC the TSC scaled to ns from boot, else filtered against
  CLOCK_MONOTONIC. Both it and CLOCK_MONOTONIC start near 0 at boot and stop in
  suspend; they differ by where each began (1.7 ms on the test host) and by their
  rates: CLOCK_MONOTONIC is slewed by NTP, at most MAXFREQ (500 ppm) apart from the
  raw counter, on the test host 0.4 ppm (7.6 ms four hours after boot). No interface
  gives both clocks at one instant to a reader that may not write to /dev/kmsg (the
  agent's unprivileged container cannot; syslog(2) has no write at all).
- So every read bounds the offset (CLOCK_MONOTONIC minus stamp) from above: the
  lines it returns were printed before it ended. A read made the moment a kernel
  push arrived (kmsg POLLIN, a cgroup's OOM eventfd or memory.events inotify, which
  fire within milliseconds of the kill's lines) returned lines printed just before it:
  its bound is tight to that delay. A read made for another reason (start, resync, an
  idle syslog(2) read every 5 s) may return a line printed long before: a true bound,
  but a loose one.
- From below, the only evidence is "this line was not there at the last look", and
  the last look may be a minute (or, idle on a real node, hours) old.

The old estimate, the middle of that bracket, was therefore early by half the idle
time: 30 s after 60 s idle. The middle is used only while the bracket is narrow
(TIGHT_BRACKET_S: the reads of one report follow each other by milliseconds); else the
estimate is the tightest upper bound seen from prompt reads (the anchor), kept as it
was (real drift is ppm: 0.6 ms in 10 min at 1 ppm) and replaced by a newer prompt bound
whenever that is lower than the old one could be by now (aged at MAXFREQ), which is
also how a drift is followed: a kill's own prompt read re-anchors it. Before any
prompt read, the prior is 0 (both clocks count from boot). Either is clamped into the
bracket of every bound seen, each aged by MAXFREQ (`bound_above`, `bound_below`), so
a wrong prior or stale anchor cannot leave what the reads prove.

`middle()` (the bracket's centre and its width, `uncertainty_s`) is what pairing a
bare kill line with a counter increase uses: there the question is "could this line
be that kill", which the bracket answers; `monotonic()` is when it was printed.

`kernel_clock_offset_us` (a probe written to /dev/kmsg) is for the benchmark's
reference time only: the agent never writes to the kernel log.
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


class KernelClock:
    """Kernel log stamps (microseconds since boot) on CLOCK_MONOTONIC, learnt as it goes.

    The bracket: from above, a read returned a line before the read ended, and a kill's
    line is printed right after the count that a read showed; from below, a line that a
    read returns for the first time was printed after the read before it began, and a
    kill's line after a read that did not show its count yet. Each bound loosens by
    MAX_DRIFT per second of age, the most the two clocks may drift apart (the kernel's
    NTP frequency limit), so fresh bounds win and the bracket follows a drift; bounds
    that contradict each other give way to the newer one. The estimate (`offset_s`) is
    the prompt reads' anchor, else the prior PRIOR_OFFSET_S, clamped into the bracket
    (module docstring). `offset_us` seeds both with a measured offset, taken at
    `at_mono` (None: fixed, only replaced by tighter bounds). Pure: the caller says
    what time it is.
    """

    MAX_DRIFT = 500e-6  # s/s: MAXFREQ, the NTP frequency adjustment limit (500 ppm)
    PRIOR_OFFSET_S = 0.0  # both clocks count from boot
    # A bracket this narrow (both sides fresh: the reads of a kill's own report follow
    # each other by milliseconds) is better than either side: its middle is the estimate.
    TIGHT_BRACKET_S = 0.02

    def __init__(self, offset_us: int | None = None, *, at_mono: float | None = None) -> None:
        seed = None if offset_us is None else (offset_us / 1e6, at_mono)
        self._upper: tuple[float, float | None] | None = seed
        self._lower: tuple[float, float | None] | None = seed
        self._anchor: tuple[float, float | None] | None = seed

    def _aged(
        self, bound: tuple[float, float | None] | None, now: float, sign: int
    ) -> float | None:
        if bound is None:
            return None
        value, at = bound
        return value if at is None else value + sign * self.MAX_DRIFT * max(0.0, now - at)

    def bound_above(self, offset_s: float, at_mono: float, *, prompt: bool = False) -> None:
        """The offset was at most `offset_s` at `at_mono`; `prompt`: the evidence came the
        moment the kernel pushed it, so the bound is tight (an anchor for the estimate)."""
        if prompt:
            anchor = self._aged(self._anchor, at_mono, +1)
            if anchor is None or offset_s < anchor:
                self._anchor = (offset_s, at_mono)
        current = self._aged(self._upper, at_mono, +1)
        if current is None or offset_s < current:
            self._upper = (offset_s, at_mono)
            lower = self._aged(self._lower, at_mono, -1)
            if lower is not None and lower > offset_s:
                self._lower = None  # contradicted: the older side gives way

    def bound_below(self, offset_s: float, at_mono: float) -> None:
        """The offset was at least `offset_s` at `at_mono`."""
        current = self._aged(self._lower, at_mono, -1)
        if current is None or offset_s > current:
            self._lower = (offset_s, at_mono)
            upper = self._aged(self._upper, at_mono, +1)
            if upper is not None and upper < offset_s:
                self._upper = None

    def note_read(
        self,
        ended_mono: float,
        newest_us: int,
        *,
        oldest_us: int | None = None,
        previous_mono: float | None = None,
        prompt: bool = False,
    ) -> None:
        """A read that ended at `ended_mono` returned new lines stamped `oldest_us` ..
        `newest_us`; the read before it (or a check that found nothing new) began at
        `previous_mono`; `prompt`: it was made the moment a kernel signal arrived."""
        self.bound_above(ended_mono - newest_us / 1e6, ended_mono, prompt=prompt)
        if oldest_us is not None and previous_mono is not None:
            self.bound_below(previous_mono - oldest_us / 1e6, ended_mono)

    def _bracket(self, now_mono: float) -> tuple[float | None, float | None]:
        return self._aged(self._lower, now_mono, -1), self._aged(self._upper, now_mono, +1)

    def offset_s(self, now_mono: float) -> float:
        """Seconds to add to a stamp to get CLOCK_MONOTONIC: the best estimate."""
        lower, upper = self._bracket(now_mono)
        if lower is not None and upper is not None and upper - lower <= self.TIGHT_BRACKET_S:
            return (upper + lower) / 2 if upper >= lower else lower
        estimate = self.PRIOR_OFFSET_S if self._anchor is None else self._anchor[0]
        if upper is not None:
            estimate = min(estimate, upper)
        if lower is not None:
            estimate = max(estimate, lower)
        return estimate

    def middle_offset_s(self, now_mono: float) -> float | None:
        """The bracket's centre (one side alone while the other is unknown; None: no read
        yet), the reference for `uncertainty_s`."""
        lower, upper = self._bracket(now_mono)
        if upper is None or lower is None:
            return upper if upper is not None else lower
        return (upper + lower) / 2

    def uncertainty_s(self, now_mono: float) -> float:
        """The width of the bracket (inf while a side is unknown)."""
        lower, upper = self._bracket(now_mono)
        if upper is None or lower is None:
            return float("inf")
        return max(0.0, upper - lower)

    def monotonic(self, stamp_us: int, now_mono: float) -> float:
        """When a line stamped `stamp_us` was printed, on CLOCK_MONOTONIC."""
        return stamp_us / 1e6 + self.offset_s(now_mono)

    def middle(self, stamp_us: int, now_mono: float) -> float | None:
        """The bracket's centre for a line stamped `stamp_us` (None: nothing read yet),
        give or take half of `uncertainty_s`: what pairing by time uses."""
        offset = self.middle_offset_s(now_mono)
        return None if offset is None else stamp_us / 1e6 + offset
