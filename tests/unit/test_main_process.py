"""The main-process rules, from /proc/PID/status text and cgroup process lists written
here (no root, no kernel)."""

from __future__ import annotations

from pathlib import Path

import pytest

from oomguard.detect.main_process import (
    Lineage,
    MainProcessProbe,
    alone,
    classify,
    parse_status,
    within,
)

STATUS = "Name:\tapp\nState:\tR (running)\nTgid:\t4242\nPid:\t4242\nPPid:\t4100\nNSpid:\t4242\t1\n"


def test_parse_status_reads_parent_and_innermost_pid() -> None:
    assert parse_status(STATUS) == Lineage(ppid=4100, ns_pid=1, ns_levels=2)


@pytest.mark.parametrize(
    "text",
    ["", "PPid:\t-1\n", "PPid:\t99999999999999\nNSpid:\n", "PPid: x\nNSpid:\tone\n", "\x00\xff"],
)
def test_odd_status_reads_as_unknown(text: str) -> None:
    lineage = parse_status(text)
    assert lineage.ppid is None
    assert classify(lineage, None, None) is None


HOST = Lineage(ppid=10, ns_pid=500, ns_levels=1)
NS_INIT = Lineage(ppid=10, ns_pid=1, ns_levels=2)
NS_OTHER = Lineage(ppid=10, ns_pid=7, ns_levels=2)


@pytest.mark.parametrize(
    ("victim", "parent_in", "own_init", "expected"),
    [
        (NS_OTHER, True, None, False),  # forked worker
        (NS_INIT, True, None, False),  # parent inside wins (nested namespaces in a container)
        (NS_INIT, False, None, True),  # the container's init
        (NS_OTHER, False, True, False),  # kubectl exec into a container with its own init
        (NS_OTHER, False, False, True),  # main process of a shareProcessNamespace pod
        (HOST, False, False, True),  # hostPID container's main process
        (HOST, False, None, None),  # cannot tell
        (HOST, None, None, None),  # parent unknown
    ],
)
def test_classify(
    victim: Lineage, parent_in: bool | None, own_init: bool | None, expected: bool | None
) -> None:
    assert classify(victim, parent_in, own_init) is expected


def test_within_is_by_path_component() -> None:
    assert within("/kubepods/pod1/abc", "/kubepods/pod1/abc")
    assert within("/kubepods/pod1/abc/nested", "/kubepods/pod1/abc")
    assert not within("/kubepods/pod1/abcdef", "/kubepods/pod1/abc")
    assert not within(None, "/kubepods/pod1/abc")


CONTAINER = "/kubepods/burstable/pod1/abc"


def probe() -> MainProcessProbe:
    return MainProcessProbe(lambda pid: None, proc_root="/nonexistent")


def cgroup_dir(tmp_path: Path, procs: str, nested: bool = False) -> Path:
    (tmp_path / "cgroup.procs").write_text(procs)
    (tmp_path / "memory.limit_in_bytes").write_text("67108864\n")
    if nested:
        (tmp_path / "child").mkdir()
    return tmp_path


def test_the_only_process_of_its_container_is_its_main_process(tmp_path: Path) -> None:
    assert probe().only_process(42, cgroup_dir(tmp_path, "42\n"))
    assert probe().decide(alone(CONTAINER), 42, CONTAINER, tmp_path) is True


@pytest.mark.parametrize(
    ("procs", "nested"),
    [
        ("7\n42\n", False),  # the main process (or another) is still there
        ("", False),  # the victim already left: nothing to go by
        ("7\n", False),  # a stranger's list (pid reuse, a late read)
        ("42\n", True),  # a cgroup below it may hold the main process
    ],
    ids=["with-another", "empty", "without-the-victim", "nested-cgroup"],
)
def test_not_alone_is_decided_the_long_way(tmp_path: Path, procs: str, nested: bool) -> None:
    assert not probe().only_process(42, cgroup_dir(tmp_path, procs, nested))


def test_an_unreadable_cgroup_is_not_alone(tmp_path: Path) -> None:
    assert not probe().only_process(42, tmp_path / "gone")


def test_alone_in_another_container_says_nothing() -> None:
    assert probe().decide(alone(CONTAINER), 42, "/kubepods/burstable/pod1/def", Path("/")) is None
