"""Which kernel log is read (`open_kernel_log`): /dev/kmsg, else syslog(2), else none.

/dev/kmsg is stood in for by a file (a missing one: the device refused); syslog(2) by
`SyslogReader` on a fake log (tests/unit/test_klog_syslog.py), or one that is refused.
"""

from __future__ import annotations

import errno
import functools
from pathlib import Path

import pytest

from oomguard.kernel import open_log
from oomguard.kernel.kmsg import KmsgReader
from oomguard.kernel.open_log import COUNTERS_ONLY, open_kernel_log
from oomguard.kernel.syslog import SyslogReader, SyslogUnavailable
from tests.unit.test_klog_syslog import FakeKernelLog


@pytest.fixture
def syslog_works(monkeypatch: pytest.MonkeyPatch) -> FakeKernelLog:
    klog = FakeKernelLog([b"<6>[  100.000000] a line"])
    fake = functools.partial(SyslogReader, read_log=klog.read_all, log_size=klog.size)
    fake.source = SyslogReader.source  # type: ignore[attr-defined]
    monkeypatch.setattr(open_log, "SyslogReader", fake)
    return klog


@pytest.fixture
def syslog_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(**_: object) -> SyslogReader:
        raise SyslogUnavailable(errno.EPERM, "cannot read the kernel log through syslog(2): no")

    refused.source = SyslogReader.source  # type: ignore[attr-defined]
    monkeypatch.setattr(open_log, "SyslogReader", refused)


def test_disabled_reads_no_log_and_is_no_error() -> None:
    opened = open_kernel_log(None)
    assert (opened.reader, opened.source, opened.error) == (None, "none", None)
    assert opened.status == f"the kernel log is not read (disabled); {COUNTERS_ONLY}"


def test_kmsg_first(tmp_path: Path) -> None:
    kmsg = tmp_path / "kmsg"
    kmsg.write_bytes(b"")
    opened = open_kernel_log(str(kmsg))
    assert isinstance(opened.reader, KmsgReader) and opened.source == "kmsg"
    assert opened.reader.pollable_fd is not None
    assert (opened.status, opened.error) == (f"reading the kernel log from {kmsg}", None)
    assert opened.with_reads("") == opened  # polled: nothing to add
    opened.reader.close()


def test_each_reader_resumes_from_its_own_position(
    tmp_path: Path, syslog_works: FakeKernelLog
) -> None:
    kmsg = tmp_path / "kmsg"
    kmsg.write_bytes(b"")
    with KmsgReader(str(kmsg), after_seq=None) as fresh:
        only_new = fresh.last_seq
    opened = open_kernel_log(str(kmsg), after={"kmsg": 41, "syslog": 7})
    assert opened.reader is not None and opened.reader.last_seq == 41
    opened.reader.close()
    opened = open_kernel_log(str(kmsg), after={"syslog": 7})  # kmsg: only new records
    assert opened.reader is not None and opened.reader.last_seq == only_new
    opened.reader.close()
    opened = open_kernel_log(str(tmp_path / "absent"), after={"kmsg": 41, "syslog": 7})
    assert opened.source == "syslog"
    assert opened.reader is not None and opened.reader.last_seq == 7


def test_syslog_when_kmsg_is_refused(tmp_path: Path, syslog_works: FakeKernelLog) -> None:
    missing = tmp_path / "no-such-kmsg"
    opened = open_kernel_log(str(missing))
    assert opened.source == "syslog" and opened.reader is not None
    assert opened.reader.pollable_fd is None
    assert opened.error is None
    assert opened.status == (
        f"cannot read {missing}: no such device (is /dev mounted from the host?); "
        "reading the kernel log through syslog(2) instead"
    )
    assert opened.with_reads("on each cgroup OOM signal and every 5 s").status == (
        f"cannot read {missing}: no such device (is /dev mounted from the host?); "
        "reading the kernel log through syslog(2) instead, on each cgroup OOM signal and "
        "every 5 s"
    )


def test_no_fallback_means_counters_only(tmp_path: Path, syslog_works: FakeKernelLog) -> None:
    missing = tmp_path / "no-such-kmsg"
    opened = open_kernel_log(str(missing), syslog_fallback=False)
    assert (opened.reader, opened.source) == (None, "none")
    assert opened.error is not None and opened.status == opened.error
    assert opened.error.startswith(f"cannot read {missing}: no such device")
    assert opened.error.endswith(COUNTERS_ONLY)


def test_both_refused_says_both_causes(tmp_path: Path, syslog_refused: None) -> None:
    missing = tmp_path / "no-such-kmsg"
    opened = open_kernel_log(str(missing))
    assert (opened.reader, opened.source) == (None, "none")
    assert (
        opened.error
        == opened.status
        == (
            f"cannot read {missing}: no such device (is /dev mounted from the host?); "
            f"cannot read the kernel log through syslog(2): no; {COUNTERS_ONLY}"
        )
    )


def test_before_start_nothing_is_read() -> None:
    before = open_log.NOT_OPENED
    assert (before.reader, before.source, before.error) == (None, "none", None)
    assert before.status == "the kernel log is not read"
