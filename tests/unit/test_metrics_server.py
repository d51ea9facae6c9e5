"""The /metrics, /healthz, /readyz server under hostile clients, over real sockets:
connections that never send a request, a flood of them, and what reaches stderr."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from oomguard.metrics import MAX_CONNECTIONS, WORKER_THREADS, Metrics, Server, serve


@pytest.fixture
def server() -> Iterator[Server]:
    s = serve(Metrics(process_metrics=False), "127.0.0.1:0", ready=lambda: True, alive=lambda: True)
    try:
        yield s
    finally:
        s.stop()


def healthz(server: Server) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=30) as r:
        return int(r.status)


def idle_connections(server: Server, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(count)]


def test_idle_connections_take_no_thread_and_probes_still_answer(server: Server) -> None:
    before = threading.active_count()
    idle = idle_connections(server, 40)
    try:
        # Accepted in order: once the probe is answered, the 40 before it were taken.
        assert healthz(server) == 200
        assert threading.active_count() - before <= 0  # the pool was started by serve()
    finally:
        for conn in idle:
            conn.close()


def test_a_flood_of_idle_connections_cannot_shut_probes_out(server: Server) -> None:
    idle = idle_connections(server, MAX_CONNECTIONS + 20)
    try:
        assert healthz(server) == 200
        # The longest idle were closed to make room: the server still holds at most
        # MAX_CONNECTIONS, so the first ones read end-of-file.
        assert idle[0].recv(1) == b""
    finally:
        for conn in idle:
            conn.close()


def test_the_server_runs_a_fixed_number_of_threads(server: Server) -> None:
    prefix = f"oomguard-metrics-{server.port}"
    names = [t.name for t in threading.enumerate() if t.name.startswith(prefix)]
    assert len(names) == WORKER_THREADS + 1  # the workers and the one that accepts


# A child process with the agent's JSON log format on stderr: three connections that
# never send a request, closed by the server when idle too long.
IDLE_CLIENTS = r"""
import logging, socket, sys
from oomguard.agent import JsonLogFormatter
from oomguard.metrics import Metrics, serve
handler = logging.StreamHandler(sys.stderr)
handler.setFormatter(JsonLogFormatter())
logging.getLogger().addHandler(handler)
logging.getLogger().setLevel(logging.DEBUG)
server = serve(Metrics(process_metrics=False), "127.0.0.1:0", ready=lambda: True,
               alive=lambda: True, idle_timeout_s=0.3)
conns = [socket.create_connection(("127.0.0.1", server.port), timeout=60) for _ in range(3)]
for conn in conns:
    assert conn.recv(1) == b"", "the server closes an idle connection"
slow = socket.create_connection(("127.0.0.1", server.port), timeout=60)
slow.sendall(b"GET /heal")  # half a request, then silence
assert slow.recv(1) == b""
server.stop()
print("ok")
"""


def test_idle_connections_end_in_the_log_format_not_tracebacks_on_stderr() -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", IDLE_CLIENTS],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
    )
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr
    lines = done.stderr.splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert not any("Traceback" in line for line in lines)
    closed = [r for r in records if "idle" in r["message"]]
    assert len(closed) == 4 and all(r["level"] == "debug" for r in closed)


def test_a_failing_scrape_is_one_log_record_not_stderr(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    class Broken:
        def describe(self) -> list[object]:
            return []

        def collect(self) -> Iterator[object]:
            raise RuntimeError("collector broke")

    metrics = Metrics(process_metrics=False)
    metrics.registry.register(Broken())  # type: ignore[arg-type]
    with (
        caplog.at_level(logging.ERROR, logger="oomguard.metrics"),
        serve(metrics, "127.0.0.1:0", ready=lambda: True, alive=lambda: True) as s,
    ):
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(f"http://127.0.0.1:{s.port}/metrics", timeout=30)
        failed.value.close()
        assert failed.value.code == 500
        assert healthz(s) == 200
    (record,) = caplog.records
    assert "collector broke" in record.getMessage()
    assert capfd.readouterr().err == ""
