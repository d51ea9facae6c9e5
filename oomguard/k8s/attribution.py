"""Which Kubernetes object a kill belongs to: a container, a pod, or the node.

The kernel names a victim only by cgroup; the cgroup names a pod UID (or a static pod's
config hash) and a container ID. This module turns that into the object an Event goes
on, using only the pod cache's lookups, so it stays pure and testable with a dict.

Why a kill lands where it does:
- a container ID the cache knows (current or recently terminated) -> that container;
- else a pod UID / config hash the cache knows -> the pod, with no fieldPath (a process
  in the pod cgroup itself, or a container the cache has not seen). A UID always wins
  over a hash, and a static pod's hash is only ever taken from its mirror pod as the
  kubelet creates it (PodCache's docstring says what the kubelet and the API server
  guarantee): annotations are user input, so a pod that writes etcd's hash in its own
  annotations is never named for a kill in etcd's cgroup. A hash two live pods claim
  names neither: the kill goes on the Node, saying so;
- else -> the Node: nothing on the cluster side can be named, and the Node is where an
  operator looks for kills of system daemons. A global (system) OOM of a process that
  belongs to no container also goes on the Node: the node ran out, no workload's own
  limit is involved, and the pod-level cgroup names no container to blame.

Waiting for a pod that is not cached yet is the caller's business (PodCache's
`wait_for_container`): attribution itself never blocks.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Protocol, runtime_checkable

from oomguard.k8s.pod_cache import ContainerKind, ContainerView, PodView
from oomguard.records import Constraint, OomKill, OomWarning


class PodLookup(Protocol):
    """What attribution needs from the pod cache (PodCache satisfies it)."""

    def lookup_container(self, container_id: str) -> tuple[PodView, ContainerView] | None: ...

    def lookup_pod(self, uid_or_config_hash: str) -> PodView | None: ...


@runtime_checkable
class HashClaims(Protocol):
    """How many live pods claim a static pod's hash (PodCache has it); only for the
    message of a kill that falls back to the Node."""

    def hash_claims(self, config_hash: str) -> int: ...


class TargetKind(enum.StrEnum):
    """The involvedObject kind; the values are the API's kind names."""

    POD = "Pod"
    NODE = "Node"


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """The object a kill is reported on.

    For a Node target `name`/`uid` are None: the node is the reporter's own, which the
    event builder knows and attribution does not need to.
    """

    kind: TargetKind
    namespace: str | None = None
    name: str | None = None
    uid: str | None = None
    container: str | None = None
    container_kind: ContainerKind | None = None
    field_path: str | None = None
    # The container's spec limit, for the message when the kernel did not print one.
    container_limit_bytes: int | None = None
    # Whether the victim was the container's main process, as the detector read it
    # from /proc while the victim was exiting (oomguard.detect.main_process); None: unknown.
    main_process: bool | None = None
    # Why a kill fell back to the node, for the message ("pod uid X not cached").
    unresolved: str | None = None

    @classmethod
    def node(cls, unresolved: str | None = None) -> Target:
        return cls(kind=TargetKind.NODE, unresolved=unresolved)

    @property
    def is_node(self) -> bool:
        return self.kind is TargetKind.NODE


def attribute(kill: OomKill, lookup: PodLookup) -> Target:
    """The object `kill` is reported on (rules in the module docstring)."""
    ident = kill.identity
    if ident.container_id:
        hit = lookup.lookup_container(ident.container_id)
        if hit is not None:
            pod, container = hit
            return Target(
                kind=TargetKind.POD,
                namespace=pod.namespace,
                name=pod.name,
                uid=pod.uid,
                container=container.name,
                container_kind=container.kind,
                field_path=container.field_path,
                container_limit_bytes=container.memory_limit_bytes,
                main_process=kill.main_process,
            )
    if ident.pod_uid and not (kill.constraint is Constraint.SYSTEM and not ident.container_id):
        pod_view = lookup.lookup_pod(ident.pod_uid)
        if pod_view is not None:
            return Target(
                kind=TargetKind.POD,
                namespace=pod_view.namespace,
                name=pod_view.name,
                uid=pod_view.uid,
            )
    claims = (
        lookup.hash_claims(ident.pod_uid) if ident.pod_uid and isinstance(lookup, HashClaims) else 0
    )
    if claims > 1:
        return Target.node(
            f"static pod hash {ident.pod_uid} is claimed by {claims} pods; naming none"
        )
    if ident.container_id:
        return Target.node(f"container {ident.container_id[:12]} is not in this node's pods")
    if ident.pod_uid and kill.constraint is not Constraint.SYSTEM:
        return Target.node(f"pod {ident.pod_uid} is not in this node's pods")
    return Target.node()


def attribute_warning(warning: OomWarning, lookup: PodLookup) -> Target:
    """The object a warning goes on: the container, else the pod, else the Node.

    A pod-level cgroup's warning goes on the pod (no fieldPath: no single container's
    limit binds); the node-allocatable cgroup's, and a container of no cached pod, on
    the Node, as for kills.
    """
    ident = warning.identity
    if warning.constraint is Constraint.CONTAINER and ident.container_id:
        hit = lookup.lookup_container(ident.container_id)
        if hit is not None:
            pod, container = hit
            return Target(
                kind=TargetKind.POD,
                namespace=pod.namespace,
                name=pod.name,
                uid=pod.uid,
                container=container.name,
                container_kind=container.kind,
                field_path=container.field_path,
                container_limit_bytes=container.memory_limit_bytes,
            )
    if ident.pod_uid and warning.constraint in (Constraint.CONTAINER, Constraint.POD):
        pod_view = lookup.lookup_pod(ident.pod_uid)
        if pod_view is not None:
            return Target(
                kind=TargetKind.POD,
                namespace=pod_view.namespace,
                name=pod_view.name,
                uid=pod_view.uid,
            )
        return Target.node(f"pod {ident.pod_uid} is not in this node's pods")
    return Target.node()
