"""The agent's state directory: what survives a restart, written so a crash cannot tear it.

`files` is the one way state is written (atomic, fsync'd) and read back (bounded,
versioned, set aside when corrupt); `log_position` and `counter_snapshot` are what the
detector has handed on (the kernel log position, the cgroups' `oom_kill` counters),
from which a restarted agent recovers the kills it missed while it was down;
`checkpoints` owns both: it loads what a restarted loop resumes from and saves the
loop's `HandedOn` marks, in the order that makes recovery safe.
"""
