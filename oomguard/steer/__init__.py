"""Steering: which oom_score_adj each container should have, and putting it there.

Pod annotations are requests (`annotations`), the admin's policy bounds them
(`admin`, loaded from a file by `policy_file`), the kubelet's own value is the
yardstick (`kubelet_score`), and `decision` turns the three into a value per container;
all four are pure. `reconciler` applies the decisions to processes through /proc, and
`score_state` remembers what it set across restarts (and tells `oomguard top`).
"""
