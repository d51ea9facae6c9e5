"""How far the kernel log's clock is from CLOCK_MONOTONIC.

kmsg stamps records with the scheduler clock, which runs a little apart from
CLOCK_MONOTONIC (1.7 ms on the test host). Detection latency is "now minus the
kernel's stamp", so the demo and the benchmark measure the offset once by writing a
probe record and reading its stamp back. It needs write access to /dev/kmsg (root);
without it the offset is 0 and latencies are over-stated by that much.

The engine needs the offset without writing to the log (syslog(2) mode has no /dev/kmsg
at all), and over days, while the two clocks drift apart (NTP slews CLOCK_MONOTONIC; on
the test host they moved 0.4 ppm apart: 7.6 ms four hours after boot, 0.2 ms more in
the next ten minutes). `KernelClock` learns it from what the engine sees anyway: when
reads return lines, and when counters show the kills whose lines those are.
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

    The offset is bracketed. From above: a read returned a line before the read ended,
    and a kill's line is printed right after the count that a read showed. From below:
    a line that a read returns for the first time was printed after the read before it
    began, and a kill's line after a read that did not show its count yet. Each bound
    loosens by MAX_DRIFT per second of age, the most the two clocks may drift apart
    (the kernel's NTP frequency limit), so fresh bounds win and the bracket follows a
    drift; bounds that contradict each other give way to the newer one. The estimate is
    the middle of the bracket, `uncertainty_s` its width (infinite while one side is
    unknown). `offset_us` seeds it with a measured offset (`kernel_clock_offset_us`),
    as both sides, taken at `at_mono` (None: fixed, only replaced by tighter bounds).
    Pure: the caller says what time it is.
    """

    MAX_DRIFT = 500e-6  # s/s: MAXFREQ, the NTP frequency adjustment limit (500 ppm)

    def __init__(self, offset_us: int | None = None, *, at_mono: float | None = None) -> None:
        seed = None if offset_us is None else (offset_us / 1e6, at_mono)
        self._upper: tuple[float, float | None] | None = seed
        self._lower: tuple[float, float | None] | None = seed

    def _aged(
        self, bound: tuple[float, float | None] | None, now: float, sign: int
    ) -> float | None:
        if bound is None:
            return None
        value, at = bound
        return value if at is None else value + sign * self.MAX_DRIFT * max(0.0, now - at)

    def bound_above(self, offset_s: float, at_mono: float) -> None:
        """The offset was at most `offset_s` at `at_mono`."""
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
    ) -> None:
        """A read that ended at `ended_mono` returned new lines stamped `oldest_us` ..
        `newest_us`; the read before it (or a check that found nothing new) began at
        `previous_mono`."""
        self.bound_above(ended_mono - newest_us / 1e6, ended_mono)
        if oldest_us is not None and previous_mono is not None:
            self.bound_below(previous_mono - oldest_us / 1e6, ended_mono)

    def offset_s(self, now_mono: float) -> float | None:
        """Seconds to add to a stamp to get CLOCK_MONOTONIC; None: not known yet."""
        upper = self._aged(self._upper, now_mono, +1)
        lower = self._aged(self._lower, now_mono, -1)
        if upper is None or lower is None:
            return upper if upper is not None else lower
        return (upper + lower) / 2

    def uncertainty_s(self, now_mono: float) -> float:
        """The width of the bracket (inf while a side is unknown)."""
        upper = self._aged(self._upper, now_mono, +1)
        lower = self._aged(self._lower, now_mono, -1)
        if upper is None or lower is None:
            return float("inf")
        return max(0.0, upper - lower)

    def monotonic(self, stamp_us: int, now_mono: float) -> float | None:
        """When a line stamped `stamp_us` was printed, on CLOCK_MONOTONIC (None: unknown),
        give or take half of `uncertainty_s`."""
        offset = self.offset_s(now_mono)
        return None if offset is None else stamp_us / 1e6 + offset
