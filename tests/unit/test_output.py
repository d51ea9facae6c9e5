"""`watch`'s two outputs for one record (pure): the human line escaped, JSON raw."""

from __future__ import annotations

import json

from oomguard.output import human_line, json_line
from oomguard.safe_text import decode
from tests.unit.test_events import make_kill

HOSTILE_COMM = "\x1b[2J\x1b]0;pwn\x07\rX"  # 15 bytes: fits /proc/self/comm


def test_human_line_escapes_the_process_name() -> None:
    line = human_line(make_kill(command=HOSTILE_COMM))
    assert "pid 4242 (\\x1b[2J\\x1b]0;pwn\\x07\\rX) in container abababababab" in line
    assert line.isprintable()


def test_human_line_escapes_a_cgroup_path_and_unit() -> None:
    path = "/evil\x1b[2J" + decode(b"\xff") + "\u202e"
    line = human_line(make_kill(container_id=None, pod_uid=None, cgroup=path))
    assert "in cgroup /evil\\x1b[2J\\xff\\u202e: " in line
    assert line.isprintable()


def test_json_line_keeps_the_raw_name() -> None:
    # JSON escapes controls itself, and a script wants the name as the process set it.
    line = json_line(make_kill(command=HOSTILE_COMM))
    assert "\x1b" not in line and "\r" not in line
    assert json.loads(line)["command"] == HOSTILE_COMM


def test_json_line_shows_bytes_that_are_not_utf8_as_replacement() -> None:
    # As before the readers kept such bytes: JSON cannot hold them, and the line must
    # stay writable as UTF-8.
    line = json_line(make_kill(command=decode(b"a\xffb"), cgroup=decode(b"/x\xfe")))
    line.encode("utf-8")
    record = json.loads(line)
    assert (record["command"], record["cgroup"]) == ("a\ufffdb", "/x\ufffd")
