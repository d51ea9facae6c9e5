"""Reading the kernel's memory cgroups: v1 and v2 behind one interface.

`hierarchy` finds which version this machine runs and where; `counters` turns the
counter files into numbers; `notify` wakes the agent when they change; `tree` keeps
the set of watched cgroups current as containers come and go.
"""
