"""The kernel's memory cgroups: which ones exist, what they count, who owns them.

The other first box of the flow: a kill is counted by the victim's cgroup before any
report names it. `hierarchy` finds which version (v1, v2) this machine runs and where;
`counters` turns the counter files into numbers; `watch` keeps every cgroup below a
root watched (inotify, eventfds, rescans) and says which counted a kill; `path` reads
the pod, container and QoS class out of a cgroup's name (pure); `classify` says which
limit ran out (pure); `scratch` makes throwaway cgroups for the demo, tests and benches.
"""
