"""The kernel log: where the victim of each OOM kill is named.

The first box of the flow, beside the cgroup counters. `parse` turns kernel log records
into typed kill reports (pure, tested by tables of real kernel lines); `kmsg` and
`syslog` are the two readers (/dev/kmsg, and syslog(2) where the device cannot be
opened), both behind `reader.KernelLogReader` and opened by `open_log.open_kernel_log`;
`read_timing` says when syslog(2), which has no descriptor to poll, is read; `clock`
puts the kernel's timestamps on CLOCK_MONOTONIC.
"""
