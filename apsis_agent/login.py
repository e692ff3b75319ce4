"""The environment of a login of the agent's user: for programs the agent runs for
a user other than the server's (an agent started through sudo or ssh), whatever
the session that started the agent carried.

`HOME`, `USER`, `LOGNAME` and `SHELL` come from the password database; `PATH` from
`/etc/login.defs` (`ENV_SUPATH` for root, `ENV_PATH` for others), else the usual
defaults. Variables the program's job sets still win over these.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

LOGIN_DEFS = Path("/etc/login.defs")
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USER_PATH = "/usr/local/bin:/usr/bin:/bin"


def _login_defs_path(key: str, defs: Path) -> str | None:
    """`ENV_PATH PATH=/usr/bin:/bin` (or without `PATH=`) in login.defs."""
    try:
        lines = defs.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        words = line.split()
        if len(words) == 2 and words[0] == key:
            return words[1].removeprefix("PATH=") or None
    return None


def login_environment(uid: int | None = None, defs: Path = LOGIN_DEFS) -> dict[str, str]:
    """HOME, USER, LOGNAME, SHELL and PATH of user `uid` (default: this process's)."""
    uid = os.getuid() if uid is None else uid
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:  # no entry (a container's numeric user): only what is known
        return {"HOME": "/", "PATH": USER_PATH}
    root = uid == 0
    path = _login_defs_path("ENV_SUPATH" if root else "ENV_PATH", defs)
    return {
        "HOME": entry.pw_dir,
        "USER": entry.pw_name,
        "LOGNAME": entry.pw_name,
        "SHELL": entry.pw_shell or "/bin/sh",
        "PATH": path or (ROOT_PATH if root else USER_PATH),
    }
