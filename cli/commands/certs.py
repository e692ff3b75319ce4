"""`apsis certs init`: a CA and a server certificate for serving the API over HTTPS."""

from __future__ import annotations

import argparse
from pathlib import Path

from apsis_common import tls
from apsis_common.errors import Conflict
from cli.commands import Commands
from cli.context import Context

FILES = ("ca.pem", "ca.key", "server.pem", "server.key")
DEFAULT_HOSTS = ("127.0.0.1", "localhost")


def init_certs(directory: Path, hosts: tuple[str, ...], force: bool) -> list[Path]:
    """Write `ca.pem`, `ca.key`, `server.pem`, `server.key` (mode 0600) into `directory`.

    Raises `Conflict` if any exists and not `force`.
    """
    paths = [directory / name for name in FILES]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise Conflict(f"refusing to overwrite {', '.join(existing)} (use --force)")
    ca = tls.new_ca()
    server = tls.new_cert(ca, hosts, common_name=hosts[0] if hosts else "apsis")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path, text in zip(
        paths, (ca.cert_pem, ca.key_pem, server.cert_pem, server.key_pem), strict=True
    ):
        tls.write_private(path, text)
    return paths


def _init(ctx: Context, args: argparse.Namespace) -> int:
    hosts = tuple(dict.fromkeys((*DEFAULT_HOSTS, *(args.host or ()))))
    for path in init_certs(Path(args.dir), hosts, args.force):
        ctx.say(f"wrote {path}")
    ctx.say(f"server certificate for {', '.join(hosts)}")
    return 0


def register(commands: Commands) -> None:
    parser = commands.add("certs", _no_action, "certificates for HTTPS")
    sub = parser.add_subparsers(dest="certs_command", metavar="COMMAND")
    init = sub.add_parser(
        "init",
        help="create a CA and a server certificate",
        description="create ca.pem, ca.key, server.pem and server.key (mode 0600)",
        parents=list(commands.parents),
    )
    init.set_defaults(handler=_init)
    init.add_argument("dir", metavar="DIR", nargs="?", default="certs", help="default ./certs")
    init.add_argument(
        "--host", metavar="NAME", action="append", help="another name or IP for the certificate"
    )
    init.add_argument("--force", action="store_true", help="overwrite existing files")


def _no_action(ctx: Context, args: argparse.Namespace) -> int:
    ctx.warn("usage: apsis certs init [DIR] [--force]")
    return 2
