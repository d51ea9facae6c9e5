"""The OOMImminent Event: on the right object, and a message that says it all in one read.

The message is what a pod's owner sees in `kubectl describe pod` / `kubectl get events`:
one line naming the container, the limit that binds and its size, the working set,
and what the kernel is doing about it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from oomguard.k8s.attribution import Target, TargetKind, attribute_warning
from oomguard.k8s.events import (
    MESSAGE_LIMIT_BYTES,
    REASON_IMMINENT,
    EventBuilder,
    format_warning_message,
)
from oomguard.k8s.pod_cache import ContainerKind, PodView
from oomguard.records import CgroupIdentity, CgroupKind, Constraint, OomWarning
from tests.unit.test_events import DictLookup, container, pod_view

MIB = 1024 * 1024
T0 = datetime(2026, 5, 1, 12, 0, 5, tzinfo=UTC)
CID = "cd" * 32
UID = "0f1e2d3c-0000-4000-8000-00000000000a"
BUILDER = EventBuilder("node-1", node_uid="node-uid-1")


def make_warning(
    constraint: Constraint = Constraint.CONTAINER,
    *,
    container_id: str | None = CID,
    pod_uid: str | None = UID,
    **fields: Any,
) -> OomWarning:
    kind = {
        Constraint.CONTAINER: CgroupKind.CONTAINER,
        Constraint.POD: CgroupKind.POD,
        Constraint.NODE_ALLOCATABLE: CgroupKind.KUBEPODS,
    }.get(constraint, CgroupKind.OTHER)
    values: dict[str, Any] = {
        "time": T0,
        "cgroup": f"/kubepods/burstable/pod{UID}/{CID}",
        "identity": CgroupIdentity(
            path=f"/kubepods/burstable/pod{UID}/{CID}",
            kind=kind,
            qos="burstable",
            pod_uid=pod_uid,
            container_id=container_id,
        ),
        "constraint": constraint,
        "signal": "threshold",
        "limit_bytes": 512 * MIB,
        "working_set_bytes": 470 * MIB,
        "usage_bytes": 470 * MIB,
        "warn_at_percent": 90,
    }
    values.update(fields)
    return OomWarning(**values)


def view(container_name: str = "app") -> PodView:
    limited = container(container_name, limit_bytes=512 * MIB, container_id=CID)
    return pod_view((limited,), uid=UID)


Lookup = DictLookup  # the pod cache's lookups over a list, as the kill tests use


CONTAINER = Target(
    kind=TargetKind.POD,
    namespace="shop",
    name="web-7d9f",
    uid=UID,
    container="app",
    container_kind=ContainerKind.CONTAINER,
    field_path="spec.containers{app}",
)


def message(warning: OomWarning, target: Target = CONTAINER) -> str:
    text = format_warning_message(warning, target)
    assert "\n" not in text and "\r" not in text  # one line, always
    return text


# ----- the message ------------------------------------------------------------------------


def test_a_growing_container() -> None:
    text = message(
        make_warning(
            working_set_bytes=400 * MIB,
            usage_bytes=400 * MIB,
            growth_bytes_per_s=50 * MIB,
            seconds_to_limit=2.24,
        )
    )
    assert text == (
        'Container "app" is close to an OOM kill: working set 400.0 MiB of its memory limit '
        "(512.0 MiB), 78% (warns at 90%). It grows 50.0 MiB/s, the limit in about 2 s."
    )


def test_a_container_the_kernel_reclaims_for() -> None:
    text = message(make_warning(signal="reclaim", reclaims_10s=40, usage_bytes=510 * MIB))
    assert text == (
        'Container "app" is close to an OOM kill: working set 470.0 MiB of its memory limit '
        "(512.0 MiB), 92% (warns at 90%). The kernel is reclaiming to stay under the limit "
        "(40 times in 10 s). Usage with page cache: 510.0 MiB."
    )


def test_pressure_is_said_in_words() -> None:
    text = message(make_warning(signal="pressure", pressure_some_avg10=23.4, reclaims_10s=5))
    assert "reclaiming to stay under the limit (5 times in 10 s)" in text
    assert "tasks waited for memory 23% of the last 10 s" in text


def test_all_the_kernel_says_in_one_sentence() -> None:
    text = message(
        make_warning(
            reclaims_10s=3, pressure_some_avg10=12.0, growth_bytes_per_s=5 * MIB, seconds_to_limit=8
        )
    )
    assert text.endswith(
        "The kernel is reclaiming to stay under the limit (3 times in 10 s); tasks waited for "
        "memory 12% of the last 10 s; it grows 5.0 MiB/s, the limit in about 8 s."
    )


def test_nothing_from_the_kernel_yet() -> None:
    text = message(make_warning(working_set_bytes=461 * MIB, reclaims_10s=0))
    assert "90% (warns at 90%). The kernel has not had to reclaim yet." in text


def test_reclaim_not_counted_is_not_said_to_be_none() -> None:
    """None (not counted on this cgroup) must not read as "no reclaim"."""
    text = message(make_warning(working_set_bytes=461 * MIB, reclaims_10s=None))
    assert "reclaim" not in text
    assert "90% (warns at 90%). It is past the warning level." in text


def test_small_pressure_is_not_news() -> None:
    assert "waited" not in message(make_warning(pressure_some_avg10=0.4))


def test_the_limit_already_reached_says_about_1_s() -> None:
    text = message(make_warning(growth_bytes_per_s=MIB, seconds_to_limit=0.0))
    assert "the limit in about 1 s" in text


def test_no_page_cache_no_usage_sentence() -> None:
    assert "Usage" not in message(make_warning())


@pytest.mark.parametrize(
    ("constraint", "target", "starts"),
    [
        (
            Constraint.POD,
            Target(kind=TargetKind.POD, namespace="shop", name="web-7d9f", uid=UID),
            "The pod is close to an OOM kill: working set 470.0 MiB of the pod's memory limit "
            "(512.0 MiB)",
        ),
        (
            Constraint.NODE_ALLOCATABLE,
            Target.node(),
            "The node's pods are close to an OOM kill: working set 470.0 MiB of the "
            "node-allocatable limit of all pods (512.0 MiB)",
        ),
        (
            Constraint.OTHER,
            Target.node(),
            f"Cgroup /kubepods/burstable/pod{UID}/{CID} is close to an OOM kill: working set "
            "470.0 MiB of its memory limit (512.0 MiB)",
        ),
    ],
    ids=["pod", "node-allocatable", "other"],
)
def test_whose_limit(constraint: Constraint, target: Target, starts: str) -> None:
    assert message(make_warning(constraint), target).startswith(starts)


def test_a_container_of_no_cached_pod_says_why_it_is_on_the_node() -> None:
    target = attribute_warning(make_warning(), Lookup([]))
    text = message(make_warning(), target)
    assert text.endswith(f"Reported on the node: pod {UID} is not in this node's pods.")


def test_hostile_names_are_escaped() -> None:
    target = Target(
        kind=TargetKind.POD,
        namespace="shop",
        name="web",
        uid=UID,
        container='evil"\n\x1b[2J',
        field_path="spec.containers{x}",
    )
    text = message(make_warning(), target)
    assert "\x1b" not in text
    assert text.startswith('Container "evil\\"\\n\\x1b[2J" is close to an OOM kill')


def test_a_hostile_cgroup_path_is_escaped_and_the_message_fits_the_api() -> None:
    path = "/x/" + "\n\x07" * 2000 + "\u00e9" * 400
    w = make_warning(
        Constraint.OTHER,
        container_id=None,
        pod_uid=None,
        cgroup=path,
        identity=CgroupIdentity(path=path, kind=CgroupKind.OTHER),
    )
    text = message(w, Target.node())
    assert "\x07" not in text
    assert len(text.encode()) <= MESSAGE_LIMIT_BYTES


def test_huge_figures_read_in_mib() -> None:
    text = message(
        make_warning(limit_bytes=2**63 - 4096, working_set_bytes=2**62, usage_bytes=2**62)
    )
    assert "of its memory limit (8796093022208.0 MiB), 50%" in text


def test_a_zero_limit_does_not_divide_by_zero() -> None:
    assert "0%" in message(make_warning(limit_bytes=0))


# ----- the Event --------------------------------------------------------------------------


def test_the_event_goes_on_the_container() -> None:
    w = make_warning()
    target = attribute_warning(w, Lookup([view()]))
    occ = BUILDER.warning_occurrence(w, target)
    assert occ.reason == REASON_IMMINENT == "OOMImminent"
    assert occ.namespace == "shop"
    assert occ.involved_object == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "web-7d9f",
        "namespace": "shop",
        "uid": UID,
        "fieldPath": "spec.containers{app}",
    }
    assert occ.message.startswith('Container "app" is close to an OOM kill')
    assert occ.time == T0


def test_a_pod_level_warning_goes_on_the_pod_without_a_field_path() -> None:
    w = make_warning(Constraint.POD, container_id=None)
    occ = BUILDER.warning_occurrence(w, attribute_warning(w, Lookup([view()])))
    assert occ.involved_object["kind"] == "Pod"
    assert "fieldPath" not in occ.involved_object
    assert occ.message.startswith("The pod is close to an OOM kill")


def test_the_node_allocatable_warning_goes_on_the_node() -> None:
    w = make_warning(Constraint.NODE_ALLOCATABLE, container_id=None, pod_uid=None)
    occ = BUILDER.warning_occurrence(w, attribute_warning(w, Lookup([view()])))
    assert occ.involved_object["kind"] == "Node"
    assert occ.involved_object["name"] == "node-1"
    assert occ.namespace == "default"


def test_warnings_aggregate_apart_from_kills() -> None:
    """A warning and the kill that follows are two Events, each counted on its own."""
    w = make_warning()
    target = attribute_warning(w, Lookup([view()]))
    first = BUILDER.warning_occurrence(w, target)
    again = BUILDER.warning_occurrence(make_warning(time=T0.replace(second=30)), target)
    assert first.key == again.key and first.name == again.name
    kill_key = BUILDER.aggregation_key(target, "OOMKilled")
    assert kill_key != first.key
