"""The main-process rules, from /proc/PID/status text (no root, no kernel)."""

from __future__ import annotations

import pytest

from oomguard.detect.main_process import Lineage, classify, parse_status, within

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
