"""Steering: which oom_score_adj each container should have, and putting it there.

Pod annotations are requests (`annotations`), the admin's policy bounds them (`admin`,
loaded from a file by `policy_file`), the kubelet's own value is the yardstick
(`kubelet_score`), and `decision` turns the three into a value per container; all four
are pure. `reconciler` runs one pass: `plan` (pure) says what each governed container's
processes should get, what to restore, forget and announce; `apply` does the /proc
reads and writes, finding container cgroups through `cgroup_index`; `pass_report` is
what a pass did. The kill mode (memory.oom.group) goes the same way: `kill_mode`
(pure decision), `kill_plan` (pure rules), `kill_steering` (what oomguard set, and
putting it back). `new_containers` (+ `new_container_plan`, pure, and
`new_container_writes`) steers a new container's first processes within milliseconds
of its cgroup appearing, before any pass. `score_state` remembers what was set across
restarts (and tells `oomguard top`).
"""
