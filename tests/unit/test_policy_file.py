"""PolicySource: reload on change (ConfigMap-style symlink swaps too), keep the last good."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from oomguard.metrics import Metrics
from oomguard.policy import load_policy
from oomguard.policy_file import PolicySource

TRUST_A = "trusted_namespaces: {names: [a]}\n"
TRUST_B = "trusted_namespaces: {names: [b]}\n"
INVALID = "allow_never_kill: maybe\n"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def trusted(source: PolicySource) -> tuple[str, ...]:
    return source.current().trusted_namespaces.names


def configmap_dir(root: Path, text: str, version: int) -> None:
    """Do what the kubelet does: a new timestamped dir, then rename ..data over the old."""
    data = root / f"..2024_01_01_00_00_0{version}.000"
    data.mkdir()
    (data / "policy.yaml").write_text(text)
    tmp = root / "..data_tmp"
    tmp.symlink_to(data.name)
    os.rename(tmp, root / "..data")
    link = root / "policy.yaml"
    if not link.is_symlink():
        link.symlink_to("..data/policy.yaml")


def test_missing_file_means_the_default_policy(tmp_path: Path) -> None:
    source = PolicySource(tmp_path / "absent.yaml")
    assert source.current() == load_policy("{}")
    assert source.last_error is None and source.errors == 0
    assert not source.loaded_from_file


def test_reloads_when_the_file_changes_after_the_poll_interval(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(TRUST_A)
    clock = Clock()
    source = PolicySource(path, poll_interval_s=5.0, clock=clock)
    assert trusted(source) == ("a",)
    path.write_text(TRUST_B + "# a longer file\n")
    clock.now = 1.0
    assert trusted(source) == ("a",)  # not polled again yet
    clock.now = 6.0
    assert trusted(source) == ("b",)
    assert source.reloads == 2


def test_unchanged_file_is_not_reread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(TRUST_A)
    source = PolicySource(path, poll_interval_s=0.0)
    source.current()
    reads: list[str] = []
    monkeypatch.setattr(source, "_read", lambda resolved: reads.append(resolved) or TRUST_B)
    for _ in range(5):
        assert trusted(source) == ("a",)
    assert reads == []


def test_configmap_symlink_swap_is_picked_up(tmp_path: Path) -> None:
    configmap_dir(tmp_path, TRUST_A, 1)
    source = PolicySource(tmp_path / "policy.yaml", poll_interval_s=0.0)
    assert trusted(source) == ("a",)
    # Same size, and possibly the same mtime: only the resolved file differs.
    configmap_dir(tmp_path, TRUST_B, 2)
    assert trusted(source) == ("b",)
    assert source.loaded_from_file


def test_invalid_file_keeps_the_last_good_policy_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    configmap_dir(tmp_path, TRUST_A, 1)
    metrics = Metrics(process_metrics=False)
    source = PolicySource(tmp_path / "policy.yaml", poll_interval_s=0.0, metrics=metrics)
    assert trusted(source) == ("a",)
    with caplog.at_level(logging.ERROR, logger="oomguard.policy_file"):
        configmap_dir(tmp_path, INVALID, 2)
        assert trusted(source) == ("a",)
        assert trusted(source) == ("a",)  # the same bad version: not counted twice
        configmap_dir(tmp_path, INVALID + "\n", 3)  # a new version, same error
        assert trusted(source) == ("a",)
    assert source.last_error is not None and "allow_never_kill" in source.last_error
    assert source.errors == 2
    assert metrics.policy_reload_errors._value.get() == 2
    logged = [r for r in caplog.records if "INVALID" in r.getMessage()]
    assert len(logged) == 1  # loud, once per distinct error
    assert "previous policy" in logged[0].getMessage()

    configmap_dir(tmp_path, TRUST_B, 4)
    assert trusted(source) == ("b",)
    assert source.last_error is None


def test_invalid_file_at_start_keeps_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("[not, a, mapping]")
    source = PolicySource(path)
    assert source.current() == load_policy("{}")
    assert source.last_error and source.errors == 1


def test_file_removed_falls_back_to_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(TRUST_A)
    source = PolicySource(path, poll_interval_s=0.0)
    assert trusted(source) == ("a",)
    path.unlink()
    assert source.current() == load_policy("{}")
    path.write_text(TRUST_B)
    assert trusted(source) == ("b",)


def test_reload_ignores_the_poll_interval(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(TRUST_A)
    source = PolicySource(path, poll_interval_s=3600.0)
    assert trusted(source) == ("a",)
    path.write_text(TRUST_B + "\n")
    assert trusted(source) == ("a",)
    assert source.reload().trusted_namespaces.names == ("b",)
