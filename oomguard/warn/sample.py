"""What a cgroup's memory looks like now: usage, working set, limit, reclaim, pressure.

The working set is the kubelet's (`cadvisor`'s `WorkingSet`): usage minus inactive file
pages, floored at 0. It is what the kubelet evicts on and what the kernel cannot simply
drop: page cache read once and not touched again sits on the inactive file list and is
reclaimed at the limit without harm, so a container streaming a big file through a
small limit sits at 100 % usage all day and is in no danger. A warning resting on usage
alone would fire for it forever; one resting on the working set does not.

Two reads: `read_usage` is the cheap one (one small file), taken on every look;
`read_sample` adds memory.stat (inactive file), the reclaim count and the pressure, and
is taken only when usage alone is close enough to the limit that the working set
matters (usage >= working set, so a usage below the early level means a working set
below it too).

- Reclaim forced by the limit: v2 `memory.events` `max` (+ `high`), the times usage was
  about to pass the limit; v1 `memory.failcnt`, the times a charge failed. Both count up
  while the kernel reclaims to keep the cgroup under its limit. (v1's failcnt stays 0 on
  kernel 6.18: the watcher adds the cgroup's vmpressure signals, `push`.)
- Pressure: v2 `memory.pressure` `some avg10`, the share of the last 10 s in which some
  task of the cgroup waited for memory (PSI). v1 has none (None).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from oomguard.cgroups.hierarchy import CgroupVersion

# v1 prints PAGE_COUNTER_MAX * PAGE_SIZE (rounded) for "no limit"; v2 prints "max".
_NO_LIMIT_V1 = 1 << 62
_MAX_READ = 8192  # memory.stat is ~1.5 KiB on v1, ~1 KiB on v2
# A counter of the kernel's is at most 2**64 - 1 (20 digits). A longer run of digits is
# not the kernel's and is refused before int() sees it: Python raises ValueError on
# more than 4300 digits, which would end a look with an error instead of a None.
_MAX_DIGITS = 20


def _number(text: str) -> int | None:
    """A kernel counter's text as a number; None for anything else."""
    if 0 < len(text) <= _MAX_DIGITS and text.isascii() and text.isdigit():
        return int(text)
    return None


def parse_single_int(text: str) -> int | None:
    """A file holding one number (memory.usage_in_bytes); "max" and garbage give None."""
    return _number(text.strip())


def parse_flat_keyed(text: str) -> dict[str, int]:
    """`key value` lines (memory.stat, memory.events); odd lines are skipped."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            value = _number(parts[1])
            if value is not None:
                out[parts[0]] = value
    return out


@dataclass(frozen=True, slots=True)
class MemorySample:
    """One look at a cgroup (bytes; None: not readable or not known on this version)."""

    at: float  # monotonic seconds
    usage_bytes: int
    limit_bytes: int | None
    working_set_bytes: int | None = None  # None: only usage was read
    limit_hits: int | None = None  # cumulative: v2 memory.events max+high, v1 failcnt
    pressure_some_avg10: float | None = None  # percent, v2 only
    oom_kills: int | None = None  # cumulative oom_kill count; None: not read


def parse_limit(version: CgroupVersion, text: str) -> int | None:
    """memory.max / memory.limit_in_bytes; None for no limit or an unreadable value."""
    value = parse_single_int(text)
    if value is None or (version is CgroupVersion.V1 and value >= _NO_LIMIT_V1):
        return None
    return value


def inactive_file(version: CgroupVersion, stat_text: str) -> int | None:
    """The inactive file pages of memory.stat (v1: the hierarchical total, as cAdvisor)."""
    key = "inactive_file" if version is CgroupVersion.V2 else "total_inactive_file"
    return parse_flat_keyed(stat_text).get(key)


def working_set(usage_bytes: int, inactive_file_bytes: int | None) -> int:
    """cAdvisor's working set: usage minus inactive file, never below 0."""
    if inactive_file_bytes is None or inactive_file_bytes > usage_bytes:
        return usage_bytes if inactive_file_bytes is None else 0
    return usage_bytes - inactive_file_bytes


def limit_hits_v2(events_text: str) -> int | None:
    """memory.events' max + high: each a time usage was about to pass a boundary."""
    events = parse_flat_keyed(events_text)
    if "max" not in events:
        return None
    return events["max"] + events.get("high", 0)


def oom_kills(text: str) -> int | None:
    """The `oom_kill` count of memory.events (v2) or memory.oom_control (v1)."""
    return parse_flat_keyed(text).get("oom_kill")


def pressure_some_avg10(text: str) -> float | None:
    """The `some avg10=` figure of a PSI file, in percent; None when absent or odd."""
    for line in text.splitlines():
        if not line.startswith("some "):
            continue
        for field in line.split()[1:]:
            name, _, value = field.partition("=")
            if name == "avg10":
                try:
                    figure = float(value)
                except ValueError:
                    return None
                return figure if 0.0 <= figure <= 100.0 else None
    return None


def limit_file(version: CgroupVersion) -> str:
    return "memory.max" if version is CgroupVersion.V2 else "memory.limit_in_bytes"


def _read_text(fd: int) -> str:
    return os.pread(fd, _MAX_READ, 0).decode("ascii", "replace")


def read_limit(version: CgroupVersion, directory: str) -> int | None:
    """A cgroup's memory limit from its one file (None: no limit). FileNotFoundError
    when the cgroup is gone or is no memory cgroup."""
    fd = os.open(os.path.join(directory, limit_file(version)), os.O_RDONLY | os.O_CLOEXEC)
    try:
        return parse_limit(version, _read_text(fd))
    finally:
        os.close(fd)


class CgroupFiles:
    """The files of one cgroup a watcher looks at, opened once and read with pread.

    Opened once because a node watches hundreds of cgroups and the cheap look runs
    every few seconds for each: an open/read/close costs three system calls and a path
    walk, a pread one. A cgroup removed makes the reads fail (ENODEV/ENOENT): OSError
    goes to the caller, which drops the cgroup.
    """

    def __init__(self, version: CgroupVersion, directory: str) -> None:
        self.version = version
        self.directory = directory
        v2 = version is CgroupVersion.V2
        self._usage = self._open("memory.current" if v2 else "memory.usage_in_bytes")
        self._fds: list[int] = [self._usage]
        try:
            self._limit = self._optional(limit_file(version))
            self._stat = self._optional("memory.stat")
            self._hits = self._optional("memory.events" if v2 else "memory.failcnt")
            self._pressure = self._optional("memory.pressure") if v2 else -1
            # The kill count, read after the rest: a look that finds it risen saw the
            # memory of a victim not yet freed, not a container nearing its limit.
            self._kills = self._hits if v2 else self._optional("memory.oom_control")
        except OSError:  # e.g. EMFILE half-way: the ones already open are not leaked
            self.close()
            raise

    def _open(self, name: str) -> int:
        return os.open(os.path.join(self.directory, name), os.O_RDONLY | os.O_CLOEXEC)

    def _optional(self, name: str) -> int:
        try:
            fd = self._open(name)
        except FileNotFoundError:
            return -1
        self._fds.append(fd)
        return fd

    def usage(self) -> int:
        value = parse_single_int(_read_text(self._usage))
        if value is None:
            raise OSError(f"unreadable usage in {self.directory}")
        return value

    def limit(self) -> int | None:
        return None if self._limit < 0 else parse_limit(self.version, _read_text(self._limit))

    def oom_kills(self) -> int | None:
        """The cgroup's kill count now (None: not readable here)."""
        return None if self._kills < 0 else oom_kills(_read_text(self._kills))

    def read_usage(self, at: float, limit_bytes: int | None) -> MemorySample:
        """The cheap look: usage only (the limit as last read)."""
        return MemorySample(at=at, usage_bytes=self.usage(), limit_bytes=limit_bytes)

    def read_sample(self, at: float, limit_bytes: int | None) -> MemorySample:
        """The full look: usage, working set, reclaim count, pressure."""
        usage = self.usage()
        inactive = None if self._stat < 0 else inactive_file(self.version, _read_text(self._stat))
        pressure = None if self._pressure < 0 else pressure_some_avg10(_read_text(self._pressure))
        hits: int | None = None
        kills: int | None = None
        if self._hits >= 0:
            text = _read_text(self._hits)
            if self.version is CgroupVersion.V2:
                hits, kills = limit_hits_v2(text), oom_kills(text)
            else:
                hits = parse_single_int(text)
        if self.version is CgroupVersion.V1:
            kills = self.oom_kills()
        return MemorySample(
            at=at,
            usage_bytes=usage,
            limit_bytes=limit_bytes,
            working_set_bytes=working_set(usage, inactive),
            limit_hits=hits,
            pressure_some_avg10=pressure,
            oom_kills=kills,
        )

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
