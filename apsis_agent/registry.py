"""Process directories on disk, the in-memory record of each process, and recovery.

One directory per process under `<state>/procs/<proc_id>/` (mode 0700):

    spec     the ProcSpec as JSON (written by the daemon before spawning)
    pid      written by the shim once exec succeeded: pid, pgid, session, start
             ticks, start time, boot id, the pids and start ticks of the shim and
             the spawner, and the run's cgroup if it has one
    failed   written by the shim when the program could not be started
    exit     written by the shim (or the spawner, if the shim died) when the
             program ended (atomic, fsynced)
    lost     written by the spawner when a dead shim took the program's end with it
    stop     signal, deadline and reason while a stop is under way
    output   stdout, and stderr unless it is separate, appended by the program
             itself (created by it)
    stderr   a separate stderr (ProcSpec.stderr), appended by the program itself

What has been *reported* about a process (started, final event, output offset
of each stream) lives in the outbox's ledger, updated in the same transaction
as the events.

`decide` is the recovery table of spec/03-agent.md as a pure function.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apsis_agent import cgroups
from apsis_agent.cgroups import Cgroup
from apsis_agent.spares import Spares, empty
from apsis_agent.spawner import FILES, open_new, read_stat, write_atomic, write_new
from apsis_common import codec
from apsis_common.errors import BadInput
from apsis_common.protocol import (
    JSON,
    ExitInfo,
    LostReason,
    ProcSpec,
    ProcState,
    ProcSummary,
    SignalReason,
    StderrMode,
    kept,
)

# Process ids name directories: keep them to a safe alphabet.
_PROC_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@+-]{0,127}")


def check_proc_id(proc_id: str) -> str:
    """`proc_id` if it is safe as a directory name; BadInput otherwise."""
    if not _PROC_ID.fullmatch(proc_id):
        raise BadInput(f"bad process id {proc_id[:140]!r}: use letters, digits and _.:@+-")
    return proc_id


@dataclass(frozen=True)
class PidFacts:
    """The contents of a `pid` file. Files written before programs had sessions
    of their own, spawners were subreapers and runs had cgroups lack the last
    four: the program is then in its shim's session, and no spawner watches it."""

    pid: int
    pgid: int
    start_ticks: int | None
    start_time: float
    boot_id: str
    shim_pid: int
    shim_ticks: int | None
    sid: int | None = None
    spawner_pid: int | None = None
    spawner_ticks: int | None = None
    cgroup: Cgroup | None = None

    @property
    def session(self) -> int:
        return self.shim_pid if self.sid is None else self.sid


@dataclass(frozen=True)
class StopFacts:
    """The contents of a `stop` file: SIGKILL the group at `deadline` (wall clock)."""

    signal: int
    deadline: float
    reason: SignalReason


@dataclass
class Proc:
    """One process the agent knows about."""

    proc_id: str
    spec: ProcSpec
    digest: str
    directory: Path
    status: ProcState = ProcState.STARTING
    facts: PidFacts | None = None
    exit: ExitInfo | None = None
    error: str | None = None
    lost: LostReason | None = None  # why, once the status is LOST
    stop: StopFacts | None = None
    # Bytes of each stream (by fd) already turned into events.
    enqueued: dict[int, int] = field(default_factory=lambda: {1: 0, 2: 0})
    # The exit is known but output remains to be enqueued before `proc.exited`.
    final_pending: bool = False
    pidfd: int | None = None
    # A stop asked for while the process was still starting: (signal, grace).
    pending_stop: tuple[int, float] | None = None
    # Why the spawner wrote `lost`: a dead shim took the program's end with it.
    lost_note: str | None = None
    timers: list[Any] = field(default_factory=list)

    @property
    def fds(self) -> tuple[int, ...]:
        """The program's output streams: stdout (1), and a separate stderr (2)."""
        return (1, 2) if self.spec.stderr is StderrMode.SEPARATE else (1,)

    def output_path(self, fd: int = 1) -> Path:
        """The file of stream `fd`. Stdout's keeps the name it had when both were
        merged there: programs started before an upgrade go on writing it."""
        return self.directory / FILES[fd]

    def output_size(self, fd: int = 1) -> int:
        """Bytes the program has written to stream `fd` (the file keeps them all)."""
        try:
            return os.stat(self.output_path(fd)).st_size
        except FileNotFoundError:
            return 0

    def output_end(self, fd: int, size: int, finished: bool) -> int:
        """How far stream `fd` may be sent now, moving its `enqueued` past an
        omitted middle.

        Over `output_max` (a cap for each stream), the server keeps the head and
        the tail (`kept`). Whether a stream goes over the cap is known only at its
        end: while the program runs, its head alone is sent (the first half of the
        cap, as it is written); the rest once it has ended, the middle never.
        """
        cap = self.spec.output_max
        if not finished:
            return min(size, cap - cap // 2)
        for start, stop in kept(size, cap):
            if self.enqueued[fd] < stop:
                self.enqueued[fd] = max(self.enqueued[fd], start)
                return stop
        return size

    def summary(self) -> ProcSummary:
        return ProcSummary(
            proc_id=self.proc_id,
            state=self.status,
            pid=self.facts.pid if self.facts else None,
            output_length=self.output_size(1),
            exit=self.exit,
            error=self.error,
            labels=self.spec.labels,
            stderr_length=self.output_size(2) if 2 in self.fds else 0,
        )


# -- files -------------------------------------------------------------------------


def create(root: Path, proc_id: str, spec: ProcSpec, spares: Spares | None = None) -> Proc:
    """Make the process directory (from a spare if there is one) and write its spec
    (before any spawn)."""
    directory = root / proc_id
    # A spare renamed onto an empty directory would replace it: mkdir says EEXIST.
    if spares is None or os.path.lexists(directory) or not spares.take(directory):
        os.mkdir(directory, 0o700)
    text = codec.encode_json(spec)
    # The directory is new and only recovery reads the spec, so no temp file and
    # rename: a spec cut short by a crash reads as malformed, as a missing one would.
    try:
        write_new(str(directory / "spec"), text)
    except OSError:
        # A full disk: the start is refused, and no half-made directory stays behind
        # (nothing would ever remove it while the agent runs).
        with contextlib.suppress(OSError):
            os.unlink(directory / "spec")
        empty(directory)
        with contextlib.suppress(OSError):
            os.rmdir(directory)
        raise
    return Proc(proc_id, spec, hashlib.sha256(text).hexdigest(), directory)


def write_stop(proc: Proc, stop: StopFacts) -> None:
    data = {"signal": stop.signal, "deadline": stop.deadline, "reason": stop.reason}
    write_atomic(str(proc.directory / "stop"), json.dumps(data).encode())
    proc.stop = stop


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:
        return None  # a torn write cannot happen (rename), but a bad file must not stop us


def read_pid(directory: Path) -> PidFacts | None:
    return parse_pid(_read_json(directory / "pid"))


def parse_pid(data: Any) -> PidFacts | None:
    """The facts a shim (or the spawner) wrote in `pid` and sent, or None."""
    if not isinstance(data, dict):
        return None
    try:
        return PidFacts(
            int(data["pid"]),
            int(data["pgid"]),
            data.get("start_ticks"),
            float(data["start_time"]),
            str(data["boot_id"]),
            int(data["shim_pid"]),
            data.get("shim_ticks"),
            data.get("sid"),
            data.get("spawner_pid"),
            data.get("spawner_ticks"),
            cgroups.from_facts(data.get("cgroup")),
        )
    except (KeyError, TypeError, ValueError):
        return None


def read_exit(directory: Path) -> ExitInfo | None:
    return parse_exit(_read_json(directory / "exit"))


def parse_exit(data: Any) -> ExitInfo | None:
    """The exit record a shim wrote (and sent), or None if it is not one."""
    if data is None:
        return None
    try:
        return codec.from_plain(ExitInfo, data)
    except BadInput:
        return None


def read_failed(directory: Path) -> str | None:
    return _read_text(directory / "failed")


def read_lost(directory: Path) -> str | None:
    """Why the spawner could not learn how the program ended, if it could not."""
    return _read_text(directory / "lost")


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return None


def read_stop(directory: Path) -> StopFacts | None:
    data = _read_json(directory / "stop")
    if not isinstance(data, dict):
        return None
    try:
        return StopFacts(int(data["signal"]), float(data["deadline"]), SignalReason(data["reason"]))
    except (KeyError, TypeError, ValueError):
        return None


def load(directory: Path) -> Proc | None:
    """The process in `directory` from its spec, or None if it has none."""
    try:
        spec = codec.decode(ProcSpec, (directory / "spec").read_bytes(), JSON)
    except (FileNotFoundError, ValueError):
        return None
    proc = Proc(directory.name, spec, codec.spec_digest(spec), directory)
    proc.facts = read_pid(directory)
    proc.exit = read_exit(directory)
    proc.error = read_failed(directory)
    proc.lost_note = read_lost(directory)
    proc.stop = read_stop(directory)
    return proc


# -- recovery ------------------------------------------------------------------------


class Recovery(enum.Enum):
    """What to do with a process directory found when the daemon starts."""

    EXITED = "exited"  # report the exit (unless reported) and finish sending output
    FAILED = "failed"  # the shim recorded a start failure: report it
    ADOPT = "adopt"  # the shim is alive: watch it again
    # The shim is gone but the program lives, or its spawner does (and writes its
    # exit): watch the program, and its `exit` file.
    ORPHAN = "orphan"
    LOST = "lost"  # the spawner wrote `lost`: nobody knows how it ended
    LOST_REBOOT = "lost_reboot"
    LOST_VANISHED = "lost_vanished"  # shim gone without an exit: kill group survivors
    LOST_PID_REUSED = "lost_pid_reused"
    INTERRUPTED = "interrupted"  # only a spec: the agent stopped during the start


@dataclass(frozen=True)
class Observed:
    """Facts about one process directory and the live system, for `decide`."""

    has_exit: bool
    has_failed: bool
    has_pid: bool
    same_boot: bool
    # The shim's pid exists at all / exists with the start ticks it recorded.
    shim_pid_alive: bool
    shim_matches: bool
    # The program (with its start ticks) runs; its spawner (the same) does.
    program_alive: bool = False
    spawner_alive: bool = False
    has_lost: bool = False


def claim(directory: Path) -> bool:
    """Take a start no shim has written a pid for (see the spawner's `_claim`):
    True if it is the agent's now (no shim can start it any more), False if a shim
    claimed it first (it may have started the program)."""
    try:
        os.close(open_new(str(directory / "claim")))
    except FileExistsError:
        return False
    return True


def decide(seen: Observed) -> Recovery:
    """The recovery table of spec/03-agent.md."""
    if seen.has_exit:
        return Recovery.EXITED
    if seen.has_failed:
        return Recovery.FAILED
    if seen.has_lost:
        return Recovery.LOST
    if not seen.has_pid:
        return Recovery.INTERRUPTED
    if not seen.same_boot:
        return Recovery.LOST_REBOOT
    if seen.shim_matches:
        return Recovery.ADOPT
    if seen.program_alive or seen.spawner_alive:
        return Recovery.ORPHAN
    if seen.shim_pid_alive:
        return Recovery.LOST_PID_REUSED
    return Recovery.LOST_VANISHED


def observe(proc: Proc, boot_id: str) -> Observed:
    """Look at the process directory and /proc, in the order that avoids races.

    The shim (or, once it is gone, the spawner) writes `exit` before it exits, so
    the shim, the program and the spawner are checked first and the `exit` file
    read again afterwards: an exit in between is then never taken for a lost one.
    """
    facts = proc.facts
    shim_alive = shim_matches = program = spawner = False
    if facts is not None and facts.boot_id == boot_id:
        stat = read_stat(facts.shim_pid)
        shim_alive = stat is not None
        shim_matches = stat is not None and stat[2] == facts.shim_ticks
        program = program_alive(facts)
        spawner = spawner_alive(facts)
    if proc.exit is None:
        proc.exit = read_exit(proc.directory)
    if proc.lost_note is None:
        proc.lost_note = read_lost(proc.directory)
    return Observed(
        has_exit=proc.exit is not None,
        has_failed=proc.error is not None,
        has_pid=facts is not None,
        same_boot=facts is not None and facts.boot_id == boot_id,
        shim_pid_alive=shim_alive,
        shim_matches=shim_matches,
        program_alive=program,
        spawner_alive=spawner,
        has_lost=proc.lost_note is not None,
    )


def _alive(pid: int | None, ticks: int | None) -> bool:
    """Whether `pid` runs (not a zombie), and is the process started at `ticks`."""
    if pid is None:
        return False
    stat = read_stat(pid)
    return stat is not None and (ticks is None or stat[2] == ticks)


def program_alive(facts: PidFacts) -> bool:
    """Whether the program runs (its shim may be gone)."""
    return _alive(facts.pid, facts.start_ticks)


def shim_alive(facts: PidFacts) -> bool:
    """Whether the program's shim runs (the same process: its start ticks match)."""
    return facts.shim_ticks is not None and _alive(facts.shim_pid, facts.shim_ticks)


def spawner_alive(facts: PidFacts) -> bool:
    """Whether the spawner that reaps the program if its shim dies runs."""
    return facts.spawner_ticks is not None and _alive(facts.spawner_pid, facts.spawner_ticks)


def group_alive(facts: PidFacts) -> bool:
    """Whether any process is still in the run's cgroup, or, without one, in the
    program's group and session."""
    if facts.cgroup is not None:
        return cgroups.populated(facts.cgroup)
    session = facts.session
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = read_stat(int(entry.name))
        if stat is not None and stat[0] == facts.pgid and stat[1] == session:
            return True
    return False


def kill_group(facts: PidFacts, sig: int) -> bool:
    """Signal every process of the run's cgroup (SIGKILL: frozen first), or,
    without one, the program's group; False if none is left."""
    if facts.cgroup is not None:
        return cgroups.send(facts.cgroup, sig)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(facts.pgid, sig)
        return True
    return False
