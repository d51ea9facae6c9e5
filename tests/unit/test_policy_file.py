"""PolicySource: reload on change (ConfigMap-style symlink swaps too), keep the last good."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from oomguard.cgroups.hierarchy import CgroupVersion, MemoryHierarchy
from oomguard.metrics import Metrics
from oomguard.steer import policy_file
from oomguard.steer.admin import AdminPolicy, load_policy
from oomguard.steer.policy_file import PolicySource
from oomguard.steer.reconciler import PolicyProvider, Reconciler

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
    with caplog.at_level(logging.ERROR, logger="oomguard.steer.policy_file"):
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


# -- hostile files (issue 14): the agent keeps going, with the last good policy --------

DEEP = "[" * 100_000 + "]" * 100_000  # 200 kB, under the size cap


def alias_bomb(levels: int = 9, fan_out: int = 9) -> str:
    lines = ["l0: &l0 [" + ", ".join(["lol"] * fan_out) + "]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * fan_out) + "]")
    return "\n".join(lines) + "\n"


def policy_valid(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("oomguard_policy_valid")
    assert value is not None
    return value


@pytest.mark.parametrize(
    ("text", "why"),
    [(DEEP, "nested more than"), (alias_bomb(), "aliases count each time")],
    ids=["deeply-nested", "alias-bomb"],
)
def test_hostile_file_keeps_the_last_good_policy_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, why: str
) -> None:
    configmap_dir(tmp_path, TRUST_A, 1)
    metrics = Metrics(process_metrics=False)
    source = PolicySource(tmp_path / "policy.yaml", poll_interval_s=0.0, metrics=metrics)
    assert trusted(source) == ("a",)
    assert policy_valid(metrics) == 1
    with caplog.at_level(logging.ERROR, logger="oomguard.steer.policy_file"):
        configmap_dir(tmp_path, text, 2)
        for _ in range(3):
            assert trusted(source) == ("a",)
    assert source.last_error is not None and why in source.last_error
    assert source.kept == "the previous policy"
    assert policy_valid(metrics) == 0
    assert source.errors == 1
    logged = [r.getMessage() for r in caplog.records if "INVALID" in r.getMessage()]
    assert len(logged) == 1 and why in logged[0]

    configmap_dir(tmp_path, TRUST_B, 3)
    assert trusted(source) == ("b",)
    assert policy_valid(metrics) == 1 and source.last_error is None


def test_hostile_file_at_start_keeps_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(DEEP)
    metrics = Metrics(process_metrics=False)
    source = PolicySource(path, metrics=metrics)
    assert source.current() == load_policy("{}")
    assert source.kept == "the default policy"
    assert policy_valid(metrics) == 0


def test_anything_the_loader_raises_is_a_rejected_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last resort: even a loader bug (not a PolicyError) never escapes current()."""
    path = tmp_path / "policy.yaml"
    path.write_text(TRUST_A)
    source = PolicySource(path, poll_interval_s=0.0)
    assert trusted(source) == ("a",)

    def broken(text: str) -> AdminPolicy:
        raise TypeError("a bug in the loader")

    monkeypatch.setattr(policy_file, "load_policy", broken)
    path.write_text(TRUST_B + "# changed\n")
    assert trusted(source) == ("a",)
    assert source.last_error is not None and "TypeError" in source.last_error


def test_an_error_fixed_then_back_is_said_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="oomguard.steer.policy_file"):
        for version, text in enumerate([TRUST_A, INVALID, TRUST_B, INVALID], start=1):
            configmap_dir(tmp_path, text, version)
            if version == 1:
                source = PolicySource(tmp_path / "policy.yaml", poll_interval_s=0.0)
            source.current()
    assert len([r for r in caplog.records if "INVALID" in r.getMessage()]) == 2


class RaisingPolicy:
    """A provider whose reading fails the way the unbounded YAML reader did."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.policy = load_policy(TRUST_A)

    def current(self) -> AdminPolicy:
        if self.error is not None:
            raise self.error
        return self.policy


def reconciler(tmp_path: Path, source: PolicyProvider) -> Reconciler:
    root = tmp_path / "cgroups"
    root.mkdir(exist_ok=True)
    return Reconciler(
        MemoryHierarchy(CgroupVersion.V1, root),
        root,
        node_memory_bytes=1 << 30,
        policy_source=source,
        state_dir=None,
    )


def test_a_hostile_policy_file_does_not_stop_the_reconcile_pass(tmp_path: Path) -> None:
    """The agent's main loop runs pass_once: a deep file once made it raise RecursionError."""
    path = tmp_path / "policy.yaml"
    path.write_text(DEEP)
    source = PolicySource(path)
    report = reconciler(tmp_path, source).pass_once([])
    assert report.errors == 0
    assert source.last_error is not None and "nested" in source.last_error


def test_a_provider_that_raises_leaves_the_last_policy_in_force(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reconciler's last resort, for any provider: the pass goes on, said once."""
    provider = RaisingPolicy()
    rec = reconciler(tmp_path, provider)
    used: list[AdminPolicy] = []
    monkeypatch.setattr(rec, "_pod", lambda pod, policy, report: used.append(policy))
    pod = SimpleNamespace(uid="u1", namespace="web", name="p")
    assert rec.pass_once([pod]).errors == 0  # type: ignore[list-item]
    provider.error = RecursionError("maximum recursion depth exceeded")
    with caplog.at_level(logging.ERROR, logger="oomguard.steer.reconciler"):
        for _ in range(3):
            assert rec.pass_once([pod]).errors == 1  # type: ignore[list-item]
    assert used == [provider.policy] * 4
    assert len([r for r in caplog.records if "could not be read" in r.getMessage()]) == 1


def test_a_restart_meeting_a_bad_file_keeps_the_policy_in_force_before_it(
    tmp_path: Path,
) -> None:
    """A bad edit, then the agent restarts (a node reboot, an upgrade, an OOM of its
    own): the trusted pods keep the protection the admin granted, not the defaults."""
    path, saved = tmp_path / "policy.yaml", tmp_path / "state" / "policy-in-force.yaml"
    saved.parent.mkdir()
    path.write_text(TRUST_A)
    assert trusted(PolicySource(path, saved_path=saved)) == ("a",)
    path.write_text(DEEP)
    metrics = Metrics(process_metrics=False)
    restarted = PolicySource(path, saved_path=saved, metrics=metrics)
    assert trusted(restarted) == ("a",)
    assert restarted.kept.startswith("the last good policy, saved")
    assert policy_valid(metrics) == 0 and restarted.last_error is not None
    # A saved copy that is itself bad (or planted) is no more trusted: the defaults.
    saved.write_text(DEEP)
    assert PolicySource(path, saved_path=saved).current() == load_policy("{}")


def test_a_removed_policy_file_removes_the_saved_copy(tmp_path: Path) -> None:
    path, saved = tmp_path / "policy.yaml", tmp_path / "policy-in-force.yaml"
    path.write_text(TRUST_A)
    source = PolicySource(path, saved_path=saved, poll_interval_s=0.0)
    assert trusted(source) == ("a",) and saved.read_text() == TRUST_A
    path.unlink()
    assert source.current() == load_policy("{}")
    assert not saved.exists()  # the admin took the policy away: a restart keeps none
    path.write_text(DEEP)
    assert PolicySource(path, saved_path=saved).current() == load_policy("{}")
