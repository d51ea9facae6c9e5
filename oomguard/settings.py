"""Settings of `oomguard run`: flags, then `OOMGUARD_*` environment, then defaults.

The flag names and environment names are a public contract (the chart sets them).
Every number carries its unit in its name; every default is the value a DaemonSet on
an ordinary node wants, so the chart needs to set only the node name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from oomguard.state.files import DEFAULT_STATE_DIR


class SettingsError(ValueError):
    """Settings that cannot run; the message is one sentence per problem."""


class RunSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OOMGUARD_", extra="forbid")

    # From the downward API (spec.nodeName) in the chart; OOMGUARD_NODE_NAME wins.
    node_name: str = Field(
        min_length=1, validation_alias=AliasChoices("node_name", "OOMGUARD_NODE_NAME", "NODE_NAME")
    )
    kubeconfig: str | None = None  # None: the in-cluster service account
    cgroup_root: str | None = None  # None: the kubepods level of this node's driver
    # Undelivered Events, the kmsg position and oom_kill counters handed on, the
    # oom_score_adj values written and wanted.
    state_dir: Path = DEFAULT_STATE_DIR
    metrics_address: str = "0.0.0.0:9753"  # /metrics, /healthz, /readyz
    dry_run: bool = False  # compute and report, write nothing to /proc
    log_format: Literal["text", "json"] = "text"
    policy_file: Path = Path("/etc/oomguard/policy.yaml")
    event_window_s: float = Field(default=600.0, gt=0)  # repeats within it: one Event
    reconcile_interval_s: float = Field(default=5.0, gt=0)
    resync_interval_s: float = Field(default=60.0, gt=0)  # cgroup tree safety net
    pod_wait_s: float = Field(default=5.0, ge=0)  # a kill waits this long for its pod
    # The kernel log, for each kill's victim (falls back to syslog(2) if it cannot be
    # opened). "": not read at all, kills come from the cgroup counters alone.
    kmsg_path: str = "/dev/kmsg"


def load_settings(**flags: object) -> RunSettings:
    """Settings from the given flags (None = not given) over the environment."""
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return RunSettings(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            if where in ("node_name", "OOMGUARD_NODE_NAME", "NODE_NAME"):
                where = "--node-name (or NODE_NAME)"
            problems.append(f"{where}: {err['msg']}")
        raise SettingsError("; ".join(problems)) from None
