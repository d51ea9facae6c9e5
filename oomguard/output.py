"""How a record looks to a person and to a script (`watch` and `demo`).

The human line shows names and paths through `safe_text.escape` (a process names itself,
and a terminal would obey the escapes in its name); the JSON line keeps the values as
they are (JSON escapes control characters itself, and scripts need the raw value).
"""

from __future__ import annotations

import json

from oomguard.records import Constraint, OomKill
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


def json_line(kill: OomKill) -> str:
    body = {k: json_text(v) if isinstance(v, str) else v for k, v in kill.to_json_dict().items()}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def human_line(kill: OomKill) -> str:
    ident = kill.identity
    if kill.pid is not None:
        victim = f"pid {kill.pid} ({escape(kill.command or '?')})"
    else:
        victim = "victim unknown (kernel log unreadable)"
    if ident.container_id:
        where = f"container {escape(ident.container_id[:12])}"
        if ident.pod_uid:
            where += f" pod {escape(ident.pod_uid)} ({ident.qos})"
    elif ident.unit:
        where = escape(ident.unit)
    else:
        where = f"cgroup {escape(kill.cgroup or '?')}"
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
