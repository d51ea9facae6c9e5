"""What the pure decisions start from and end with, shared by both.

`decision` (oom_score_adj) and `kill_mode` (memory.oom.group) decide over the same
`PodProjection` and say how each container's setting came about with the same
`Outcome`; both live here so that neither decision has to import the other's module.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from oomguard.steer.kubelet_score import QosClass


class Outcome(enum.StrEnum):
    """How a container's setting came about; metrics count these."""

    UNMANAGED = "unmanaged"  # no request and no default: the kubelet's value stands
    DEFAULTED = "defaulted"  # the admin's default for the namespace
    APPLIED = "applied"  # the pod's request, as asked
    BOUNDED = "bounded"  # the pod's request, cut to the policy's bounds (oom_score_adj only)
    REFUSED = "refused"  # the policy does not let the namespace ask for it: the baseline stands


@dataclass(frozen=True, slots=True)
class PodProjection:
    """What the policy needs to know about a pod (the pod cache builds it)."""

    namespace: str
    qos_class: QosClass
    # container name -> the kubelet's oom_score_adj for it (kubelet_score.py)
    kubelet_scores: Mapping[str, int]
    annotations: Mapping[str, str] = field(default_factory=dict)
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
