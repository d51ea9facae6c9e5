"""The memory counters of one cgroup, and the question "did it kill since last time?".

A wake-up from inotify or an eventfd is only a hint (v2's memory.events changes on
every `max` event too, several times before a kill), so every wake-up re-reads the
counters and diffs `oom_kill`. The parsers are pure; `read_counters` is the only I/O.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from oomguard.cgroups.hierarchy import CgroupVersion


@dataclass(frozen=True)
class MemoryCounters:
    """What one read of a cgroup's counters said.

    `oom_kill` counts kills of processes in this cgroup itself (v1's counter is local;
    on v2 it comes from memory.events.local), so one kill is counted by exactly one
    cgroup however many ancestors also see it. `limit_hits` rises when this cgroup's
    own limit was reached: v2's local `oom` (OOM invocations). v1 has no such counter
    (and its `memory.failcnt` stays 0 through a limit kill on kernel 6.18), so on v1
    the watcher takes that evidence from the OOM eventfd instead (and, for kills while
    the agent was down, from the high-water mark) and this stays 0.
    """

    oom_kill: int
    limit_hits: int
    group_kills: int = 0


def parse_flat_keyed(text: str) -> dict[str, int]:
    """`key value` lines (memory.events, memory.oom_control); odd lines are skipped."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        key, value = parts
        if value.isascii() and value.isdigit():
            out[key] = int(value)
    return out


def parse_single_int(text: str) -> int | None:
    """A file holding one number (memory.failcnt); v2's "max" and garbage give None."""
    value = text.strip()
    if value.isascii() and value.isdigit():
        return int(value)
    return None


def counters_from_v2(events_local: dict[str, int]) -> MemoryCounters:
    return MemoryCounters(
        oom_kill=events_local.get("oom_kill", 0),
        limit_hits=events_local.get("oom", 0),
        group_kills=events_local.get("oom_group_kill", 0),
    )


def counters_from_v1(oom_control: dict[str, int]) -> MemoryCounters:
    return MemoryCounters(oom_kill=oom_control.get("oom_kill", 0), limit_hits=0)


def kills_between(before: MemoryCounters | None, after: MemoryCounters) -> int:
    """How many kills happened between two reads.

    A counter that went down means the cgroup was removed and made again under the
    same name between the reads: everything the new one counted is new.
    """
    if before is None:
        return 0
    if after.oom_kill < before.oom_kill:
        return after.oom_kill
    return after.oom_kill - before.oom_kill


def resume_baseline(on_disk: MemoryCounters | None, handed_on: int | None) -> MemoryCounters | None:
    """The counters a watch starts a cgroup from when the agent starts.

    `handed_on` None (no snapshot of this boot): what is on disk, so kills counted before
    the agent first ran are history, not news. Otherwise the snapshot's value for this
    cgroup (0 when the snapshot does not list it: it had none then, or did not exist),
    so the kills counted while the agent was down show up as increases; a counter lower
    than that can only belong to a cgroup made again under the same name, which counted
    from 0. Only `oom_kill` is resumed: the live limit evidence starts from disk (whose
    limit the kills counted meanwhile hit is read once, by `CgroupWatch.start`).
    """
    if on_disk is None or handed_on is None:
        return on_disk
    start = handed_on if on_disk.oom_kill >= handed_on else 0
    return MemoryCounters(start, on_disk.limit_hits, on_disk.group_kills)


def limit_hits_rose(saved: int | None, on_disk: int) -> bool | None:
    """Whether a cgroup's own `oom` count rose since a snapshot said `saved`.

    None: unknown (no value was saved). As for `oom_kill` (`resume_baseline`), a count
    lower than the snapshot's belongs to a cgroup made again under the same name, which
    counted from 0.
    """
    if saved is None:
        return None
    return on_disk > saved or 0 < on_disk < saved


def limit_was_hit(before: MemoryCounters | None, after: MemoryCounters) -> bool:
    if before is None:
        return False
    return after.limit_hits != before.limit_hits


def _read(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096).decode("ascii", errors="replace")
    finally:
        os.close(fd)


def read_counters(version: CgroupVersion, directory: str | Path) -> MemoryCounters | None:
    """Read one cgroup's counters; None when the cgroup is gone (a normal event)."""
    try:
        if version is CgroupVersion.V2:
            try:
                text = _read(f"{directory}/memory.events.local")
            except FileNotFoundError:
                # Kernels before 5.7 have no .local; the hierarchical file is the best
                # there is and the caller's dedupe by kmsg still keeps one record a kill.
                text = _read(f"{directory}/memory.events")
            return counters_from_v2(parse_flat_keyed(text))
        return counters_from_v1(parse_flat_keyed(_read(f"{directory}/memory.oom_control")))
    except (FileNotFoundError, NotADirectoryError, ProcessLookupError):
        return None
    except OSError as exc:
        if exc.errno == 19:  # ENODEV: the cgroup is being removed
            return None
        raise


@dataclass(frozen=True)
class MemoryUse:
    limit_bytes: int | None
    usage_bytes: int | None  # the peak where the kernel keeps one, else current


_NO_LIMIT_V1 = 1 << 62  # v1 prints PAGE_COUNTER_MAX * PAGE_SIZE (rounded) for "no limit"


def _read_int(directory: str | Path, name: str) -> int | None:
    try:
        return parse_single_int(_read(f"{directory}/{name}"))
    except OSError:
        return None


def read_memory_use(version: CgroupVersion, directory: str | Path) -> MemoryUse:
    """Limit and peak usage, for the record; anything unreadable is None."""
    if version is CgroupVersion.V2:
        peak = read_peak_and_limit(version, directory)
        if peak.usage_bytes is not None:
            return peak
        return MemoryUse(peak.limit_bytes, _read_int(directory, "memory.current"))
    return read_peak_and_limit(version, directory)


def read_peak_and_limit(version: CgroupVersion, directory: str | Path) -> MemoryUse:
    """The limit and the high-water mark only (no current usage in its place), for
    `classify.limit_reached_while_down`; anything unreadable (v2 before 5.19 has no
    memory.peak) and "no limit" are None."""
    if version is CgroupVersion.V2:
        return MemoryUse(_read_int(directory, "memory.max"), _read_int(directory, "memory.peak"))
    limit = _read_int(directory, "memory.limit_in_bytes")
    if limit is not None and limit >= _NO_LIMIT_V1:
        limit = None
    return MemoryUse(limit, _read_int(directory, "memory.max_usage_in_bytes"))
