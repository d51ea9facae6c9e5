"""Warning before the kill: an OOM kill is near for a container, a pod or the node.

The detector (`detect`) says who died; this stage says who is about to. Per cgroup
that has a memory limit of its own (container, pod-level, node-allocatable; off
Kubernetes any limited cgroup): `sample` reads what the kernel holds (usage, the
working set as the kubelet computes it, the limit, how often reclaim was forced, the
pressure), `rule` (pure) decides from a series of samples whether a kill is near and
when one episode ends, `schedule` (pure) says when to look next, `push` asks the kernel
to wake the watcher (v1 usage thresholds, v2 PSI triggers), `watcher` is the thread
that runs them and hands out one `records.OomWarning` per episode, and `policy` (pure)
turns the admin policy and a pod's `oomguard.io/warn-at` annotation into the rule a
container is watched with.
"""
