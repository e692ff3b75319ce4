"""Where the CLI finds its server and token: flags, environment, then the config file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cli.errors import UsageError

DEFAULT_SERVER = "http://127.0.0.1:5005"


@dataclass(frozen=True)
class Settings:
    """How to reach the server."""

    server: str = DEFAULT_SERVER
    token: str | None = None
    ca: str | None = None  # a CA certificate file to trust for https


def config_path(env: Mapping[str, str]) -> Path:
    """`$XDG_CONFIG_HOME/apsis/config.yaml`, by default `~/.config/apsis/config.yaml`."""
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "apsis" / "config.yaml"


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping with 'server' and 'token' keys")
    return data


def _pick(flag: str | None, env_value: str | None, file_value: object) -> str | None:
    for value in (flag, env_value, file_value):
        if value is not None and value != "":
            return str(value)
    return None


def load_settings(
    server: str | None, token: str | None, ca: str | None, env: Mapping[str, str] | None = None
) -> Settings:
    """Settings from flags, else `APSIS_SERVER`/`APSIS_TOKEN`/`APSIS_CA`, else the config file."""
    env = os.environ if env is None else env
    data = _read_file(config_path(env))
    url = _pick(server, env.get("APSIS_SERVER"), data.get("server")) or DEFAULT_SERVER
    if "://" not in url:
        url = f"http://{url}"
    return Settings(
        server=url.rstrip("/"),
        token=_pick(token, env.get("APSIS_TOKEN"), data.get("token")),
        ca=_pick(ca, env.get("APSIS_CA"), data.get("ca")),
    )
