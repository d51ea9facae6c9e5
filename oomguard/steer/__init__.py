"""Steering: which oom_score_adj each container should have, and putting it there.

Pod annotations are requests (`annotations`), the admin's policy bounds them (`admin`,
loaded from a file by `policy_file`), the kubelet's own value is the yardstick
(`kubelet_score`), and `decision` turns the three into a value per container; all four
are pure. `reconciler` runs one pass: `plan` (pure) says what each governed container's
processes should get, what to restore, forget and announce; `apply` does the /proc
reads and writes, finding container cgroups through `cgroup_index`; `pass_report` is
what a pass did. `score_state` remembers what was set across restarts (and tells
`oomguard top`).
"""
