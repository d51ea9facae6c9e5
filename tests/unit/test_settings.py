"""`oomguard run` settings: each written once (RunSettings), its flag, help and
environment name generated; the flags are a public contract the chart and scripts use."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import AliasChoices, BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from oomguard.cli import LazyFlagsParser, build_parser, main
from oomguard.settings import RunSettings, SettingsError, load_settings
from oomguard.settings_flags import add_flags, flag_label, flag_name, given_flags, shown_default

# The public contract: flag -> (argparse type, choices, store_true), as before the
# flags were generated. New since: --pod-wait-s; the write budget's three.
CONTRACT: dict[str, tuple[Any, list[str] | None, bool]] = {
    "--node-name": (str, None, False),
    "--kubeconfig": (str, None, False),
    "--cgroup-root": (str, None, False),
    "--state-dir": (Path, None, False),
    "--metrics-address": (str, None, False),
    "--dry-run": (None, None, True),
    "--log-format": (None, ["text", "json"], False),
    "--policy-file": (Path, None, False),
    "--event-window-s": (float, None, False),
    "--event-update-interval-s": (float, None, False),
    "--api-qps": (float, None, False),
    "--api-burst": (int, None, False),
    "--reconcile-interval-s": (float, None, False),
    "--resync-interval-s": (float, None, False),
    "--pod-wait-s": (float, None, False),
    "--kmsg-path": (str, None, False),
}

DEFAULTS_IN_HELP = {
    "--node-name": "env NODE_NAME",
    "--kubeconfig": "the in-cluster service account",
    "--cgroup-root": "this node's kubepods level",
    "--state-dir": "/var/lib/oomguard",
    "--metrics-address": "0.0.0.0:9753",
    "--dry-run": "off",
    "--log-format": "text",
    "--policy-file": "/etc/oomguard/policy.yaml",
    "--event-window-s": "600 s",
    "--event-update-interval-s": "10 s",
    "--api-qps": "5",
    "--api-burst": "25",
    "--reconcile-interval-s": "5 s",
    "--resync-interval-s": "60 s",
    "--pod-wait-s": "5 s",
    "--kmsg-path": "/dev/kmsg",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No setting from the environment of whoever runs the tests."""
    import os

    for name in list(os.environ):
        if name.startswith("OOMGUARD_") or name == "NODE_NAME":
            monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "1000")  # help on one line per flag
    return monkeypatch


def _run_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    run: LazyFlagsParser = sub.choices["run"]
    run.add_lazy_flags()  # added when `run` parses; here before, to look at them
    return run


def _settings(*argv: str) -> RunSettings:
    """What `cmd_run` does with the command line."""
    args = build_parser().parse_args(["run", *argv])
    return load_settings(**given_flags(args, RunSettings))


def _run_help(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as done:
        main(["run", "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


# --------------------------------------------------------------------------- flags


def test_every_setting_has_a_flag_and_every_flag_a_setting() -> None:
    flags = {s for a in _run_parser()._actions for s in a.option_strings} - {"-h", "--help"}
    assert flags == {flag_name(name) for name in RunSettings.model_fields}
    assert flags == set(CONTRACT)


@pytest.mark.parametrize("flag", sorted(CONTRACT))
def test_each_flag_keeps_its_name_type_and_choices(flag: str) -> None:
    kind, choices, store_true = CONTRACT[flag]
    action = next(a for a in _run_parser()._actions if flag in a.option_strings)
    assert action.option_strings == [flag]
    assert action.dest == flag[2:].replace("-", "_")
    assert action.default is None  # absent: the environment, then the default
    assert isinstance(action, argparse._StoreTrueAction) is store_true
    assert action.type is kind
    assert action.choices == choices


def _help_entries(text: str) -> dict[str, str]:
    """Each option's help text on one line, by its flag (argparse wraps and indents)."""
    entries: dict[str, str] = {}
    flag = None
    for line in text.split("options:", 1)[1].splitlines():
        if line.startswith("  -"):
            flag = line.split()[0].rstrip(",")
            line = line.strip()[len(flag) :]
        if flag is not None:
            entries[flag] = " ".join([entries.get(flag, ""), *line.split()]).strip()
    return entries


def test_help_lists_every_setting_with_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    entries = _help_entries(_run_help(capsys))
    assert set(entries) - {"-h"} == set(DEFAULTS_IN_HELP) == set(CONTRACT)
    for flag, default in DEFAULTS_IN_HELP.items():
        assert entries[flag].endswith(f"(default: {default})"), entries[flag]


def test_help_says_every_flag_is_also_an_environment_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "OOMGUARD_<FLAG>" in capsys.readouterr().out


# --------------------------------------------------------------------------- precedence


def test_defaults_with_only_the_node_name() -> None:
    s = _settings("--node-name", "n1")
    assert s.node_name == "n1"
    assert s.kubeconfig is None and s.cgroup_root is None
    assert s.state_dir == Path("/var/lib/oomguard")
    assert s.metrics_address == "0.0.0.0:9753"
    assert s.dry_run is False
    assert s.log_format == "text"
    assert s.policy_file == Path("/etc/oomguard/policy.yaml")
    assert (s.event_window_s, s.reconcile_interval_s, s.resync_interval_s) == (600, 5, 60)
    assert s.pod_wait_s == 5
    assert s.kmsg_path == "/dev/kmsg"
    assert (s.event_update_interval_s, s.api_qps, s.api_burst) == (10, 5, 25)


def test_write_budget_defaults_are_the_ones_justified_in_write_budget() -> None:
    """settings.py writes the numbers itself (importing the Kubernetes side would slow
    every command): they must stay the ones write_budget's docstring argues for, and
    the ones an EventSender made without settings uses."""
    from oomguard.k8s import write_budget
    from oomguard.k8s.event_queue import EventSenderSettings

    s = _settings("--node-name", "n")
    sender = EventSenderSettings()
    assert s.event_update_interval_s == write_budget.DEFAULT_EVENT_UPDATE_INTERVAL_S
    assert s.api_qps == write_budget.DEFAULT_API_QPS == sender.api_qps
    assert s.api_burst == write_budget.DEFAULT_API_BURST == sender.api_burst
    assert sender.event_update_interval_s == s.event_update_interval_s


# field, environment value, flag value, what each gives
PRECEDENCE = [
    ("kubeconfig", "/env/kubeconfig", "/flag/kubeconfig", "/env/kubeconfig", "/flag/kubeconfig"),
    ("cgroup_root", "/env/root", "/flag/root", "/env/root", "/flag/root"),
    ("state_dir", "/env/state", "/flag/state", Path("/env/state"), Path("/flag/state")),
    ("metrics_address", "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:1", "127.0.0.1:2"),
    ("log_format", "json", "text", "json", "text"),
    ("policy_file", "/env/p.yaml", "/flag/p.yaml", Path("/env/p.yaml"), Path("/flag/p.yaml")),
    ("event_window_s", "30", "7", 30.0, 7.0),
    ("reconcile_interval_s", "0.5", "0.25", 0.5, 0.25),
    ("resync_interval_s", "120", "1.5", 120.0, 1.5),
    ("pod_wait_s", "2", "0", 2.0, 0.0),
    ("event_update_interval_s", "30", "0.5", 30.0, 0.5),
    ("api_qps", "20", "0.5", 20.0, 0.5),
    ("api_burst", "100", "1", 100, 1),
    ("kmsg_path", "/env/kmsg", "", "/env/kmsg", ""),  # "" given is kept: no kernel log
]


@pytest.mark.parametrize(("field", "env", "flag", "from_env", "from_flag"), PRECEDENCE)
def test_flags_beat_environment_beat_defaults(
    clean_env: pytest.MonkeyPatch, field: str, env: str, flag: str, from_env: Any, from_flag: Any
) -> None:
    default = RunSettings.model_fields[field].default
    assert getattr(_settings("--node-name", "n"), field) == default
    clean_env.setenv(f"OOMGUARD_{field.upper()}", env)
    assert getattr(_settings("--node-name", "n"), field) == from_env
    assert getattr(_settings("--node-name", "n", f"{flag_name(field)}={flag}"), field) == from_flag
    assert from_env != default and from_flag != from_env


def test_node_name_from_flag_then_oomguard_env_then_downward_api(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("NODE_NAME", "downward")
    assert _settings().node_name == "downward"
    clean_env.setenv("OOMGUARD_NODE_NAME", "explicit")
    assert _settings().node_name == "explicit"
    assert _settings("--node-name", "flag").node_name == "flag"
    assert load_settings(node_name="keyword").node_name == "keyword"
    clean_env.delenv("NODE_NAME")
    assert _settings().node_name == "explicit"


@pytest.mark.parametrize(
    ("argv", "env", "dry_run"),
    [
        ([], None, False),
        (["--dry-run"], None, True),
        ([], "true", True),
        ([], "1", True),
        ([], "false", False),
        (["--dry-run"], "false", True),  # the flag wins
    ],
)
def test_dry_run_from_flag_or_environment(
    clean_env: pytest.MonkeyPatch, argv: list[str], env: str | None, dry_run: bool
) -> None:
    if env is not None:
        clean_env.setenv("OOMGUARD_DRY_RUN", env)
    assert _settings("--node-name", "n", *argv).dry_run is dry_run


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--event-window-s", "0"], {}, "--event-window-s: Input should be greater than 0"),
        (
            ["--pod-wait-s=-1"],
            {},
            "--pod-wait-s: Input should be greater than or equal to 0",
        ),
        (
            [],
            {"OOMGUARD_RESYNC_INTERVAL_S": "soon"},
            "--resync-interval-s: Input should be a valid number, unable to parse string as "
            "a number",
        ),
        (
            [],
            {"OOMGUARD_LOG_FORMAT": "xml"},
            "--log-format: Input should be 'text' or 'json'",
        ),
        (
            ["--event-update-interval-s", "0"],
            {},
            "--event-update-interval-s: Input should be greater than 0",
        ),
        (["--api-qps", "0"], {}, "--api-qps: Input should be greater than 0"),
        (["--api-qps", "nan"], {}, "--api-qps: Input should be a finite number"),
        (["--api-qps=-5"], {}, "--api-qps: Input should be greater than 0"),
        (["--api-burst", "0"], {}, "--api-burst: Input should be greater than or equal to 1"),
        (
            [],
            {"OOMGUARD_API_BURST": "2.5"},
            "--api-burst: Input should be a valid integer, unable to parse string as an integer",
        ),
        (
            [],
            {"OOMGUARD_API_QPS": "inf"},
            "--api-qps: Input should be a finite number",
        ),
    ],
)
def test_a_bad_value_is_one_sentence_naming_the_flag(
    clean_env: pytest.MonkeyPatch, argv: list[str], env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        _settings("--node-name", "n", *argv)
    assert str(err.value) == message


def test_no_node_name_names_the_flag_and_the_downward_api_variable() -> None:
    with pytest.raises(SettingsError) as err:
        _settings()
    assert str(err.value) == "--node-name (or NODE_NAME): Field required"
    with pytest.raises(SettingsError) as err:
        _settings("--node-name", "", "--reconcile-interval-s", "-1")
    assert str(err.value) == (
        "--node-name (or NODE_NAME): String should have at least 1 character; "
        "--reconcile-interval-s: Input should be greater than 0"
    )


def test_cli_says_a_bad_setting_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--node-name", "n", "--event-window-s", "0"]) == 1
    err = capsys.readouterr().err
    assert err == "oomguard: --event-window-s: Input should be greater than 0\n"


def test_a_value_argparse_cannot_convert_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["run", "--event-window-s", "abc"])
    assert done.value.code == 2
    assert "argument --event-window-s: invalid float value: 'abc'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--log-format", "xml"])
    assert "invalid choice: 'xml'" in capsys.readouterr().err


# --------------------------------------------------------------------------- the generator


class Toy(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOY_")

    host: str = Field(
        min_length=1,
        validation_alias=AliasChoices("host", "TOY_HOST", "HOSTNAME"),
        description="where",
    )
    token: str = Field(description="secret")
    config: str | None = Field(
        default=None, description="a file", json_schema_extra={"unset": "none given"}
    )
    extra: Path | None = Field(default=None, description="another file")
    verbose: bool = Field(default=False, description="say more")
    loud: bool = Field(default=True, description="say it loud")
    mode: Literal["a", "b", "c"] = Field(default="b", description="the mode")
    count: int = Field(default=3, description="how many")
    timeout_s: float = Field(default=2.5, description="how long")
    retry_s: float = Field(default=60.0, description="until the next try")
    empty: str = Field(default="", description="maybe nothing")
    home: Path = Field(default=Path("/home/toy"), description="home, 100% of it")


@pytest.mark.parametrize(
    ("field", "shown"),
    [
        ("host", "env HOSTNAME"),
        ("token", "required"),
        ("config", "none given"),
        ("extra", "none"),
        ("verbose", "off"),
        ("loud", "on"),
        ("mode", "b"),
        ("count", "3"),
        ("timeout_s", "2.5 s"),
        ("retry_s", "60 s"),
        ("empty", '""'),
        ("home", "/home/toy"),
    ],
)
def test_shown_default(field: str, shown: str) -> None:
    assert shown_default(Toy, field) == shown


@pytest.mark.parametrize(
    ("argv", "given"),
    [
        ([], {}),
        (["--verbose"], {"verbose": True}),
        (["--mode", "c"], {"mode": "c"}),
        (["--count", "7", "--timeout-s", "0.5"], {"count": 7, "timeout_s": 0.5}),
        (["--extra", "/x", "--config", "/y"], {"extra": Path("/x"), "config": "/y"}),
        (["--empty="], {"empty": ""}),
        (["--home", "rel"], {"home": Path("rel")}),
    ],
)
def test_given_flags_are_only_those_on_the_command_line(
    argv: list[str], given: dict[str, object]
) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--unrelated", default="kept out")
    add_flags(parser, Toy)
    assert given_flags(parser.parse_args(argv), Toy) == given


def test_generated_help_escapes_percent_and_ends_with_the_default() -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser, Toy)
    helps = {a.dest: a.help for a in parser._actions}
    assert helps["home"] == "home, 100%% of it (default: /home/toy)"  # argparse prints 100%
    assert helps["mode"] == "the mode (default: b)"
    assert "home, 100% of it" in parser.format_help()


@pytest.mark.parametrize(
    ("where", "label"),
    [
        ("host", "--host (or HOSTNAME)"),
        ("HOSTNAME", "--host (or HOSTNAME)"),
        ("TOY_HOST", "--host (or HOSTNAME)"),
        ("timeout_s", "--timeout-s"),
        ("not_a_field", "not_a_field"),
    ],
)
def test_flag_label(where: str, label: str) -> None:
    assert flag_label(Toy, where) == label


def test_a_type_without_a_flag_is_refused_when_the_parser_is_built() -> None:
    class Odd(BaseModel):
        pair: tuple[int, int] = (1, 2)

    with pytest.raises(TypeError, match="setting pair"):
        add_flags(argparse.ArgumentParser(), Odd)
