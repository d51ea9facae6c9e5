"""The kernel log: where the victim of each OOM kill is named.

The first box of the flow, beside the cgroup counters. `parse` turns kernel log records
into typed kill reports (pure, tested by tables of real kernel lines); `kmsg` and
`syslog` are the two readers (/dev/kmsg, and syslog(2) where the device cannot be
opened), both behind `reader.KernelLogReader`, opened by `reader.open_kernel_log`;
`clock` puts the kernel's timestamps on CLOCK_MONOTONIC.
"""
