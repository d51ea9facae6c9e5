"""Settings of `oomguard run`: flags, then `OOMGUARD_*` environment, then defaults.

The flag names and environment names are a public contract (the chart sets them).
Every number carries its unit in its name; every default is the value a DaemonSet on
an ordinary node wants, so the chart needs to set only the node name. Each setting is
written once, here: its flag, help and environment name all come from its field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from oomguard.settings_flags import UNSET, flag_label
from oomguard.state.files import DEFAULT_STATE_DIR


class SettingsError(ValueError):
    """Settings that cannot run; the message is one sentence per problem."""


class RunSettings(BaseSettings):
    """Every setting of `oomguard run`, written once: `settings_flags` makes each field
    the flag `--field-name`, its help this description plus the default."""

    model_config = SettingsConfigDict(env_prefix="OOMGUARD_", extra="forbid")

    # From the downward API (spec.nodeName) in the chart; OOMGUARD_NODE_NAME wins. The
    # environment is read case-blind in the order given, so "node_name" (the keyword
    # load_settings passes) must come after OOMGUARD_NODE_NAME: first, it would match the
    # variable NODE_NAME and win.
    node_name: str = Field(
        min_length=1,
        validation_alias=AliasChoices("OOMGUARD_NODE_NAME", "node_name", "NODE_NAME"),
        description="this node's name: only its pods are watched",
    )
    kubeconfig: str | None = Field(
        default=None,
        description="kubeconfig file",
        json_schema_extra={UNSET: "the in-cluster service account"},
    )
    cgroup_root: str | None = Field(
        default=None,
        description="memory cgroups to watch",
        json_schema_extra={UNSET: "this node's kubepods level"},
    )
    state_dir: Path = Field(
        default=DEFAULT_STATE_DIR,
        description="undelivered Events, the kmsg position and oom_kill counters handed on, "
        "the oom_score_adj values set and wanted",
    )
    metrics_address: str = Field(
        default="0.0.0.0:9753", description="host:port for /metrics, /healthz, /readyz"
    )
    dry_run: bool = Field(default=False, description="compute and report, write nothing")
    log_format: Literal["text", "json"] = Field(default="text", description="log line format")
    policy_file: Path = Field(
        default=Path("/etc/oomguard/policy.yaml"), description="the admin policy for oom_score_adj"
    )
    event_window_s: float = Field(
        default=600.0, gt=0, description="repeats within it update one Event"
    )
    # The write budget: why these defaults is in oomguard/k8s/write_budget.py, whose
    # DEFAULT_* are the same numbers (a test holds them equal); not imported from there,
    # as that would load the Kubernetes side into every command that parses flags.
    event_update_interval_s: float = Field(
        default=10.0,
        gt=0,
        allow_inf_nan=False,
        description="an Event is updated at most once per this; repeats in between are "
        "counted into the next update (its first occurrence is sent at once)",
    )
    api_qps: float = Field(
        default=5.0,
        gt=0,
        allow_inf_nan=False,
        description="API writes per second (Events), on average: a token bucket; writes "
        "over it wait, none is dropped",
    )
    api_burst: int = Field(
        default=25,
        ge=1,
        description="API writes allowed at once before --api-qps paces them",
    )
    reconcile_interval_s: float = Field(
        default=5.0, gt=0, description="time between oom_score_adj passes"
    )
    resync_interval_s: float = Field(
        default=60.0,
        gt=0,
        description="time between full rescans of the cgroup tree, a safety net: kills are "
        "pushed by the kernel in between",
    )
    pod_wait_s: float = Field(
        default=5.0,
        ge=0,
        description="how long a kill waits for its container to appear in the pod list (one "
        "killed seconds after it started may not be there yet)",
    )
    kmsg_path: str = Field(
        default="/dev/kmsg",
        description="the kernel log, for each kill's victim (where it cannot be opened, "
        'syslog(2)); "" to read no kernel log (kills from the cgroup counters alone)',
    )


def load_settings(**flags: object) -> RunSettings:
    """Settings from the given flags (None = not given) over the environment."""
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return RunSettings(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            problems.append(f"{flag_label(RunSettings, where)}: {err['msg']}")
        raise SettingsError("; ".join(problems)) from None
