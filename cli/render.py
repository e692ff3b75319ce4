"""How things look on a terminal: rich tables and trees, coloured states, times.

Every function takes the server's JSON values (and `now`, where times are shown
relative to it) and returns a renderable; nothing here prints or talks HTTP.
Server text is always wrapped in `Text`, never parsed as rich markup.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from apsis_common.errors import BadInput
from apsis_common.states import FINISHED, State
from apsis_common.times import parse_time
from cli import human

Json = Mapping[str, Any]

STATE_STYLES: Mapping[str, str] = {
    State.NEW: "dim",
    State.SCHEDULED: "blue",
    State.WAITING: "yellow",
    State.STARTING: "cyan",
    State.RUNNING: "bold cyan",
    State.STOPPING: "magenta",
    State.SUCCESS: "green",
    State.FAILURE: "red",
    State.ERROR: "bold red",
    State.SKIPPED: "dim",
}

# The order of a run's times, for the --times columns.
TIME_COLUMNS = ("scheduled", "waiting", "starting", "running", "stopping")


def state_text(state: object) -> Text:
    name = str(state) if state is not None else "-"
    return Text(name, style=STATE_STYLES.get(name, ""))


def epoch(value: object) -> float | None:
    """Seconds since the epoch from the API's time text, None if absent or unreadable."""
    if value is None:
        return None
    try:
        return parse_time(value)
    except BadInput:
        return None


def duration(seconds: float | None) -> str:
    """`12 ms`, `4.2s`, `1m 3s`, `2h 5m`, `3d 4h` (`human.span`); `-` for none."""
    return "-" if seconds is None else human.span(seconds)


def relative(t: float | None, now: float) -> str:
    """`3m 10s ago`, `in 10s`, `now`."""
    if t is None:
        return "-"
    delta = t - now
    if abs(delta) < 1:
        return "now"
    text = duration(abs(delta)) if abs(delta) >= 10 else f"{abs(delta):.0f}s"
    return f"in {text}" if delta > 0 else f"{text} ago"


def absolute(t: float | None) -> str:
    """Local time with its zone, to the second: `2026-11-26 21:00:00 UTC`."""
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def moment(value: object, now: float) -> Text:
    """Absolute and relative: `2026-11-26 21:00:00 (3m ago)`."""
    t = epoch(value)
    if t is None:
        return Text("-", style="dim")
    return Text.assemble(absolute(t), (f" ({relative(t, now)})", "dim"))


def args_text(args: object) -> Text:
    if not isinstance(args, Mapping) or not args:
        return Text("")
    return Text(" ".join(f"{k}={v}" for k, v in args.items()))


def _run_row(run: Json, now: float, times: bool) -> list[RenderableType]:
    run_times = run.get("times") or {}
    row: list[RenderableType] = [
        Text(str(run.get("run_id", "?")), style="bold"),
        Text(str(run.get("job_id") or "(ad hoc)")),
        args_text(run.get("args")),
        state_text(run.get("state")),
    ]
    if times:
        row += [Text(absolute(epoch(run_times.get(name)))) for name in TIME_COLUMNS]
        end = next((run_times[s] for s in FINISHED if run_times.get(s)), None)
        row.append(Text(absolute(epoch(end))))
    else:
        schedule = epoch(run.get("schedule_time"))
        row.append(Text(f"{absolute(schedule)}  {relative(schedule, now)}"))
    elapsed = run.get("elapsed")
    row.append(Text(duration(float(elapsed)) if isinstance(elapsed, int | float) else "-"))
    row.append(Text(str(run.get("message") or ""), style="dim"))
    return row


def runs_table(runs: Sequence[Json], now: float, times: bool = False) -> Table:
    """Runs one per row: id, job, args, state, schedule time (or every time), elapsed."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("run", "job", "args", "state"):
        table.add_column(name, no_wrap=name != "args")
    if times:
        for name in (*TIME_COLUMNS, "finished"):
            table.add_column(name, no_wrap=True)
    else:
        table.add_column("schedule time", no_wrap=True)
    table.add_column("elapsed", justify="right", no_wrap=True)
    table.add_column("message")
    for run in runs:
        table.add_row(*_run_row(run, now, times))
    return table


def schedule_texts(job: Json) -> list[str]:
    """What each schedule says, `(disabled)` after those that are off."""
    texts = []
    for schedule in job.get("schedules") or ():
        text = str(schedule.get("text") or schedule.get("type") or "?")
        texts.append(text if schedule.get("enabled", True) else f"{text} (disabled)")
    return texts


def _schedules(job: Json) -> str:
    return "; ".join(schedule_texts(job))


def jobs_tree(jobs: Iterable[Json], title: str = "jobs") -> Tree:
    """Jobs as a tree by the path in their ids, each leaf with schedules and labels."""
    root = Tree(Text(title, style="bold"))
    branches: dict[str, Tree] = {}
    for job in sorted(jobs, key=lambda j: str(j.get("job_id", ""))):
        *dirs, name = str(job.get("job_id", "?")).split("/")
        parent, path = root, ""
        for part in dirs:
            path = f"{path}/{part}"
            if path not in branches:
                branches[path] = parent.add(Text(f"{part}/", style="bold blue"))
            parent = branches[path]
        leaf = Text.assemble((name, "bold"), "  ", (_schedules(job), "cyan"))
        labels = job.get("labels") or ()
        if labels:
            leaf.append("  " + " ".join(f"#{label}" for label in labels), style="magenta")
        parent.add(leaf)
    return root


def job_errors_table(errors: Sequence[Json]) -> Table:
    """Jobs that failed to load: job, file, key path, message."""
    table = Table(box=None, header_style="bold red", pad_edge=False, title_justify="left")
    for name in ("job", "file", "key", "error"):
        table.add_column(name)
    for err in errors:
        table.add_row(
            *(Text(str(err.get(k) or "")) for k in ("job_id", "path", "key_path")),
            Text(str(err.get("message") or ""), style="red"),
        )
    return table


def _section(title: str, body: RenderableType) -> Group:
    return Group(Text(title, style="bold underline"), body, Text(""))


def _fields(pairs: Iterable[tuple[str, object]]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for name, value in pairs:
        table.add_row(name, value if isinstance(value, Text) else Text(human.plain(value)))
    return table


def item_text(item: object) -> str:
    """A condition or action in words: `dependency: job_id trading/close, states success`."""
    if not isinstance(item, Mapping):
        return human.plain(item)
    words = [
        f"{k} {human.meta_value(str(k), v)}"
        for k, v in item.items()
        if k != "type" and v not in (None, {}, [], "")
    ]
    return f"{item.get('type', '?')}: {', '.join(words)}" if words else str(item.get("type"))


def _listing(items: Sequence[object]) -> RenderableType:
    if not items:
        return Text("none", style="dim")
    return Group(*(Text(f"- {item_text(item)}") for item in items))


def job_zone(job: Json) -> str | None:
    """The zone of the job's first enabled schedule that has one."""
    for schedule in job.get("schedules") or ():
        if schedule.get("enabled", True) and schedule.get("zone"):
            return str(schedule["zone"])
    return None


def _next_time(value: object, now: float, zone: str | None) -> Text:
    shown = moment(value, now)
    t = epoch(value)
    there = human.zone_time(t, zone) if zone and t is not None else None
    if there:
        shown.append(f"  = {there} ({zone})", style="cyan")
    return shown


def job_detail(job: Json, runs: Sequence[Json], now: float) -> Group:
    """One job: description, program, params, schedules with next times, and so on."""
    metadata = job.get("metadata") or {}
    head = _fields(
        [
            ("job", Text(str(job.get("job_id")), style="bold")),
            ("description", metadata.get("description", "")),
            ("labels", job.get("labels") or []),
            ("params", job.get("params") or []),
            *human.program_fields(job.get("program") or {}),
        ]
    )
    zone = job_zone(job)
    times = job.get("next_times") or ()
    next_times = (
        Group(*(_next_time(t, now, zone) for t in times)) if times else Text("none", style="dim")
    )
    return Group(
        head,
        Text(""),
        _section("schedules", _listing(schedule_texts(job))),
        _section("next times", next_times),
        _section("conditions", _listing(job.get("conditions") or [])),
        _section("actions", _listing(job.get("actions") or [])),
        _section("recent runs", runs_table(runs, now) if runs else Text("none", style="dim")),
    )


def log_table(entries: Sequence[Json], now: float) -> Table:
    """The run log: time, state (if a transition), message; with servers sharing a
    database, which server wrote each entry."""
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(no_wrap=True)
    # A fixed width keeps the columns aligned when --follow prints entries in batches.
    table.add_column(no_wrap=True, min_width=max(len(s) for s in STATE_STYLES))
    table.add_column()
    servers = any(entry.get("server") for entry in entries)
    if servers:
        table.add_column(no_wrap=True, style="dim")
    for entry in entries:
        server = [Text(str(entry.get("server") or ""))] if servers else []
        table.add_row(
            moment(entry.get("time"), now),
            state_text(entry.get("state")) if entry.get("state") else Text(""),
            Text(str(entry.get("message") or "")),
            *server,
        )
    return table


# What made a run (the API's `origin`), in words.
ORIGINS: Mapping[str, str] = {
    "schedule": "its schedule",
    "hand": "scheduled by hand",
    "adhoc": "an ad-hoc command",
    "rerun": "a rerun",
    "action": "an action of another run",
}
# A run's times by state, named for what they are: `scheduled` is when it was made.
TIME_NAMES: Mapping[str, str] = {"scheduled": "created"}


def run_detail(
    run: Json,
    log: Sequence[Json],
    meta: Json | None,
    now: float,
    program: Json | None = None,
) -> Group:
    """One run: summary, what it runs, times, metadata and its log."""
    elapsed = run.get("elapsed")
    origin = str(run.get("origin") or "")
    fields: list[tuple[str, object]] = [
        ("run", Text(str(run.get("run_id")), style="bold")),
        ("job", "(ad hoc)" if origin == "adhoc" else run.get("job_id") or "(ad hoc)"),
        ("args", run.get("args") or {}),
        ("state", state_text(run.get("state"))),
        ("message", run.get("message") or ""),
        ("made by", ORIGINS.get(origin, origin or "-")),
        ("schedule time", moment(run.get("schedule_time"), now)),
        *([("stop time", moment(run["stop_time"], now))] if run.get("stop_time") else []),
        ("elapsed", duration(float(elapsed)) if isinstance(elapsed, int | float) else "-"),
    ]
    if run.get("rerun_of"):
        fields.append(("rerun of", run["rerun_of"]))
    if run.get("labels"):
        fields.append(("labels", run["labels"]))
    if program:
        fields += human.program_fields(program)
    times = run.get("times") or {}
    parts: list[RenderableType] = [_fields(fields), Text("")]
    named = ((TIME_NAMES.get(k, k), moment(v, now)) for k, v in times.items())
    parts.append(_section("times", _fields(named)))
    if meta:
        shown = ((k, human.meta_value(k, v)) for k, v in meta.items())
        parts.append(_section("metadata", _fields(shown)))
    parts.append(_section("log", log_table(log, now) if log else Text("none", style="dim")))
    return Group(*parts)


def agents_table(agents: Sequence[Json], now: float) -> Table:
    """Agents: id, host, user, state, version, running count, last heartbeat, error."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("agent", "host", "user", "state", "version", "running", "last heartbeat"):
        table.add_column(name, no_wrap=True)
    table.add_column("error")
    styles = {"connected": "green", "disconnected": "red", "stopped": "dim"}
    for agent in agents:
        state = str(agent.get("state") or "-")
        table.add_row(
            Text(str(agent.get("agent_id") or "-"), style="bold"),
            Text(str(agent.get("host") or "-")),
            Text(str(agent.get("user") or "-")),
            Text(state, style=styles.get(state, "")),
            Text(str(agent.get("version") or "-")),
            Text(str(agent.get("running", "-"))),
            Text(relative(epoch(agent.get("last_heartbeat")), now)),
            Text(str(agent.get("error") or ""), style="red"),
        )
    return table


def findings_table(findings: Sequence[Json], base_url: str) -> Table:
    """Sanity findings: severity, check, what, and where to look."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("severity", "check"):
        table.add_column(name, no_wrap=True)
    table.add_column("finding")
    table.add_column("see", no_wrap=True)
    styles = {"error": "red", "warning": "yellow"}
    for f in findings:
        severity = str(f.get("severity") or "-")
        table.add_row(
            Text(severity, style=styles.get(severity, "")),
            Text(str(f.get("check") or "-")),
            Text(str(f.get("message") or "")),
            Text(base_url + str(f.get("link") or "")),
        )
    return table


def servers_view(answer: Json, now: float) -> Group:
    """Who leads (epoch, since when, lease deadline) and every server's role."""
    leader = answer.get("leader")
    if leader:
        deadline = leader.get("deadline")
        lease = f", lease until {moment(deadline, now)}" if deadline else ""
        head = Text.assemble(
            ("leader: ", "bold"),
            (str(leader.get("server_id")), "green"),
            f" at {leader.get('url')}, epoch {leader.get('epoch')}, since "
            f"{moment(leader.get('since'), now)}{lease}",
        )
    else:
        head = Text("no server leads right now", style="bold red")
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("server", "url", "role", "epoch", "last seen"):
        table.add_column(name, no_wrap=True)
    for server in answer.get("servers") or ():
        role = str(server.get("role"))
        name = str(server.get("server_id"))
        this = " (this one)" if name == answer.get("server_id") else ""
        table.add_row(
            Text(name + this, style="bold"),
            Text(str(server.get("url"))),
            Text(role, style="green" if role == "leader" else ""),
            Text(str(server.get("epoch") if server.get("epoch") is not None else "-")),
            Text(relative(epoch(server.get("last_seen")), now)),
        )
    return Group(head, table)


def kept_job_errors(errors: Sequence[Json]) -> Group:
    """A job whose file no longer loads: the errors, under the definition in use."""
    note = "its file no longer loads; the last good definition above is in use:"
    return Group(Text(note, style="bold yellow"), job_errors_table(errors))


def reload_summary(answer: Json) -> Group:
    """What a reload changed, and the jobs that failed to load."""
    parts: list[RenderableType] = []
    for key, style in (("added", "green"), ("changed", "yellow"), ("removed", "red")):
        ids = [str(i.get("job_id") if isinstance(i, Mapping) else i) for i in answer.get(key) or ()]
        parts.append(Text.assemble((f"{key}: ", "bold"), (", ".join(ids) or "none", style)))
    kept = [str(i) for i in answer.get("kept") or ()]
    if kept:
        label = "kept as they were (their files no longer load): "
        parts.append(Text.assemble((label, "bold"), (", ".join(kept), "yellow")))
    errors = answer.get("errors") or []
    if errors:
        parts += [Text("jobs that failed to load:", style="bold red"), job_errors_table(errors)]
    return Group(*parts)
