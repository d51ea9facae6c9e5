"""Lane 2: a reader that falls behind the kernel's ring buffer counts what it lost.

This floods /dev/kmsg until the ring wraps, which wipes the kernel log: it must only ever
run inside the throwaway lane-2 VM, never on a real host. Besides the `vm` marker (which
the lane-2 conftest skips outside the VM), the test checks OOMGUARD_IN_VM itself.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import uuid

import pytest

from oomguard.kernel.kmsg import DEFAULT_KMSG_PATH, KmsgReader

pytestmark = pytest.mark.vm

SYSLOG_ACTION_SIZE_BUFFER = 10  # klogctl(2): the size of the kernel log buffer
FALLBACK_RING_BYTES = 4 * 2**20  # if klogctl cannot tell, assume a generous ring
FLOOD_FACTOR = 3  # write three rings' worth, so it wraps whatever its bookkeeping
LINES_PER_OPEN = 10  # /dev/kmsg's default rate limit: 10 lines per open file per 5 s
FILLER_BYTES = 200
USER_DEBUG = 1 * 8 + 7  # facility user, level debug: keeps the (slow, emulated) console quiet


def ring_bytes() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    size = int(libc.klogctl(SYSLOG_ACTION_SIZE_BUFFER, None, 0))
    return size if size > 0 else FALLBACK_RING_BYTES


def write_lines(lines: list[str]) -> None:
    """Write through fresh descriptors so the per-file rate limit never drops a line."""
    for start in range(0, len(lines), LINES_PER_OPEN):
        fd = os.open(DEFAULT_KMSG_PATH, os.O_WRONLY | os.O_CLOEXEC)
        try:
            for line in lines[start : start + LINES_PER_OPEN]:
                os.write(fd, f"<{USER_DEBUG}>{line}\n".encode())
        finally:
            os.close(fd)


def read_marker(reader: KmsgReader, text: str) -> int:
    for rec in reader.read_available():
        if rec.message == text:
            return rec.seq
    raise AssertionError(f"{text!r} not read back")


def test_overrun_is_counted_and_reading_continues() -> None:
    if os.environ.get("OOMGUARD_IN_VM") != "1":
        pytest.skip("floods the kernel log: only inside the lane-2 VM")
    run = uuid.uuid4().hex
    with KmsgReader() as reader:
        reader.read_available()
        start = f"oomguard-test overrun start {run}"
        write_lines([start])
        start_seq = read_marker(reader, start)

        count = FLOOD_FACTOR * ring_bytes() // FILLER_BYTES
        pad = "x" * FILLER_BYTES
        write_lines([f"oomguard-test overrun filler {run} {i:07d} {pad}" for i in range(count)])

        # Our position was overwritten long ago: the first read gets EPIPE, and reading
        # resumes at the oldest record the ring still holds.
        lost_before = reader.lost_records
        records = reader.read_available()
        assert records, "nothing read after the overrun"
        assert records[0].seq > start_seq + 1
        gaps = sum(b.seq - a.seq - 1 for a, b in itertools.pairwise(records))
        assert reader.lost_records - lost_before == records[0].seq - start_seq - 1 + gaps > 0
        seqs = [r.seq for r in records]
        assert seqs == sorted(set(seqs))
        last_filler = f"oomguard-test overrun filler {run} {count - 1:07d} "
        assert any(r.message.startswith(last_filler) for r in records)

        # And the reader keeps going past the gap.
        end = f"oomguard-test overrun end {run}"
        write_lines([end])
        assert read_marker(reader, end) > records[-1].seq
        assert reader.last_seq is not None and reader.last_seq > records[-1].seq
