"""Processes: race-safe access to /proc/PID, pinned by a directory descriptor."""
