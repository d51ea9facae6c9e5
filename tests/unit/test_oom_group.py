"""Reading and writing `memory.oom.group`, on plain files standing in for a cgroup.

The kernel's own behaviour (EROFS on a read-only mount, a group kill) is tested on a
real cgroup v2 hierarchy in lane 2 (tests/vm/test_reconciler_v2.py).
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from oomguard.cgroups.oom_group import OOM_GROUP_FILE, read_oom_group, write_oom_group


@pytest.mark.parametrize(("content", "value"), [("1\n", 1), ("0\n", 0), ("0", 0)])
def test_read(tmp_path: Path, content: str, value: int) -> None:
    (tmp_path / OOM_GROUP_FILE).write_text(content)
    assert read_oom_group(tmp_path) == value


def test_no_file_is_none(tmp_path: Path) -> None:
    """cgroup v1 has no such file; a removed cgroup has no directory."""
    assert read_oom_group(tmp_path) is None
    assert read_oom_group(tmp_path / "gone") is None
    (tmp_path / "file").write_text("")
    assert read_oom_group(tmp_path / "file") is None  # ENOTDIR


@pytest.mark.parametrize("content", ["", "max\n", "-1\n", "\x00"])
def test_garbage_is_an_error(tmp_path: Path, content: str) -> None:
    (tmp_path / OOM_GROUP_FILE).write_text(content)
    with pytest.raises(ValueError, match=OOM_GROUP_FILE):
        read_oom_group(tmp_path)


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text("1\n")
    (tmp_path / OOM_GROUP_FILE).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError) as read:
        read_oom_group(tmp_path)
    assert read.value.errno == errno.ELOOP
    with pytest.raises(OSError) as write:
        write_oom_group(tmp_path, 0)
    assert write.value.errno == errno.ELOOP
    assert (tmp_path / "elsewhere").read_text() == "1\n"


def test_write(tmp_path: Path) -> None:
    (tmp_path / OOM_GROUP_FILE).write_text("1\n")
    write_oom_group(tmp_path, 0)
    assert read_oom_group(tmp_path) == 0
    write_oom_group(tmp_path, 1)
    assert read_oom_group(tmp_path) == 1


def test_a_write_never_creates_the_file(tmp_path: Path) -> None:
    """A directory without the file (v1, or not a cgroup) fails; nothing appears."""
    with pytest.raises(FileNotFoundError):
        write_oom_group(tmp_path, 0)
    assert not (tmp_path / OOM_GROUP_FILE).exists()


@pytest.mark.parametrize("value", [2, -1, True])
def test_only_0_or_1_is_written(tmp_path: Path, value: int) -> None:
    (tmp_path / OOM_GROUP_FILE).write_text("1\n")
    with pytest.raises(ValueError, match="0 or 1"):
        write_oom_group(tmp_path, value)
    assert read_oom_group(tmp_path) == 1
