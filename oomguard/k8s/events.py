"""core/v1 Event bodies for OOM kills: reasons, names, messages, aggregation.

Reasons (a public contract: users filter on them with
`kubectl get events --field-selector reason=...`):

- `OOMKilled`: the container's own memory limit, or its pod's, was reached
  (constraint `container` or `pod`). The workload asked for too little memory: raise the
  limit or fix the leak.
- `OOMKilledNodePressure`: the victim was within its own limits, but something above it
  ran out: the node-allocatable cgroup of all pods (`node-allocatable`), the whole
  machine (`system`), or another ancestor limit, cpuset or mempolicy (`other`). The node
  is overcommitted: look at its other pods and its reservations, not at this container.

- `OOMImminent` (before the kill, `oomguard.warn`): the container's working set is near
  the limit that binds it, or the kernel is reclaiming hard to keep it under; one per
  episode, aggregated like the kills. On the pod (fieldPath of the container) for a
  container or pod-level limit, on the Node for the node-allocatable one.

Kills that cannot be put on a pod go on the Node (kind Node, Event in namespace
`default`, as the kubelet does for its node events) with the same two reasons.

Why core/v1 without `eventTime`: it is what `kubectl get events` and every dashboard
read, and its legacy validation lets count/lastTimestamp be patched, which is how
aggregation works there. Setting `eventTime` would turn on the strict rules (microsecond
precision, `action` and reporting fields required) for no gain. `action` is not set:
it would claim oomguard acted, and the kernel did.

Names: `<object-name>.<16 hex digits>`, the digits a hash of the aggregation key (event
namespace, involved object uid or name, container, reason) and the start of the window.
So the name is the same for every repeat within a window, in this agent or a restarted
one, which turns a resend into a 409 AlreadyExists (then a patch) instead of a
duplicate. Windows are fixed, epoch-aligned slices of `event_window_s`: computable
from the kill's time alone, with no state to lose (a repeat just after a boundary
starts a new Event; that is the price). An update sets count and lastTimestamp and
carries the newest kill's message: its pid and RSS are what a person looks at next.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from oomguard import safe_text
from oomguard.k8s.attribution import Target, TargetKind
from oomguard.records import Constraint, OomKill, OomWarning

REASON_LIMIT = "OOMKilled"
REASON_NODE_PRESSURE = "OOMKilledNodePressure"
REASON_IMMINENT = "OOMImminent"
REPORTING_COMPONENT = "oomguard"
# Set by the sender on every create/patch: the delivery batch the Event last absorbed,
# so a retried delivery whose first try reached the server is recognised, not counted twice.
DELIVERY_ANNOTATION = "oomguard.io/delivery"

DEFAULT_EVENT_WINDOW_S = 600.0
MESSAGE_LIMIT_BYTES = 1024  # the API's limit on Event.message
NAME_LIMIT = 253  # a DNS subdomain
_REPORTING_INSTANCE_LIMIT = 128
_HASH_CHARS = 16
_NODE_EVENT_NAMESPACE = "default"
_MIB = 1024 * 1024
_INVALID_NAME_CHARS = re.compile(r"[^a-z0-9.-]+")

_LIMIT_CONSTRAINTS = frozenset({Constraint.CONTAINER, Constraint.POD})

_WHY = {
    Constraint.CONTAINER: "its memory limit{limit} was reached",
    Constraint.POD: "the pod's memory limit{limit} was reached",
    Constraint.NODE_ALLOCATABLE: (
        "the node ran out of memory for pods (the node-allocatable limit{limit} was reached)"
    ),
    Constraint.SYSTEM: "the node ran out of memory (system OOM)",
    Constraint.OTHER: (
        "an ancestor cgroup's limit{limit}, a cpuset or a memory policy constraint was reached"
    ),
}


def reason_for(constraint: Constraint) -> str:
    return REASON_LIMIT if constraint in _LIMIT_CONSTRAINTS else REASON_NODE_PRESSURE


def timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with a Z, to the second (metav1.Time's precision)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def window_start(at: datetime, window_s: float) -> datetime:
    """The start of the fixed window `at` falls in."""
    if window_s <= 0:
        raise ValueError("event_window_s must be positive")
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    epoch = at.timestamp()
    return datetime.fromtimestamp(epoch - epoch % window_s, UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class AggregationKey:
    """Kills with equal keys in the same window are one Event."""

    namespace: str  # the Event's namespace
    involved: str  # the involved object's uid, or its name when the uid is unknown
    container: str  # "" for pod-level and node events
    reason: str

    def token(self) -> str:
        # NUL cannot occur in any of the parts, so distinct keys never collide here.
        return "\0".join((self.namespace, self.involved, self.container, self.reason))


def _name_prefix(object_name: str) -> str:
    """A DNS-subdomain-safe stem from an object name (pod and node names already are;
    this guards against what a malformed object or a test could send)."""
    stem = _INVALID_NAME_CHARS.sub("-", object_name.lower())
    stem = re.sub(r"\.{2,}", ".", stem)
    stem = stem[: NAME_LIMIT - _HASH_CHARS - 1]
    stem = re.sub(r"(^[^a-z0-9]+)|([^a-z0-9]+$)", "", stem)
    stem = re.sub(r"-+\.|\.-+", ".", stem)
    return stem or "oomguard"


def event_name(key: AggregationKey, object_name: str, start: datetime) -> str:
    digest = hashlib.sha256(f"{key.token()}\0{timestamp(start)}".encode()).hexdigest()
    return f"{_name_prefix(object_name)}.{digest[:_HASH_CHARS]}"


def truncate_utf8(text: str, limit: int = MESSAGE_LIMIT_BYTES) -> str:
    """`text` cut to at most `limit` bytes of UTF-8, never splitting a character or an
    escape sequence, with an ellipsis to say something was cut."""
    return safe_text.truncate_utf8(text, limit)


def safe_message(message: str) -> str:
    """An Event message as the API gets it: nothing a terminal acts on, at most 1 KiB.

    Messages made here are escaped value by value (`format_message`) and pass
    unchanged; one built elsewhere with a raw control character in it is escaped whole,
    so no Event ever carries one (`kubectl get events` prints messages raw).
    """
    if not safe_text.is_safe(message):
        message = safe_text.escape(message)
    return truncate_utf8(message)


def _mib(value: int) -> str:
    return f"{value / _MIB:.1f} MiB"


def _limit_bytes(kill: OomKill, target: Target) -> int | None:
    if kill.memory_limit_bytes is not None:
        return kill.memory_limit_bytes
    if kill.constraint is Constraint.CONTAINER:
        return target.container_limit_bytes
    return None


def _quote(text: str) -> str:
    """A name in double quotes, escaped by the one rule (`safe_text.escape`).

    Kernel comm names may hold quotes, spaces, escapes, anything but NUL: the quote is
    escaped too, so the name ends where the quotes say.
    """
    return '"' + safe_text.escape(text).replace('"', '\\"') + '"'


def format_message(kill: OomKill, target: Target) -> str:
    """One read tells what died, where, why, and how much it held."""
    if target.kind is TargetKind.POD and target.container:
        where = f"Container {_quote(target.container)}"
        if target.container_kind is not None and target.container_kind.value != "container":
            where = (
                f"{target.container_kind.value.capitalize()} container {_quote(target.container)}"
            )
    elif target.kind is TargetKind.POD:
        where = "A process in the pod (outside its containers)"
    else:
        where = (
            f"A process in cgroup {safe_text.escape(kill.cgroup)}" if kill.cgroup else "A process"
        )
    limit = _limit_bytes(kill, target)
    why = _WHY[kill.constraint].format(limit=f" ({_mib(limit)})" if limit is not None else "")
    parts = [f"{where} was OOM-killed: {why}."]
    if kill.pid is not None:
        victim = f"Killed process {_quote(kill.command or '?')} (pid {kill.pid}"
        if target.main_process is True:
            victim += ", the container's main process"
        elif target.main_process is False:
            victim += ", not the container's main process"
        victim += ")"
        if kill.rss_bytes is not None:
            victim += f" holding {_mib(kill.rss_bytes)} RSS"
        if kill.oom_score_adj is not None:
            victim += f", oom_score_adj {kill.oom_score_adj}"
        parts.append(victim + ".")
    else:
        parts.append("The victim process is unknown (kernel log unreadable).")
    if kill.memory_usage_bytes is not None and kill.constraint in _LIMIT_CONSTRAINTS:
        parts.append(f"Cgroup usage at the kill: {_mib(kill.memory_usage_bytes)}.")
    if kill.group_kill:
        parts.append("Part of a memory.oom.group kill of the whole cgroup.")
    if target.unresolved:
        parts.append(f"Reported on the node: {safe_text.escape(target.unresolved)}.")
    return truncate_utf8(" ".join(parts))


_LIMIT_NAMES = {
    Constraint.CONTAINER: "its memory limit",
    Constraint.POD: "the pod's memory limit",
    Constraint.NODE_ALLOCATABLE: "the node-allocatable limit of all pods",
}


_NODE_PODS = "The node's pods"


def _whose(warning: OomWarning, target: Target) -> str:
    if target.kind is TargetKind.POD and target.container:
        return f"Container {_quote(target.container)}"
    if target.kind is TargetKind.POD:
        return "The pod"
    if warning.constraint is Constraint.NODE_ALLOCATABLE:
        return _NODE_PODS
    return f"Cgroup {safe_text.escape(warning.cgroup)}"


def _kernel_doing(warning: OomWarning) -> str:
    """What the kernel is doing about it, in words."""
    said: list[str] = []
    if warning.reclaims_10s:
        said.append(
            "the kernel is reclaiming to stay under the limit "
            f"({warning.reclaims_10s} times in 10 s)"
        )
    if warning.pressure_some_avg10 is not None and warning.pressure_some_avg10 >= 1.0:
        said.append(f"tasks waited for memory {warning.pressure_some_avg10:.0f}% of the last 10 s")
    if warning.growth_bytes_per_s and warning.seconds_to_limit is not None:
        said.append(
            f"it grows {_mib(int(warning.growth_bytes_per_s))}/s, the limit in about "
            f"{max(1, round(warning.seconds_to_limit))} s"
        )
    if not said and warning.reclaims_10s == 0:
        return "The kernel has not had to reclaim yet."
    if not said:
        return "It is past the warning level."  # reclaim not counted on this cgroup
    text = "; ".join(said)
    return text[0].upper() + text[1:] + "."


def format_warning_message(warning: OomWarning, target: Target) -> str:
    """One read tells who, how close, to which limit, and what the kernel is doing."""
    limit_name = _LIMIT_NAMES.get(warning.constraint, "its memory limit")
    whose = _whose(warning, target)
    percent = (
        100.0 * warning.working_set_bytes / warning.limit_bytes if warning.limit_bytes else 0.0
    )
    parts = [
        f"{whose} {'are' if whose == _NODE_PODS else 'is'} close to an OOM kill: working set "
        f"{_mib(warning.working_set_bytes)} of {limit_name} ({_mib(warning.limit_bytes)}), "
        f"{percent:.0f}% (warns at {warning.warn_at_percent}%).",
        _kernel_doing(warning),
    ]
    if warning.usage_bytes > warning.working_set_bytes:
        parts.append(f"Usage with page cache: {_mib(warning.usage_bytes)}.")
    if target.unresolved:
        parts.append(f"Reported on the node: {safe_text.escape(target.unresolved)}.")
    return truncate_utf8(" ".join(parts))


@dataclasses.dataclass(frozen=True, slots=True)
class Occurrence:
    """One kill, ready for the API: everything an Event needs except its count."""

    key: AggregationKey
    namespace: str
    name: str
    involved_object: dict[str, str]
    reason: str
    message: str
    time: datetime
    window_start: datetime
    window_end: datetime


@dataclasses.dataclass(frozen=True)
class EventBuilder:
    """Makes Occurrences and Event bodies for one node."""

    node_name: str
    node_uid: str | None = None
    event_window_s: float = DEFAULT_EVENT_WINDOW_S

    def __post_init__(self) -> None:
        if not self.node_name:
            raise ValueError("node_name is required: it names the reporter and node events")
        if self.event_window_s <= 0:
            raise ValueError("event_window_s must be positive")

    def involved_object(self, target: Target) -> dict[str, str]:
        if target.kind is TargetKind.NODE:
            obj = {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "namespace": ""}
            if self.node_uid:
                obj["uid"] = self.node_uid
            return obj
        obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": target.name or "",
            "namespace": target.namespace or "",
        }
        if target.uid:
            obj["uid"] = target.uid
        if target.field_path:
            obj["fieldPath"] = target.field_path
        return obj

    def aggregation_key(self, target: Target, reason: str) -> AggregationKey:
        if target.kind is TargetKind.NODE:
            return AggregationKey(
                _NODE_EVENT_NAMESPACE, self.node_uid or self.node_name, "", reason
            )
        return AggregationKey(
            target.namespace or "", target.uid or target.name or "", target.container or "", reason
        )

    def occurrence(self, kill: OomKill, target: Target) -> Occurrence:
        reason = reason_for(kill.constraint)
        key = self.aggregation_key(target, reason)
        start = window_start(kill.time, self.event_window_s)
        object_name = self.node_name if target.kind is TargetKind.NODE else target.name or ""
        return Occurrence(
            key=key,
            namespace=key.namespace,
            name=event_name(key, object_name, start),
            involved_object=self.involved_object(target),
            reason=reason,
            message=format_message(kill, target),
            time=kill.time,
            window_start=start,
            window_end=start + timedelta(seconds=self.event_window_s),
        )

    def warning_occurrence(self, warning: OomWarning, target: Target) -> Occurrence:
        """An OOMImminent Event's occurrence, aggregated by the same key and window."""
        key = self.aggregation_key(target, REASON_IMMINENT)
        start = window_start(warning.time, self.event_window_s)
        object_name = self.node_name if target.kind is TargetKind.NODE else target.name or ""
        return Occurrence(
            key=key,
            namespace=key.namespace,
            name=event_name(key, object_name, start),
            involved_object=self.involved_object(target),
            reason=REASON_IMMINENT,
            message=format_warning_message(warning, target),
            time=warning.time,
            window_start=start,
            window_end=start + timedelta(seconds=self.event_window_s),
        )

    def create_body(
        self,
        *,
        namespace: str,
        name: str,
        involved_object: dict[str, str],
        reason: str,
        message: str,
        first: datetime,
        last: datetime,
        count: int,
        delivery: str | None = None,
        type_: str = "Warning",
    ) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": name, "namespace": namespace}
        if delivery:
            metadata["annotations"] = {DELIVERY_ANNOTATION: delivery}
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": metadata,
            "involvedObject": dict(involved_object),
            "reason": reason,
            "message": safe_message(message),
            "type": type_,
            "source": {"component": REPORTING_COMPONENT, "host": self.node_name},
            "reportingComponent": REPORTING_COMPONENT,
            "reportingInstance": self.node_name[:_REPORTING_INSTANCE_LIMIT],
            "firstTimestamp": timestamp(first),
            "lastTimestamp": timestamp(last),
            "count": count,
        }

    def create_body_for(self, occurrence: Occurrence, count: int = 1) -> dict[str, Any]:
        return self.create_body(
            namespace=occurrence.namespace,
            name=occurrence.name,
            involved_object=occurrence.involved_object,
            reason=occurrence.reason,
            message=occurrence.message,
            first=occurrence.time,
            last=occurrence.time,
            count=count,
        )


def aggregate_patch(
    *,
    count: int,
    last: datetime,
    message: str | None = None,
    first: datetime | None = None,
    delivery: str | None = None,
) -> dict[str, Any]:
    """A JSON merge patch (RFC 7386) that brings an existing Event up to date.

    `count` is the absolute total, never an increment: sending the same patch twice (a
    retry whose first try got through) leaves the Event as once.
    """
    patch: dict[str, Any] = {"count": count, "lastTimestamp": timestamp(last)}
    if message is not None:
        patch["message"] = safe_message(message)
    if first is not None:
        patch["firstTimestamp"] = timestamp(first)
    if delivery:
        patch["metadata"] = {"annotations": {DELIVERY_ANNOTATION: delivery}}
    return patch
