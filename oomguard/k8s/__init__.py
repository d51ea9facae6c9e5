"""The Kubernetes side: lean API access and this node's pod cache.

Importing this package does not import the `kubernetes` client; that happens when an
API object is first made, so commands that never talk to a cluster stay fast.
"""

from oomguard.k8s.client import (
    ApiConnectionError,
    ApiStatusError,
    KubeApi,
    KubeApiError,
    WatchStream,
    load_configuration,
)
from oomguard.k8s.pod_cache import (
    ContainerKind,
    ContainerView,
    MalformedPod,
    PodCache,
    PodCacheCounters,
    PodCacheSettings,
    PodView,
    parse_quantity,
    project_pod,
)

__all__ = [
    "ApiConnectionError",
    "ApiStatusError",
    "ContainerKind",
    "ContainerView",
    "KubeApi",
    "KubeApiError",
    "MalformedPod",
    "PodCache",
    "PodCacheCounters",
    "PodCacheSettings",
    "PodView",
    "WatchStream",
    "load_configuration",
    "parse_quantity",
    "project_pod",
]
