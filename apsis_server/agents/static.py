"""Provisioning a statically configured agent: its state dir, and the server's secret.

A static agent runs as a service (`apsis-agent serve --state-dir DIR --bind ADDR
--port N`, e.g. under systemd) instead of being bootstrapped over ssh. This makes,
on the server's host, everything such an agent needs in DIR — its key and a
certificate issued by the server's CA for the agent's host name, the secret (also
written to the server-side secret file), the server's CA and webhook URL — to be
copied to the agent's host (keep it mode 0700: it holds the agent's private key):

    python -m apsis_server.agents.static NAME --host HOST --server-state STATE \\
        --webhook-url https://sched.example.com:5005/agent/v1/events \\
        --agent-state-dir ./NAME-agent --secret-file /etc/apsis/NAME.secret

and prints the `agents.static` entry for the server's config.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from apsis_agent.state import StateDir
from apsis_common import tls
from apsis_common.auth import Key
from apsis_server.agents.settings import check_host


def provision(
    name: str,
    host: str,
    server_state: Path,
    webhook_url: str,
    agent_state_dir: Path,
    secret_file: Path,
) -> Key:
    """Write the agent's state dir and the server's secret file; the agent's key."""
    check_host(host)
    ca = tls.ensure_ca(server_state / "ca")
    key = Key(name, Key.generate().secret)  # the config's key_id defaults to the name
    state = StateDir(agent_state_dir)
    state.create()
    key_pem = tls.new_key_pem()
    cert = tls.issue(ca, tls.new_csr(key_pem, host), (host,))
    tls.write_private(state.key_file, key_pem)
    tls.write_private(state.cert_file, cert)
    state.save_settings(f"static:{name}", webhook_url, ca.cert_pem)
    state.add_key(key)
    tls.write_private(secret_file, key.secret.hex() + "\n")
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m apsis_server.agents.static", description=__doc__
    )
    parser.add_argument("name")
    parser.add_argument("--host", required=True, help="the name the server reaches it by")
    parser.add_argument("--port", type=int, default=5007)
    parser.add_argument("--server-state", type=Path, required=True)
    parser.add_argument("--webhook-url", required=True)
    parser.add_argument("--agent-state-dir", type=Path, required=True)
    parser.add_argument("--secret-file", type=Path, required=True)
    args = parser.parse_args(argv)
    key = provision(
        args.name,
        args.host,
        args.server_state,
        args.webhook_url,
        args.agent_state_dir,
        args.secret_file,
    )
    print(
        f"agents:\n  static:\n    {args.name}: {{host: {args.host}, port: {args.port}, "
        f"key_id: {key.key_id}, secret_file: {args.secret_file.resolve()}}}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
