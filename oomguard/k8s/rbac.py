"""Every Kubernetes API call the agent makes, as RBAC grants: the least it needs.

The chart's ClusterRole is compared with this (tests/chart), and the agent's own
process tests run it against an API server that refuses everything else and check that
each grant here was used. A new API call in the code needs a line here, or those tests
fail.

(API group, resource) -> verbs:
- pods list, watch: the pod cache, this node's pods only (field selector
  spec.nodeName; RBAC cannot narrow a grant to a node). No `get`: the cache is fed by
  list and watch alone, and a kill whose pod is not cached yet waits for the watch.
- events create, patch: OOM kill and policy Events; patch aggregates repeats.
- nodes get: this node's uid, for Events on the Node.
- namespaces list, watch: namespace labels, one list and one watch of all namespaces
  per node, only while the admin policy chooses namespaces by label selector (no get:
  the labels are fed by list and watch alone, k8s/namespace_labels.py).
"""

from __future__ import annotations

RBAC: dict[tuple[str, str], frozenset[str]] = {
    ("", "pods"): frozenset({"list", "watch"}),
    ("", "events"): frozenset({"create", "patch"}),
    ("", "nodes"): frozenset({"get"}),
    ("", "namespaces"): frozenset({"list", "watch"}),
}
