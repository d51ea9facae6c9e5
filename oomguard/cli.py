"""The one entry point: `oomguard watch | top | run | demo`.

The command names, flags and JSON fields are a public contract (scripts parse them).
Every expected failure (no root, no cgroup hierarchy, a missing directory) ends in
one sentence on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from oomguard import __version__
from oomguard.cgroups.hierarchy import (
    HierarchyNotFound,
    MemoryHierarchy,
    default_cgroup_root,
    detect_memory_hierarchy,
)
from oomguard.cgroups.scratch import ScratchError
from oomguard.detect.loop import OomWatcher
from oomguard.output import human_line, json_line, warning_human_line
from oomguard.records import CgroupIdentity, ContainerCgroupCreated, OomKill, OomWarning
from oomguard.safe_text import EscapingFormatter, escape
from oomguard.state.files import DEFAULT_STATE_DIR

EXIT_USAGE = 2
EXIT_FAILED = 1
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


class UserError(Exception):
    """An expected failure, told to the user in one sentence."""


def _root_dir(hierarchy: MemoryHierarchy, given: str | None) -> Path:
    if given is None:
        return default_cgroup_root(hierarchy)
    root = Path(given)
    if not root.is_absolute():
        root = root.resolve()
    if not root.is_dir():
        raise UserError(f"--cgroup-root {given}: no such directory")
    try:
        hierarchy.cgroup_of(root)
    except ValueError:
        # Also accept a cgroup path as the kernel prints it, e.g. /kubepods.slice.
        candidate = hierarchy.fs_path(given)
        if candidate.is_dir():
            return candidate
        raise UserError(
            f"--cgroup-root {given} is not inside the memory cgroup hierarchy mounted at "
            f"{hierarchy.mount}"
        ) from None
    return root


def warn_at_flag(value: str) -> int | None:
    """`--warn-at`: "90", "90%" or "off" (no warnings)."""
    if value.strip().lower() == "off":
        return None
    text = value.strip().removesuffix("%")
    if not text.isdigit() or not 1 <= int(text) <= 99:
        raise argparse.ArgumentTypeError(f"{value!r} is not a percent from 1 to 99 or 'off'")
    return int(text)


def cmd_watch(args: argparse.Namespace) -> int:
    hierarchy = detect_memory_hierarchy()
    root = _root_dir(hierarchy, args.cgroup_root)
    out = threading.Lock()  # kills (detector thread) and warnings (warning thread)

    def write(line: str) -> None:
        with out:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def emit(kill: OomKill) -> None:
        write(json_line(kill) if args.json else human_line(kill))

    def emit_warning(warning: OomWarning) -> None:
        write(json_line(warning) if args.json else warning_human_line(warning))

    warner = None
    if args.warn_at is not None:
        from oomguard.warn.rule import WarnRule
        from oomguard.warn.watcher import RuleAnswer, WarningWatcher

        answer = RuleAnswer(WarnRule(warn_at_percent=args.warn_at))

        def rule_for(identity: CgroupIdentity) -> RuleAnswer:
            return answer

        warner = WarningWatcher(
            hierarchy, lambda: watcher.watch.published, rule_for, emit_warning, push=not args.poll
        )

    def new_container(created: ContainerCgroupCreated) -> None:
        if warner is not None:
            warner.notice(created.cgroup, created.directory)

    watcher = OomWatcher(
        hierarchy,
        root,
        emit,
        resync_interval_s=args.resync_interval_s,
        push=not args.poll,
        kmsg_path=args.kmsg_path or None,
        on_new_container=None if warner is None else new_container,
    )
    watcher.start()
    if warner is not None:
        warner.start()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        watcher.stop()
        if warner is not None:
            warner.stop(timeout_s=0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(
        f"oomguard {__version__}: watching {len(watcher.watch.cgroups())} memory cgroups "
        f"below {root} (cgroup v{hierarchy.version.value}); {watcher.kernel_log_status}; "
        + ("no warnings" if warner is None else f"warnings at {args.warn_at}% of a limit"),
        file=sys.stderr,
        flush=True,
    )
    try:
        watcher.run()
    finally:
        if warner is not None:
            warner.close()
        watcher.close()
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    from oomguard.state.files import read_boot_id
    from oomguard.steer.score_state import read_wanted
    from oomguard.top import format_table, rank, with_wanted

    hierarchy = detect_memory_hierarchy()
    root_cgroup = None
    if args.cgroup_root is not None:
        root_cgroup = hierarchy.cgroup_of(_root_dir(hierarchy, args.cgroup_root))
    published = read_wanted(Path(args.state_dir), read_boot_id())
    if published.note is not None:
        print(f"oomguard: WANT and OK are empty: {escape(published.note)}", file=sys.stderr)
    elif published.dry_run:
        print(
            "oomguard: the agent runs with --dry-run: WANT is what it would set, it sets nothing",
            file=sys.stderr,
        )
    rows = with_wanted(rank(hierarchy, root_cgroup, args.n), published.wanted)
    if args.json:
        json.dump([r.to_json_dict() for r in rows], sys.stdout, indent=None)
        sys.stdout.write("\n")
    else:
        print(format_table(rows))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from oomguard.demo import run_demo

    return run_demo(sys.stdout)


def cmd_run(args: argparse.Namespace) -> int:
    from oomguard.agent import Agent, JsonLogFormatter, install_signal_handlers
    from oomguard.k8s.client import KubeApi, KubeApiError
    from oomguard.settings import RunSettings, SettingsError, load_settings
    from oomguard.settings_flags import given_flags

    try:
        settings = load_settings(**given_flags(args, RunSettings))
    except SettingsError as exc:
        raise UserError(str(exc)) from None
    root_logger = logging.getLogger()
    if settings.log_format == "json":
        for handler in root_logger.handlers:
            handler.setFormatter(JsonLogFormatter())
    if args.log_level.upper() == "WARNING":
        root_logger.setLevel(logging.INFO)  # an agent's log says what it does
    hierarchy = detect_memory_hierarchy()
    try:  # in-cluster credentials without the `kubernetes` package (k8s.credentials)
        api = KubeApi.from_kubeconfig(settings.kubeconfig)
    except (KubeApiError, OSError, ValueError) as exc:
        raise UserError(f"cannot load the Kubernetes client configuration: {exc}") from exc
    try:
        agent = Agent(settings, hierarchy, api, kmsg_path=settings.kmsg_path or None)
    except ValueError as exc:  # e.g. a malformed --metrics-address
        raise UserError(str(exc)) from exc
    install_signal_handlers(agent)
    try:
        agent.start()
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    agent.run()
    return 0


class LazyFlagsParser(argparse.ArgumentParser):
    """A subcommand's parser whose flags are added only when it parses (its command
    was given, `--help` included): the `run` flags come from the settings model, and
    building them imports pydantic-settings, which `watch`, `top` and `demo` never need."""

    def __init__(
        self, *args: Any, flags: Callable[[argparse.ArgumentParser], None] | None = None, **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self._lazy_flags = flags

    def add_lazy_flags(self) -> None:
        if self._lazy_flags is not None:
            add, self._lazy_flags = self._lazy_flags, None
            add(self)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self.add_lazy_flags()
        return super().parse_known_args(args, namespace)


def add_run_flags(run: argparse.ArgumentParser) -> None:
    """One flag per setting, generated: see settings.py."""
    from oomguard.settings import RunSettings
    from oomguard.settings_flags import add_flags

    add_flags(run, RunSettings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oomguard",
        description="Make the Linux OOM killer visible and steerable.",
    )
    parser.add_argument("--version", action="version", version=f"oomguard {__version__}")
    parser.add_argument(
        "--log-level", default="WARNING", help="logging level on stderr (default: WARNING)"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=LazyFlagsParser)

    watch = sub.add_parser("watch", help="print one record per OOM kill until stopped")
    watch.add_argument(
        "--cgroup-root",
        metavar="DIR",
        help="watch memory cgroups below DIR (default: the kubepods hierarchy if there "
        "is one, else the whole memory hierarchy)",
    )
    watch.add_argument(
        "--json",
        action="store_true",
        help='one JSON object per line: "kind" "oom_kill" per kill, "oom_warning" per warning',
    )
    watch.add_argument(
        "--warn-at",
        metavar="PERCENT|off",
        type=warn_at_flag,
        default=90,
        help="warn once per episode when a limited cgroup's working set (usage minus "
        "inactive page cache) reaches PERCENT of its limit, or reclaim/pressure/growth "
        'say a kill is near (default 90; "off": kills only)',
    )
    watch.add_argument(
        "--resync-interval-s",
        type=float,
        default=60.0,
        help="seconds between full rescans of the cgroup tree and its counters "
        "(default: 60; kills are pushed by the kernel in between)",
    )
    watch.add_argument(
        "--poll",
        action="store_true",
        help="do not use inotify/eventfd; find kills by rescanning only (use with a "
        "small --resync-interval-s)",
    )
    watch.add_argument(
        "--kmsg-path",
        default="/dev/kmsg",
        help="the kernel log, for each kill's victim (default /dev/kmsg; where it cannot be "
        'opened, syslog(2)); "" to read no kernel log (kills from the cgroup counters alone)',
    )
    watch.set_defaults(func=cmd_watch)

    top = sub.add_parser("top", help="processes ranked by oom_score, next victim first")
    top.add_argument("--cgroup-root", metavar="DIR", help="only processes below DIR")
    top.add_argument("--json", action="store_true", help="a JSON list of objects")
    top.add_argument("-n", type=int, default=20, help="show N processes (default 20, 0 = all)")
    top.add_argument(
        "--state-dir",
        metavar="DIR",
        default=str(DEFAULT_STATE_DIR),
        help="the agent's --state-dir, for the oom_score_adj the policy wants per container "
        f"(default: {DEFAULT_STATE_DIR})",
    )
    top.set_defaults(func=cmd_top)

    run = sub.add_parser(
        "run",
        help="the node agent: OOM kills to Kubernetes Events (every flag also from "
        "OOMGUARD_<FLAG>, e.g. OOMGUARD_STATE_DIR)",
        flags=add_run_flags,
    )
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="cause one real OOM kill in a scratch cgroup and catch it")
    demo.set_defaults(func=cmd_demo)
    return parser


def configure_logging(level: str) -> None:
    """Text logs on stderr, escaped (`safe_text`): they quote process names and cgroup
    paths, which any process chooses. `run --log-format json` swaps the formatter."""
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter(LOG_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        rc: int = args.func(args)
        return rc
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except (UserError, HierarchyNotFound, ScratchError) as exc:
        print(f"oomguard: {escape(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except PermissionError as exc:
        print(
            f"oomguard: permission denied on {exc.filename or 'a kernel file'}: "
            "run as root (or with the capabilities listed in README)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except FileNotFoundError as exc:
        print(f"oomguard: {exc.filename or exc}: no such file or directory", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
