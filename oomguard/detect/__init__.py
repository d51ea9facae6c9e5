"""Detection: the node-side loop and the join of its signals into one record per kill.

`loop.OomWatcher` waits on every kernel signal (kernel log, cgroup counters) in one
poll() and hands out `records.OomKill` values; `join.KillJoiner` (pure: values in,
records out) makes one record of a kill's counter increase and its kernel report,
whichever comes first or alone; `main_process` says whether the victim was its
container's main process, read from /proc while it exits.
"""
