"""How a record looks to a person and to a script (`watch` and `demo`).

The human line shows names and paths through `safe_text.escape` (a process names itself,
and a terminal would obey the escapes in its name); the JSON line keeps the values as
they are (JSON escapes control characters itself, and scripts need the raw value).
"""

from __future__ import annotations

import json

from oomguard.records import Constraint, OomKill, OomWarning
from oomguard.safe_text import escape, json_text

_WHY = {
    Constraint.CONTAINER: "its own memory limit",
    Constraint.POD: "the pod's memory limit",
    Constraint.NODE_ALLOCATABLE: "the node-allocatable limit of all pods",
    Constraint.SYSTEM: "the node ran out of memory",
    Constraint.OTHER: "an ancestor cgroup's limit or a cpuset/mempolicy constraint",
}


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}GiB"  # pragma: no cover - the loop always returns


_LIMIT_OF = {
    Constraint.CONTAINER: "its own memory limit",
    Constraint.POD: "the pod's memory limit",
    Constraint.NODE_ALLOCATABLE: "the node-allocatable limit of all pods",
}


def json_line(record: OomKill | OomWarning) -> str:
    body = {k: json_text(v) if isinstance(v, str) else v for k, v in record.to_json_dict().items()}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _where(cgroup: str | None, record: OomKill | OomWarning) -> str:
    ident = record.identity
    if ident.container_id:
        where = f"container {escape(ident.container_id[:12])}"
        if ident.pod_uid:
            where += f" pod {escape(ident.pod_uid)} ({ident.qos})"
        return where
    if ident.pod_uid:
        return f"pod {escape(ident.pod_uid)} ({ident.qos})"
    if ident.unit:
        return escape(ident.unit)
    return f"cgroup {escape(cgroup or '?')}"


def _kernel_doing(warning: OomWarning) -> str:
    """What made the warning fire, in words (the Event message says the same)."""
    if warning.signal == "pressure" and warning.pressure_some_avg10 is not None:
        return f"tasks waited for memory {warning.pressure_some_avg10:.0f}% of the last 10 s"
    if warning.signal == "reclaim" and warning.reclaims_10s:
        return f"the kernel reclaimed at the limit {warning.reclaims_10s} times in 10 s"
    if warning.seconds_to_limit is not None and warning.growth_bytes_per_s:
        return (
            f"growing {human_bytes(int(warning.growth_bytes_per_s))}/s, "
            f"at the limit in ~{warning.seconds_to_limit:.0f} s"
        )
    return f"past the warning level of {warning.warn_at_percent}%"


def warning_human_line(warning: OomWarning) -> str:
    """One line: who, how close to which limit, and why now."""
    percent = 100.0 * warning.working_set_bytes / warning.limit_bytes if warning.limit_bytes else 0
    limit = _LIMIT_OF.get(warning.constraint, "its memory limit")
    return (
        f"{warning.time.strftime('%Y-%m-%dT%H:%M:%S.%fZ')} OOM kill near: "
        f"{_where(warning.cgroup, warning)}: working set {human_bytes(warning.working_set_bytes)} "
        f"of {limit} {human_bytes(warning.limit_bytes)} ({percent:.0f}%), "
        f"{_kernel_doing(warning)} [{warning.signal}]; "
        f"usage with page cache {human_bytes(warning.usage_bytes)}"
    )


def human_line(kill: OomKill) -> str:
    if kill.pid is not None:
        victim = f"pid {kill.pid} ({escape(kill.command or '?')})"
    else:
        victim = "victim unknown (kernel log unreadable)"
    where = _where(kill.cgroup, kill)
    limit = (
        f", limit {human_bytes(kill.memory_limit_bytes)}"
        if kill.memory_limit_bytes is not None
        else ""
    )
    adj = "" if kill.oom_score_adj is None else f", oom_score_adj {kill.oom_score_adj}"
    return (
        f"{kill.time.strftime('%Y-%m-%dT%H:%M:%S.%fZ')} OOM kill: {victim} in {where}: "
        f"{_WHY[kill.constraint]} [{kill.constraint.value}], "
        f"rss {human_bytes(kill.rss_bytes)}{limit}{adj}"
    )
