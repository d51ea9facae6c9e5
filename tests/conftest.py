"""Shared test set-up: lane selection.

`system` tests need root and the host's cgroup v1 memory controller; they skip with
the reason when either is missing, so `pytest` on a laptop still runs the unit lane.
"""
