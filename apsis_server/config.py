"""Server configuration: `config.yaml` plus command-line overrides."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from apsis_server.actions.mail import SmtpSettings, parse_smtp
from apsis_server.agents.settings import AgentSettings, parse_agents, parse_host_groups
from apsis_server.api.https import parse_tls
from apsis_server.api.tokens import ApiSettings, parse_api
from apsis_server.core.catchup import DEFAULT_CATCH_UP, CatchUp, parse_catch_up
from apsis_server.core.checks import CheckSettings
from apsis_server.core.fields import (
    FieldError,
    Fields,
    Invalid,
    byte_size,
    duration,
    positive_duration,
    positive_integer,
    string,
    strings,
)
from apsis_server.core.jobs import load_yaml
from apsis_server.store.archive import Retention


@dataclass(frozen=True)
class Config:
    jobs: Path = Path("jobs")
    state: Path = Path("apsis-state")
    # `store: {url: postgresql://...}`: runs in PostgreSQL; None: SQLite in the state dir.
    store_url: str | None = None
    # This server's name among servers sharing a PostgreSQL store (default HOST:PORT).
    server_id: str | None = None
    host: str = "127.0.0.1"
    port: int = 5005
    public_url: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_auto: bool = False
    api: ApiSettings = field(default_factory=ApiSettings)
    horizon: float = 86400.0
    max_scheduled_per_schedule: int = 16
    log_level: str = "INFO"
    log_file: Path | None = None
    agents: AgentSettings = field(default_factory=AgentSettings)
    catch_up: CatchUp = DEFAULT_CATCH_UP
    waiting_max_time: float | None = None
    calendars: Path | None = None
    output_max: int = 64 * 2**20
    retention: Retention | None = None
    archive: Path | None = None
    retention_period: float = 600.0
    smtp: SmtpSettings | None = None
    checks: CheckSettings = field(default_factory=CheckSettings)  # the sanity checker's
    check_interval: float = 60.0

    def with_bind(self, bind: str) -> Config:
        host, _, port = bind.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"bind must be HOST:PORT, got {bind!r}")
        return replace(self, host=host, port=int(port))


def _bind(value: Any, path: str) -> tuple[str, int]:
    text = string(value, path)
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise Invalid([])
    return host, int(port)


def _section(f: Fields, key: str) -> Fields:
    return Fields(f.raw(key) or {}, f.at(key))


def _store_url(value: Any, path: str) -> str:
    url = string(value, path)
    if not url.startswith(("postgresql://", "postgres://")):
        raise Invalid([FieldError(path, "expected a postgresql:// URL")])
    return url


def _urls(value: Any, path: str) -> tuple[str, ...]:
    """One http(s) URL or a list of them."""
    urls = strings([value] if isinstance(value, str) else value, path)
    for i, url in enumerate(urls):
        if not url.startswith(("http://", "https://")):
            raise Invalid([FieldError(f"{path}[{i}]", f"expected an http(s) URL, got {url!r}")])
    return urls


def _checks(f: Fields) -> tuple[CheckSettings, float]:
    """`checks: {interval, overdue, late, late_window, silent, failures, webhooks}`."""
    c = _section(f, "checks")
    d = CheckSettings()
    settings = CheckSettings(
        overdue=c.take("overdue", positive_duration, d.overdue),
        late=c.take("late", positive_duration, d.late),
        late_window=c.take("late_window", positive_duration, d.late_window),
        silent=c.take("silent", positive_duration, d.silent),
        failures=c.take("failures", positive_integer, d.failures),
        webhooks=c.take("webhooks", _urls, ()),
    )
    interval = c.take("interval", positive_duration, 60.0)
    c.done()
    return settings, interval


def _retention(f: Fields) -> tuple[Retention | None, Path | None, float]:
    """`retention: {age, keep_per_job, archive, period}`; no section means keep everything."""
    if f.raw("retention") is None:
        return None, None, 600.0
    r = _section(f, "retention")
    age = r.take("age", duration, None)
    keep = r.take("keep_per_job", positive_integer, None)
    archive = r.take("archive", lambda v, p: Path(string(v, p)), None)
    period = r.take("period", positive_duration, 600.0)
    r.done()
    return Retention(age, keep), archive, period


def parse_config(data: Any, base: Path) -> Config:
    """A Config from parsed YAML; relative paths are relative to `base`."""
    f = Fields(data or {}, "", "a mapping of config keys")
    cfg = Config()

    def path(value: Any, where: str) -> Path:
        return base / string(value, where)

    jobs = f.take("jobs", path, base / "jobs")
    state = f.take("state", path, base / "apsis-state")
    store = _section(f, "store")
    store_url = store.take("url", _store_url, None)
    store.done()
    server = _section(f, "server")
    server_id = server.take("id", string, None)
    server.done()
    host, port = f.take("bind", _bind, (cfg.host, cfg.port))
    public_url = f.take("public_url", string, None)
    tls = parse_tls(_section(f, "tls"), base)
    api = parse_api(_section(f, "api"), base)
    schedule = _section(f, "schedule")
    horizon = schedule.take("horizon", duration, cfg.horizon)
    per_schedule = schedule.take("max_scheduled_per_schedule", lambda v, p: int(v), 16)
    catch_up = schedule.take("catch_up", parse_catch_up, CatchUp()).over(DEFAULT_CATCH_UP)
    schedule.done()
    waiting = Fields(f.raw("waiting") or {}, f.at("waiting"))
    waiting_max_time = waiting.take(
        "max_time", lambda v, p: None if v is None else duration(v, p), None
    )
    waiting.done()
    calendars = f.take("calendars", path, None)
    agents_section = _section(f, "agents")
    agents = parse_agents(agents_section, base)
    agents_section.done()
    groups, aliases = parse_host_groups(f.raw("host_groups") or {})
    agents = replace(agents, groups=groups, aliases=aliases)
    output = _section(f, "output")
    output_max = output.take("max_bytes", byte_size, 64 * 2**20)
    output.done()
    retention = _retention(f)
    checks, check_interval = _checks(f)
    smtp = parse_smtp(_section(f, "smtp"), base) if f.raw("smtp") is not None else None
    logs = _section(f, "log")
    log_level = logs.take("level", string, "INFO").upper()
    log_file = logs.take("file", lambda v, p: None if v is None else path(v, p), None)
    logs.done()
    f.done()
    return Config(
        jobs=jobs,
        state=state,
        store_url=store_url,
        server_id=server_id,
        host=host,
        port=port,
        public_url=public_url,
        tls_cert=tls.cert,
        tls_key=tls.key,
        tls_auto=tls.auto,
        api=api,
        horizon=horizon,
        max_scheduled_per_schedule=per_schedule,
        agents=agents,
        log_level=log_level,
        log_file=log_file,
        catch_up=catch_up,
        waiting_max_time=waiting_max_time,
        calendars=calendars,
        output_max=output_max,
        retention=retention[0],
        archive=(base / retention[1]) if retention[1] else None,
        retention_period=retention[2],
        smtp=smtp,
        checks=checks,
        check_interval=check_interval,
    )


def load_config(path: Path | None) -> Config:
    """The config in `path`, or the defaults (relative to the working directory)."""
    if path is None:
        return parse_config({}, Path.cwd())
    return parse_config(load_yaml(path.read_text()), path.parent.resolve())
