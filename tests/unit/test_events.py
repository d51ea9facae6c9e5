"""Event bodies and attribution, pure: names, reasons, messages, aggregation windows."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import pytest

from oomguard.k8s.attribution import Target, TargetKind, attribute
from oomguard.k8s.event_queue import kill_id
from oomguard.k8s.events import (
    MESSAGE_LIMIT_BYTES,
    REASON_LIMIT,
    REASON_NODE_PRESSURE,
    AggregationKey,
    EventBuilder,
    aggregate_patch,
    event_name,
    format_message,
    reason_for,
    timestamp,
    truncate_utf8,
    window_start,
)
from oomguard.k8s.pod_cache import ContainerKind, ContainerView, PodView
from oomguard.records import CgroupIdentity, CgroupKind, Constraint, OomKill

DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
T0 = datetime(2024, 5, 1, 12, 0, 5, tzinfo=UTC)
CID = "ab" * 32
MIB = 1024 * 1024


def make_kill(
    *,
    constraint: Constraint = Constraint.CONTAINER,
    container_id: str | None = CID,
    pod_uid: str | None = "0f1e2d3c-0000-4000-8000-000000000001",
    time: datetime = T0,
    **fields: Any,
) -> OomKill:
    kind = CgroupKind.CONTAINER if container_id else CgroupKind.POD if pod_uid else CgroupKind.OTHER
    values: dict[str, Any] = {
        "time": time,
        "kernel_time_us": 1_000_000,
        "kmsg_seq": 42,
        "constraint": constraint,
        "cgroup": "/kubepods/burstable/pod0f1e/abab",
        "oom_cgroup": "/kubepods/burstable/pod0f1e/abab",
        "identity": CgroupIdentity(
            path="/x", kind=kind, pod_uid=pod_uid, container_id=container_id
        ),
        "pid": 4242,
        "command": "python3",
        "uid": 1000,
        "rss_bytes": 250 * MIB + MIB // 2,
        "anon_rss_bytes": None,
        "file_rss_bytes": None,
        "shmem_rss_bytes": None,
        "oom_score_adj": 984,
        "memory_limit_bytes": 256 * MIB,
        "memory_usage_bytes": 256 * MIB,
        "source": "kmsg",
    }
    values.update(fields)
    return OomKill(**values)


def container(
    name: str,
    kind: ContainerKind = ContainerKind.CONTAINER,
    *,
    limit_bytes: int = 128 * MIB,
    container_id: str = CID,
) -> ContainerView:
    return ContainerView(
        name=name,
        kind=kind,
        restart_policy=None,
        memory_request_bytes=None,
        memory_limit_bytes=limit_bytes,
        container_id=container_id,
        runtime="containerd",
        past_container_ids=(),
        running=True,
        restart_count=0,
    )


def pod_view(
    containers: tuple[ContainerView, ...] = (),
    name: str = "web-7d9f",
    uid: str = "0f1e2d3c-0000-4000-8000-000000000001",
) -> PodView:
    return PodView(
        uid=uid,
        namespace="shop",
        name=name,
        node_name="node-1",
        annotations=MappingProxyType({}),
        qos_class="Burstable",
        priority=None,
        priority_class_name=None,
        config_hash=None,
        phase="Running",
        containers=containers,
        resource_version="1",
    )


class DictLookup:
    def __init__(self, pods: list[PodView]) -> None:
        self.pods = pods

    def lookup_container(self, container_id: str) -> tuple[PodView, ContainerView] | None:
        for p in self.pods:
            for c in p.containers:
                if container_id in c.all_ids:
                    return p, c
        return None

    def lookup_pod(self, uid_or_config_hash: str) -> PodView | None:
        return next((p for p in self.pods if p.uid == uid_or_config_hash), None)


BUILDER = EventBuilder("node-1", node_uid="node-uid-1")


def pod_target(kind: ContainerKind = ContainerKind.CONTAINER, name: str = "app") -> Target:
    p = pod_view((container(name, kind),))
    return attribute(make_kill(), DictLookup([p]))


# -- attribution ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "field_path"),
    [
        (ContainerKind.CONTAINER, "spec.containers{app}"),
        (ContainerKind.INIT, "spec.initContainers{app}"),
        (ContainerKind.EPHEMERAL, "spec.ephemeralContainers{app}"),
    ],
)
def test_attribute_container_kinds(kind: ContainerKind, field_path: str) -> None:
    target = pod_target(kind)
    assert target.kind is TargetKind.POD
    assert (target.namespace, target.name, target.container) == ("shop", "web-7d9f", "app")
    assert target.field_path == field_path
    assert target.main_process is None  # the detector could not tell
    said = attribute(
        make_kill(main_process=False), DictLookup([pod_view((container("app", kind),))])
    )
    assert said.main_process is False  # carried from the detector's record to the Event
    body = BUILDER.create_body_for(BUILDER.occurrence(make_kill(), target))
    assert body["involvedObject"]["fieldPath"] == field_path


def test_attribute_past_container_id_races_restart() -> None:
    old = container("app")
    restarted = dataclasses.replace(old, container_id="cd" * 32, past_container_ids=(CID,))
    target = attribute(make_kill(), DictLookup([pod_view((restarted,))]))
    assert target.container == "app"


def test_attribute_pod_level_and_unknown() -> None:
    lookup = DictLookup([pod_view(())])
    pod_only = attribute(make_kill(container_id=None), lookup)
    assert pod_only.kind is TargetKind.POD and pod_only.field_path is None
    # Unknown container but known pod: the pod, without a fieldPath.
    assert attribute(make_kill(), lookup).kind is TargetKind.POD
    # Nothing known: the Node, with the reason said.
    nowhere = attribute(make_kill(pod_uid="ffff"), DictLookup([]))
    assert nowhere.is_node and nowhere.unresolved and CID[:12] in nowhere.unresolved
    # No Kubernetes identity at all.
    assert attribute(make_kill(container_id=None, pod_uid=None), lookup).is_node


def test_system_oom_without_container_goes_on_node() -> None:
    lookup = DictLookup([pod_view((container("app"),))])
    kill = make_kill(constraint=Constraint.SYSTEM, container_id=None)
    assert attribute(kill, lookup).is_node
    # A system OOM of a known container still goes on its pod.
    assert attribute(make_kill(constraint=Constraint.SYSTEM), lookup).container == "app"


# -- reasons ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("constraint", "reason"),
    [
        (Constraint.CONTAINER, REASON_LIMIT),
        (Constraint.POD, REASON_LIMIT),
        (Constraint.NODE_ALLOCATABLE, REASON_NODE_PRESSURE),
        (Constraint.SYSTEM, REASON_NODE_PRESSURE),
        (Constraint.OTHER, REASON_NODE_PRESSURE),
    ],
)
def test_reason_per_constraint(constraint: Constraint, reason: str) -> None:
    assert reason_for(constraint) == reason
    occ = BUILDER.occurrence(make_kill(constraint=constraint), pod_target())
    assert occ.reason == reason


# -- bodies -----------------------------------------------------------------------------


def test_pod_event_body() -> None:
    occ = BUILDER.occurrence(make_kill(), pod_target())
    body = BUILDER.create_body_for(occ)
    assert body["type"] == "Warning"
    assert body["metadata"] == {"name": occ.name, "namespace": "shop"}
    assert body["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "web-7d9f",
        "namespace": "shop",
        "uid": "0f1e2d3c-0000-4000-8000-000000000001",
        "fieldPath": "spec.containers{app}",
    }
    assert body["reportingComponent"] == "oomguard"
    assert body["reportingInstance"] == "node-1"
    assert body["source"] == {"component": "oomguard", "host": "node-1"}
    assert body["firstTimestamp"] == body["lastTimestamp"] == "2024-05-01T12:00:05Z"
    assert body["count"] == 1
    assert "eventTime" not in body and "action" not in body


def test_node_event_body() -> None:
    kill = make_kill(constraint=Constraint.SYSTEM, container_id=None, pod_uid=None)
    target = attribute(kill, DictLookup([]))
    occ = BUILDER.occurrence(kill, target)
    body = BUILDER.create_body_for(occ)
    assert occ.namespace == "default" and occ.reason == REASON_NODE_PRESSURE
    assert body["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Node",
        "name": "node-1",
        "namespace": "",
        "uid": "node-uid-1",
    }
    assert occ.name.startswith("node-1.")
    no_uid = EventBuilder("node-1").involved_object(target)
    assert "uid" not in no_uid


def test_aggregate_patch_is_absolute() -> None:
    patch = aggregate_patch(count=7, last=T0, message="m", delivery="b1")
    assert patch == {
        "count": 7,
        "lastTimestamp": "2024-05-01T12:00:05Z",
        "message": "m",
        "metadata": {"annotations": {"oomguard.io/delivery": "b1"}},
    }


def test_timestamps_are_rfc3339_utc() -> None:
    naive = datetime(2024, 5, 1, 12, 0, 5, 999_999)
    assert timestamp(naive) == "2024-05-01T12:00:05Z"
    plus2 = datetime(2024, 5, 1, 16, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    assert timestamp(plus2) == "2024-05-01T14:00:05Z"


# -- messages ---------------------------------------------------------------------------


def test_message_reads_in_one_go() -> None:
    target = pod_target()
    main = dataclasses.replace(target, main_process=True)
    message = format_message(make_kill(), main)
    assert message == (
        'Container "app" was OOM-killed: its memory limit (256.0 MiB) was reached. '
        'Killed process "python3" (pid 4242, the container\'s main process) holding '
        "250.5 MiB RSS, oom_score_adj 984. Cgroup usage at the kill: 256.0 MiB."
    )
    side = dataclasses.replace(target, main_process=False)
    assert "not the container's main process" in format_message(make_kill(), side)
    assert "main process" not in format_message(make_kill(), target)


def test_message_node_pressure_and_fallbacks() -> None:
    target = pod_target()
    pressure = format_message(
        make_kill(constraint=Constraint.NODE_ALLOCATABLE, memory_limit_bytes=None), target
    )
    assert "node ran out of memory for pods" in pressure
    system = format_message(make_kill(constraint=Constraint.SYSTEM), target)
    assert "node ran out of memory (system OOM)" in system
    # No limit from the kernel: the container's spec limit is used for its own limit.
    spec = format_message(make_kill(memory_limit_bytes=None), target)
    assert "its memory limit (128.0 MiB)" in spec
    unknown = format_message(make_kill(pid=None, command=None), target)
    assert "victim process is unknown" in unknown
    init = format_message(make_kill(), pod_target(ContainerKind.INIT))
    assert init.startswith('Init container "app"')
    node = format_message(make_kill(container_id=None, pod_uid=None), Target.node())
    assert node.startswith("A process in cgroup /kubepods/")


def test_message_quotes_odd_process_names() -> None:
    message = format_message(make_kill(command='we"ird\nname'), pod_target())
    assert '"we\\"ird\\nname"' in message and "\n" not in message


# A process can name itself this (15 bytes of /proc/self/comm): printed raw by
# `kubectl get events` it clears the screen, retitles the window and rewinds the line.
HOSTILE_COMM = "\x1b[2J\x1b]0;pwn\x07\rX"


def test_message_escapes_a_hostile_process_name() -> None:
    message = format_message(make_kill(command=HOSTILE_COMM), pod_target())
    assert 'Killed process "\\x1b[2J\\x1b]0;pwn\\x07\\rX" (pid 4242' in message
    assert message.isprintable()


def test_message_escapes_what_the_terminal_and_reader_would_act_on() -> None:
    # C1 CSI, a bidi override, invalid UTF-8 (kept by the kernel log reader as
    # surrogateescape), a literal "\x1b" typed by the process, a quote.
    command = '\x9b2J\u202ex\udcff\\x1b"'
    message = format_message(make_kill(command=command), pod_target())
    assert 'Killed process "\\u009b2J\\u202ex\\xff\\\\x1b\\"" (pid' in message
    assert message.isprintable()


def test_node_event_escapes_the_cgroup_path() -> None:
    cgroup = "/system.slice/evil\x1b[2J\u2066\udc80.scope"
    kill = make_kill(container_id=None, pod_uid=None, cgroup=cgroup, command=HOSTILE_COMM)
    body = BUILDER.create_body_for(BUILDER.occurrence(kill, Target.node("no pod")))
    message = body["message"]
    assert message.startswith("A process in cgroup /system.slice/evil\\x1b[2J\\u2066\\x80.scope ")
    assert message.isprintable()


def test_event_message_cut_after_escaping_never_inside_an_escape() -> None:
    # Each \x1b becomes 4 bytes: the raw name would fit the limit, the escaped one not.
    kill = make_kill(container_id=None, pod_uid=None, cgroup="/x" + "\x1b" * 400)
    message = format_message(kill, Target.node())
    assert len(message.encode()) <= MESSAGE_LIMIT_BYTES
    assert message.endswith("\\x1b…")  # the cut falls between two escapes


def test_event_body_escapes_a_message_built_elsewhere() -> None:
    # Policy Events are worded by other parts; a raw control in one is escaped here.
    body = BUILDER.create_body(
        namespace="n",
        name="x",
        involved_object={},
        reason="OOMGuardAnnotationInvalid",
        message=f"value {HOSTILE_COMM} rejected",
        first=T0,
        last=T0,
        count=1,
    )
    assert body["message"] == "value \\x1b[2J\\x1b]0;pwn\\x07\\rX rejected"
    patch = aggregate_patch(count=2, last=T0, message=f"again {HOSTILE_COMM}")
    assert patch["message"].isprintable()


@pytest.mark.parametrize("char", ["a", "é", "€", "𝄞"])
def test_message_truncated_utf8_safe(char: str) -> None:
    long_cgroup = "/system.slice/" + char * 3000
    kill = make_kill(container_id=None, pod_uid=None, cgroup=long_cgroup, command=char * 15)
    message = format_message(kill, Target.node())
    data = message.encode("utf-8")
    assert len(data) <= MESSAGE_LIMIT_BYTES
    assert message.endswith("…")
    assert data.decode("utf-8") == message  # never a split character
    assert len(data) > MESSAGE_LIMIT_BYTES - 4  # cut at the limit, not far before it


def test_truncate_leaves_short_text_alone() -> None:
    assert truncate_utf8("é" * 512) == "é" * 512  # exactly 1024 bytes
    assert truncate_utf8("é" * 513).encode() == ("é" * 510).encode() + "…".encode()
    body = BUILDER.create_body(
        namespace="n",
        name="x",
        involved_object={},
        reason=REASON_LIMIT,
        message="ü" * 2000,
        first=T0,
        last=T0,
        count=1,
    )
    assert len(body["message"].encode()) <= MESSAGE_LIMIT_BYTES


# -- names, keys and windows ------------------------------------------------------------


def test_names_valid_and_stable() -> None:
    occ = BUILDER.occurrence(make_kill(), pod_target())
    again = EventBuilder("node-1", node_uid="node-uid-1").occurrence(
        make_kill(time=T0 + timedelta(seconds=30), pid=99), pod_target()
    )
    assert occ.name == again.name  # same key, same window: a restarted agent agrees
    assert re.fullmatch(r"web-7d9f\.[0-9a-f]{16}", occ.name)


@pytest.mark.parametrize(
    "object_name",
    [
        "a" * 253,
        "x." * 126 + "y",
        "UPPER_case name!",
        "-leading-and-trailing-",
        "",
        "a" * 236 + "-" * 17,
        "..dots..",
    ],
)
def test_names_are_dns_subdomains(object_name: str) -> None:
    key = AggregationKey("ns", "uid", "app", REASON_LIMIT)
    name = event_name(key, object_name, T0)
    assert len(name) <= 253
    assert DNS_SUBDOMAIN.fullmatch(name), name


def test_keys_separate_what_differs() -> None:
    base = BUILDER.occurrence(make_kill(), pod_target())
    other_reason = BUILDER.occurrence(make_kill(constraint=Constraint.SYSTEM), pod_target())
    other_container = BUILDER.occurrence(make_kill(), pod_target(name="sidecar"))
    names = {base.name, other_reason.name, other_container.name}
    assert len(names) == 3
    assert base.key == AggregationKey(
        "shop", "0f1e2d3c-0000-4000-8000-000000000001", "app", REASON_LIMIT
    )
    # A pod recreated under the same name is another object: another Event.
    key = AggregationKey("shop", "other-uid", "app", REASON_LIMIT)
    assert event_name(key, "web-7d9f", base.window_start) != base.name


def test_windows() -> None:
    window = 600.0
    start = window_start(T0, window)
    assert start == datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert window_start(T0 + timedelta(seconds=594), window) == start
    later = window_start(T0 + timedelta(seconds=595), window)
    assert later == start + timedelta(seconds=600)
    builder = EventBuilder("node-1", event_window_s=window)
    target = pod_target()
    first = builder.occurrence(make_kill(), target)
    same = builder.occurrence(make_kill(time=T0 + timedelta(seconds=594)), target)
    next_window = builder.occurrence(make_kill(time=T0 + timedelta(seconds=595)), target)
    assert first.name == same.name != next_window.name
    assert first.window_end - first.window_start == timedelta(seconds=window)
    with pytest.raises(ValueError):
        EventBuilder("node-1", event_window_s=0)
    with pytest.raises(ValueError):
        EventBuilder("")


# -- kill ids ---------------------------------------------------------------------------


def test_kill_ids() -> None:
    kill = make_kill()
    assert kill_id(kill, boot_id="b1") == "kmsg/b1/42"
    assert kill_id(kill, boot_id="b2") != kill_id(kill, boot_id="b1")
    counted = make_kill(kmsg_seq=None, pid=None)
    assert kill_id(counted, boot_id="b1", counter_value=3) == (
        "counter/b1//kubepods/burstable/pod0f1e/abab/3"
    )
    bare = kill_id(counted)
    assert bare.startswith("seen/") and bare == kill_id(counted)
