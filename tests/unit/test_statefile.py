"""What the agent's one-value state files share (`statefile.StateFile`), shown on the kmsg
position, whose own tests (round trip, boots, readers) are in test_klog_syslog.py and
test_agent_handed_on.py. The counter snapshot and the oom_score_adj state have theirs."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from oomguard.state import files as statefile
from oomguard.state.files import parse_versioned
from oomguard.state.log_position import LOG_POSITION_FILE, LogPosition

BOOT = "8c2e6f0b-1d3a-4a5e-9b7c-2f4d6e8a0b1c"
FORMAT = "oomguard/example/v1"


class ExampleFormatError(ValueError):
    pass


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1]", "not an example state (a JSON list)"),
        (b'{"boot_id": "b"}', "format None, this version reads only 'oomguard/example/v1'"),
        (b'{"format": "oomguard/example/v2"}', "format 'oomguard/example/v2'"),
        (f'{{"format": "{FORMAT}", "boot_id": 7}}'.encode(), "boot_id is not a string"),
    ],
)
def test_parse_versioned_says_what_is_wrong(raw: bytes, why: str) -> None:
    with pytest.raises(ExampleFormatError) as caught:
        parse_versioned(raw, FORMAT, "an example state", ExampleFormatError)
    assert why in str(caught.value)


def test_parse_versioned_returns_the_body_and_boot() -> None:
    raw = f'{{"format": "{FORMAT}", "boot_id": "{BOOT}", "x": 1}}'.encode()
    body, boot = parse_versioned(raw, FORMAT, "an example state")
    assert (body["x"], boot) == (1, BOOT)


@pytest.mark.parametrize(
    "content", [b"{", b'{"boot_id": "b"}', b'{"seq": "x", "boot_id": "b"}', b"[1]", b'"s"']
)
def test_a_corrupt_position_is_set_aside_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    (tmp_path / LOG_POSITION_FILE).write_bytes(content)
    with caplog.at_level(logging.INFO, logger="oomguard.state.log_position"):
        assert LogPosition(tmp_path, BOOT).resume_after("kmsg") is None  # only new records
    (aside,) = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert aside.name.startswith(f"{LOG_POSITION_FILE}.corrupt-")
    assert aside.read_bytes() == content
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.name == "oomguard.state.log_position"
    assert "moved it aside" in record.getMessage() and "cgroup counters" in record.getMessage()
    # The second reader's look finds no file: a first start, silently.
    assert LogPosition(tmp_path, BOOT).resume_after("syslog") is None


def test_a_directory_at_the_name_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Left in place, it would make every write fail (a file cannot replace it)."""
    (tmp_path / LOG_POSITION_FILE).mkdir()
    position = LogPosition(tmp_path, BOOT)
    with caplog.at_level(logging.ERROR):
        assert position.resume_after() is None
    assert "a directory" in caplog.text and "moved it aside" in caplog.text
    position.save(3)
    assert LogPosition(tmp_path, BOOT).resume_after() == 3


def test_a_position_that_cannot_be_read_or_moved_is_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / LOG_POSITION_FILE).write_text("{")

    def broken_disk(*_: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as patched:
        patched.setattr(statefile, "read_capped", broken_disk)
        with caplog.at_level(logging.ERROR):
            assert LogPosition(tmp_path, BOOT).resume_after() is None
    assert "cannot read" in caplog.text and "Input/output error" in caplog.text
    assert (tmp_path / LOG_POSITION_FILE).exists()  # left in place: it may read later

    def refuse(*_: object, **__: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert LogPosition(tmp_path, BOOT).resume_after() is None
    assert "could not be moved aside" in caplog.text


def test_a_failed_position_write_is_logged_once_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    position = LogPosition(tmp_path / "absent", BOOT)
    with caplog.at_level(logging.ERROR):
        position.save(10)
        position.save(11)
    assert position.save_errors == 2 and caplog.text.count("cannot write") == 1
    (tmp_path / "absent").mkdir()
    position.save(11)
    assert LogPosition(tmp_path / "absent", BOOT).resume_after() == 11
