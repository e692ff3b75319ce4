"""The `apsis` entry point: parse the command line, run one command, map errors to exits.

Exit status: 0 success; 1 a failure the server reported (its message printed, no
traceback) or a server that cannot be reached; 2 a usage error. `wait` and
`schedule --wait` exit with the run's outcome instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from apsis_common import __version__
from apsis_common.errors import ApsisError
from cli.commands import (
    Commands,
    agents,
    certs,
    checks,
    jobs,
    operations,
    output,
    runs,
    wait,
    watch,
)
from cli.config import load_settings
from cli.context import Context
from cli.errors import UsageError

GROUPS = (jobs, runs, operations, output, wait, watch, agents, checks, certs)


def _global_options() -> argparse.ArgumentParser:
    # Defaults are suppressed so the options may come before or after the command.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument(
        "--server", metavar="URL", help="server URL (env APSIS_SERVER; default 127.0.0.1:5005)"
    )
    common.add_argument("--token", metavar="TOKEN", help="API token (env APSIS_TOKEN)")
    common.add_argument("--ca", metavar="FILE", help="CA certificate to trust (env APSIS_CA)")
    common.add_argument(
        "--poll",
        metavar="SECONDS",
        type=float,
        help="poll interval of the live commands when websockets cannot be used (0.5)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    common = _global_options()
    parser = argparse.ArgumentParser(
        prog="apsis", description="Command-line client for the Apsis scheduler.", parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"apsis {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = Commands(subparsers, [common])
    for group in GROUPS:
        group.register(commands)
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace | int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    if getattr(args, "handler", None) is None:
        parser.print_usage(sys.stderr)
        return 2
    return args


def _run(args: argparse.Namespace) -> int:
    settings = load_settings(
        getattr(args, "server", None), getattr(args, "token", None), getattr(args, "ca", None)
    )
    ctx = Context(settings, poll_interval=max(0.01, getattr(args, "poll", 0.5)))
    try:
        code: int = args.handler(ctx, args)
        return code
    finally:
        ctx.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `apsis` command; the process exit status."""
    args = _parse(argv)
    if isinstance(args, int):
        return args
    try:
        return _run(args)
    except UsageError as exc:
        sys.stderr.write(f"apsis: {exc}\n")
        return 2
    except ApsisError as exc:
        sys.stderr.write(f"apsis: error: {exc}\n")
        return 1
    except KeyboardInterrupt:  # also how `watch` of runs ends
        return 130
    except BrokenPipeError:
        # The reader went away (`apsis output r1 | head`); not an error.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
