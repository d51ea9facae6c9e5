"""The agent's JSON log lines carry hostile names safely (`--log-format json`)."""

from __future__ import annotations

import json
import logging

from oomguard.agent import JsonLogFormatter

HOSTILE = "\x1b[2J\x1b]0;pwn\x07\rX \x9b31m \u202egnp.exe caf\u00e9 \udcff"


def test_a_hostile_name_is_escaped_and_kept() -> None:
    record = logging.LogRecord(
        "oomguard", logging.INFO, __file__, 1, "oom kill: %s", (HOSTILE,), None
    )
    line = JsonLogFormatter().format(record)
    line.encode("ascii")  # nothing a terminal acts on, nothing that cannot be written
    assert all(ch.isprintable() for ch in line)
    assert json.loads(line)["message"] == f"oom kill: {HOSTILE}"
