"""`apsis-agent provision`: a static agent's state dir, issued by the server's CA."""

from __future__ import annotations

from pathlib import Path

from apsis_agent.state import StateDir
from apsis_common import tls
from apsis_common.auth import Key
from apsis_common.names import check_host


# The host names the server's config accepts for a static agent (its `check_host`):
# a provisioned agent the server then refuses to configure is of no use.
def provision(
    name: str,
    host: str,
    server_state: Path,
    webhook_url: str,
    agent_state_dir: Path,
    secret_file: Path,
) -> Key:
    """Write the state dir of static agent `name` and the server's secret file; its key.

    The agent's key and certificate for `host` are issued by the server's CA (in
    `server_state/ca`, made there if the server has not yet); the secret goes only
    into the agent's `keys.json` and `secret_file`, both mode 0600.
    """
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


def config_entry(name: str, host: str, port: int, key: Key, secret_file: Path) -> str:
    """The `agents.static` entry of the server's config for this agent (no secret)."""
    return (
        f"agents:\n  static:\n    {name}: {{host: {host}, port: {port}, "
        f"key_id: {key.key_id}, secret_file: {secret_file.resolve()}}}"
    )
