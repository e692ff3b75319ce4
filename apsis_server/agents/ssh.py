"""Reaching a remote agent with the system OpenSSH client: the command line, and what
ssh's exit status and stderr mean.

The bootstrap exchange (agent id, secret, webhook URL, CA) runs over the session's
stdin/stdout; only the remote command and its non-secret options are on the command
line. The operator's `~/.ssh/config`, keys and known hosts apply unless the
configured command or options say otherwise. `BatchMode` is on so ssh never waits
for a password or a host key prompt.
"""

from __future__ import annotations

import shlex

from apsis_server.agents.settings import SshSettings

# ssh exits 255 on its own errors; the remote command's status otherwise.
SSH_ERROR = 255
NOT_FOUND = 127
NOT_EXECUTABLE = 126

_HOST_KEY_CHANGED = ("REMOTE HOST IDENTIFICATION HAS CHANGED", "Host key for")
_HOST_KEY_UNKNOWN = ("No ", "host key is known for")


def ssh_argv(settings: SshSettings, host: str, user: str | None, remote: list[str]) -> list[str]:
    """`ssh [options] [-l USER] -- HOST 'remote command'`, each word of `remote` quoted.

    `--` keeps a host name from being read as an option; the remote command is one
    string because the remote shell splits it again.
    """
    options = {
        "BatchMode": "yes",
        "StrictHostKeyChecking": "yes" if settings.strict_host_keys else "accept-new",
        "ConnectTimeout": str(max(1, round(settings.connect_timeout))),
        "ServerAliveInterval": "15",
        **settings.options,
    }
    argv = list(settings.command)
    for key, value in options.items():
        argv += ["-o", f"{key}={value}"]
    if user is not None:
        argv += ["-l", user]
    argv += ["-T", "--", host, " ".join(shlex.quote(word) for word in remote)]
    return argv


def _last(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def explain(
    returncode: int | None, stderr: str, message: str, host: str, user: str | None, command: str
) -> tuple[str, bool]:
    """A clear reason for a failed bootstrap over ssh, and whether retrying is pointless.

    `message` is what the exchange itself said (an agent's own error, or "closed").
    """
    where = f"{user}@{host}" if user else host
    if "Host key verification failed" in stderr or any(s in stderr for s in _HOST_KEY_CHANGED):
        if _HOST_KEY_CHANGED[0] in stderr:
            return f"host key mismatch for {host}: the host key changed ({_last(stderr)})", True
        if all(s in stderr for s in _HOST_KEY_UNKNOWN):
            return (
                f"unknown host key for {host}: none is in known_hosts and host keys are "
                f"checked strictly (add it, e.g. with ssh-keyscan, after checking it)",
                True,
            )
        return f"host key verification failed for {host}: {_last(stderr)}", True
    if "Permission denied" in stderr:
        return f"permission denied: ssh to {where}: {_last(stderr)}", True
    if returncode == NOT_FOUND:
        if "cannot run" in message:  # the ssh client itself is missing
            return f"ssh failed: {message}", True
        return (
            f"apsis-agent not found on {host}: {command!r} exited 127 ({_last(stderr)})",
            True,
        )
    if returncode == NOT_EXECUTABLE:
        return f"apsis-agent on {host} cannot be run: {command!r} exited 126", True
    if returncode == SSH_ERROR:
        return f"ssh failed: ssh to {where}: {_last(stderr) or 'exit status 255'}", False
    return f"agent bootstrap on {where} failed: {message}", False
