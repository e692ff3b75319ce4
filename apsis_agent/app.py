"""The `apsis-agent` command: serve | bootstrap | status | stop | drain | provision.

Imports stay inside the commands: `serve` forks the spawner first, while the
process is still small, and only then loads the daemon's dependencies.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

EXIT_ERROR = 1
EXIT_LOCKED = 3

_PROVISION = """Make the state dir of a static agent: one that runs as a service
(`apsis-agent serve --state-dir DIR --bind ADDR --port N`, e.g. under systemd)
instead of being bootstrapped over ssh. Run it on the server's host: it writes in
DIR the agent's key and a certificate for HOST issued by the server's CA (from
SERVER_STATE/ca), a new secret (also written to the server-side secret file, mode
0600; never printed), the server's CA and the webhook URL. Copy DIR to the agent's
host (keep it mode 0700: it holds the agent's private key). Prints the
`agents.static` entry for the server's config."""


_DESCRIPTION = """The Apsis agent: it runs programs for an Apsis server on this host and
keeps them running if the server goes away. The server usually starts it itself,
over ssh or locally (`bootstrap`); run `serve` under systemd for a static agent
(see `provision`). Programs keep running when the agent stops."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apsis-agent", description=_DESCRIPTION)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", type=Path, default=None, help="the agent's state directory")
    daemon = argparse.ArgumentParser(add_help=False)
    daemon.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    daemon.add_argument(
        "--port", type=int, default=None, help="port (default: the previous one, else any)"
    )
    daemon.add_argument(
        "--idle-stop", type=float, default=None, metavar="SECONDS", help="stop when idle this long"
    )
    daemon.add_argument(
        "--heartbeat", type=float, default=5.0, metavar="SECONDS", help="heartbeat interval"
    )
    daemon.add_argument(
        "--kill-orphans-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="SIGKILL processes a run left behind this long after its program ended (cgroups)",
    )
    daemon.add_argument(
        "--max-procs", type=int, default=4096, help="most processes running at once"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", parents=[common, daemon], help="run the daemon in the foreground")
    commands.add_parser(
        "bootstrap", parents=[common, daemon], help="start or attach (JSON lines on stdio)"
    )
    commands.add_parser("status", parents=[common], help="print the running agent's info")
    commands.add_parser("stop", parents=[common], help="stop the daemon (programs keep running)")
    commands.add_parser("drain", parents=[common], help="no new starts; exit when idle")
    provision = commands.add_parser(
        "provision", help="make a static agent's state dir", description=_PROVISION
    )
    provision.add_argument("name", help="the agent's name in the server's config")
    provision.add_argument("--host", required=True, help="the name the server reaches it by")
    provision.add_argument(
        "--port", type=int, default=5007, help="the port it will serve on (for the config)"
    )
    provision.add_argument(
        "--server-state", type=Path, required=True, help="the server's state directory"
    )
    provision.add_argument(
        "--webhook-url", required=True, help="the server's <public_url>/agent/v1/events"
    )
    provision.add_argument(
        "--state-dir", type=Path, required=True, help="the agent's state directory to make"
    )
    provision.add_argument(
        "--secret-file", type=Path, required=True, help="where the server reads the secret"
    )
    return parser


def _serve_args(args: argparse.Namespace) -> list[str]:
    """The daemon options of `bootstrap`, passed on to the `serve` it starts."""
    out = [
        "--bind",
        args.bind,
        "--heartbeat",
        str(args.heartbeat),
        "--max-procs",
        str(args.max_procs),
    ]
    if args.port is not None:
        out += ["--port", str(args.port)]
    if args.idle_stop is not None:
        out += ["--idle-stop", str(args.idle_stop)]
    if args.kill_orphans_after is not None:
        out += ["--kill-orphans-after", str(args.kill_orphans_after)]
    return out


def _serve(args: argparse.Namespace, state_dir: Path) -> int:
    import os

    from apsis_agent import spawner

    state_dir = state_dir.absolute()
    os.chdir("/")  # hold no directory busy; programs get their own cwd anyway
    handle = spawner.start(str(state_dir))

    os.umask(0o077)  # after the spawner started: programs keep the umask they were given
    from apsis_agent import daemon
    from apsis_agent.state import StateDir

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per webhook is noise
    state = StateDir(state_dir)
    state.create()
    if state.try_lock() is None:  # the fd stays open (and locked) for the process's life
        print(f"apsis-agent: another agent holds {state.lock_file}", file=sys.stderr)
        return EXIT_LOCKED
    options = daemon.Options(
        bind=args.bind,
        port=args.port,
        idle_stop=args.idle_stop,
        heartbeat=args.heartbeat,
        max_procs=args.max_procs,
        kill_orphans_after=args.kill_orphans_after,
    )
    return daemon.run(state, options, handle)


def _provision(args: argparse.Namespace) -> int:
    from apsis_agent.provision import config_entry, provision

    try:
        key = provision(
            args.name,
            args.host,
            args.server_state,
            args.webhook_url,
            args.state_dir,
            args.secret_file,
        )
    except (ValueError, OSError) as exc:
        print(f"apsis-agent provision: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(config_entry(args.name, args.host, args.port, key, args.secret_file))
    return 0


def _print(message: object) -> None:
    from apsis_common import codec

    print(codec.encode_json(message).decode())


def main(argv: list[str] | None = None) -> int:
    """Entry point of `apsis-agent`; the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "provision":
        return _provision(args)
    from apsis_agent.state import StateDir, default_state_dir
    from apsis_common.errors import ApsisError

    state_dir: Path = args.state_dir or default_state_dir()
    if args.command == "serve":
        return _serve(args, state_dir)
    if args.command == "bootstrap":
        from apsis_agent import bootstrap

        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        return bootstrap.run(state_dir, _serve_args(args), sys.stdin, sys.stdout)
    from apsis_agent import control

    state = StateDir(state_dir)
    try:
        if args.command == "status":
            _print(control.agent_info(state))
        elif args.command == "stop":
            print(json.dumps({"stopped": control.stop(state)}))
        elif args.command == "drain":
            _print(control.drain(state))
    except (ApsisError, OSError) as exc:
        print(json.dumps({"error": str(exc)}))
        return EXIT_ERROR
    return 0
