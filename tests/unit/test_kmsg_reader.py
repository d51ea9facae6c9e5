"""KmsgReader against the machine's real /dev/kmsg.

Each test writes its own uniquely named marker line and looks for it, so it tolerates
whatever else the kernel and other tests print meanwhile. The markers are plain text that
looks nothing like an OOM report, and they are written from user space (facility 1), which
the OOM assembler ignores anyway. The ring-buffer overrun is tested only in the VM lane
(tests/vm/test_kmsg_overrun.py): provoking it here would wipe this machine's kernel log.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import select
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from oomguard.kernel.kmsg import DEFAULT_KMSG_PATH, KmsgReader, KmsgUnavailable
from oomguard.kernel.parse import KmsgRecord

USER_FACILITY = 1  # what /dev/kmsg gives every line written from user space
DEBUG_LEVEL = 7  # written at debug level, so consoles stay quiet
WAIT_S = 5.0


def _probe_kmsg() -> str | None:
    """Why /dev/kmsg cannot be used here, or None when it can be read and written."""
    try:
        fd = os.open(DEFAULT_KMSG_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return f"{DEFAULT_KMSG_PATH} is not readable and writable here: {exc.strerror}"
    os.close(fd)
    return None


@pytest.fixture
def writer() -> Iterator[int]:
    """A descriptor to write marker lines with. /dev/kmsg rate-limits each open file to
    10 lines per 5 s by default, so every test gets its own."""
    reason = _probe_kmsg()
    if reason is not None:
        pytest.skip(reason)
    fd = os.open(DEFAULT_KMSG_PATH, os.O_WRONLY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def write_marker(fd: int, label: str) -> str:
    text = f"oomguard-test {label} {uuid.uuid4().hex}"
    os.write(fd, f"<{USER_FACILITY * 8 + DEBUG_LEVEL}>{text}\n".encode())
    return text


def read_until(reader: KmsgReader, text: str) -> tuple[KmsgRecord, list[KmsgRecord]]:
    """The record carrying `text`, and every record read on the way (it included)."""
    seen: list[KmsgRecord] = []
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        seen += reader.read_available()
        for rec in seen:
            if rec.message == text:
                return rec, seen
        select.select([reader], [], [], 0.1)
    raise AssertionError(f"{text!r} not read within {WAIT_S} s")


def test_reads_a_new_record_with_a_larger_seq(writer: int) -> None:
    with KmsgReader() as reader:
        reader.read_available()
        before = reader.last_seq
        first = write_marker(writer, "first")
        rec, seen = read_until(reader, first)
        second = write_marker(writer, "second")
        rec2, _ = read_until(reader, second)

    assert (rec.facility, rec.priority) == (USER_FACILITY, DEBUG_LEVEL)
    assert rec.time_us > 0
    if before is not None:
        assert rec.seq > before
    assert rec2.seq > rec.seq
    seqs = [r.seq for r in seen]
    assert seqs == sorted(set(seqs))  # oldest first, no record twice


def test_starts_at_the_end(writer: int) -> None:
    old = write_marker(writer, "old")
    with KmsgReader() as reader:
        new = write_marker(writer, "new")
        _, seen = read_until(reader, new)
    assert old not in [r.message for r in seen]


def test_after_seq_recovers_records_from_before_the_reader_existed(writer: int) -> None:
    with KmsgReader() as reader:
        marker = write_marker(writer, "recover")
        rec, _ = read_until(reader, marker)

    # A restarted agent that had handled everything up to the record before the marker.
    with KmsgReader(after_seq=rec.seq - 1) as restarted:
        records = restarted.read_available()
        assert records[0] == rec
        assert restarted.lost_records == 0
        assert restarted.last_seq is not None and restarted.last_seq >= rec.seq

    # One that had handled the marker already does not see it again.
    with KmsgReader(after_seq=rec.seq) as caught_up:
        assert rec.seq not in [r.seq for r in caught_up.read_available()]


def test_after_seq_minus_one_reads_every_retained_record(writer: int) -> None:
    marker = write_marker(writer, "whole-ring")
    with KmsgReader(after_seq=-1) as reader:
        rec, records = read_until(reader, marker)
        # Whatever the ring had already dropped since boot counts as lost: exactly the
        # records before the oldest one retained, plus any gap while we read.
        gaps = sum(b.seq - a.seq - 1 for a, b in itertools.pairwise(records))
        assert reader.lost_records == records[0].seq + gaps
        assert records[-1].seq >= rec.seq


def test_fileno_becomes_readable_when_a_record_is_printed(writer: int) -> None:
    with KmsgReader() as reader:
        poll = select.poll()
        poll.register(reader.fileno(), select.POLLIN)
        marker = write_marker(writer, "poll")
        assert poll.poll(WAIT_S * 1000), "no POLLIN after a record was printed"
        read_until(reader, marker)


def test_read_available_does_not_block(writer: int) -> None:
    with KmsgReader() as reader:
        reader.read_available()
        # Opened non-blocking, so a read with nothing new ends with EAGAIN instead of
        # waiting for the next kernel record (minutes away on a quiet host).
        assert fcntl.fcntl(reader.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
        start = time.monotonic()
        reader.read_available()  # nothing (or little) new: must return at once
        # Microseconds in fact; the bound only catches a wait for the next record and is
        # loose for a loaded 2-core machine.
        assert time.monotonic() - start < 10.0


def test_close_and_context_manager(writer: int) -> None:
    with KmsgReader() as reader:
        assert not reader.closed
        assert reader.fileno() >= 0
    assert reader.closed
    reader.close()  # twice is fine
    with pytest.raises(ValueError):
        reader.fileno()
    with pytest.raises(ValueError):
        reader.read_available()


def test_missing_device_raises_a_clear_error(tmp_path: Path) -> None:
    path = str(tmp_path / "kmsg")
    with pytest.raises(KmsgUnavailable) as info:
        KmsgReader(path)
    exc = info.value
    assert isinstance(exc, OSError)
    assert exc.errno == errno.ENOENT
    message = str(exc)
    assert message.startswith(f"cannot read {path}: ")
    assert "cgroup counters without the victim's name" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (
            errno.EACCES,
            "permission denied (needs root or CAP_SYSLOG, and kernel.dmesg_restrict may "
            "forbid it to others)",
        ),
        (
            errno.EPERM,
            "operation not permitted (in a container: the runtime allows /dev/kmsg only to "
            "privileged containers; on a host: needs CAP_SYSLOG)",
        ),
    ],
)
def test_permission_denied_names_the_cause(
    monkeypatch: pytest.MonkeyPatch, code: int, reason: str
) -> None:
    # As root nothing is denied here, so stand in for an unprivileged agent's open().
    def deny(path: str, flags: int, mode: int = 0o777) -> int:
        raise PermissionError(code, os.strerror(code), path)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(KmsgUnavailable) as info:
        KmsgReader()
    assert info.value.errno == code
    assert str(info.value) == (
        f"cannot read /dev/kmsg: {reason}; OOM kills will be reported from "
        "cgroup counters without the victim's name"
    )
