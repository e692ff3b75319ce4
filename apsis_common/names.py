"""Host and user names the server and agents accept: plain names, which go on ssh
and sudo command lines and can never read as an option."""

from __future__ import annotations

import re

_HOST = re.compile(r"[A-Za-z0-9_.:%\[\]][A-Za-z0-9_.:%\[\]-]{0,252}")
_USER = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}")


def check_host(host: str) -> str:
    """`host` if it is a plain host name or address; ValueError otherwise."""
    if not _HOST.fullmatch(host):
        raise ValueError(f"bad host name {host!r}")
    return host


def check_user(user: str) -> str:
    """`user` if it is a plain user name; ValueError otherwise."""
    if not _USER.fullmatch(user):
        raise ValueError(f"bad user name {user!r}")
    return user
