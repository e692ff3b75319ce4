"""Running processes: start through the spawner, watch shims, output, stop timers.

Theory of operation. A start writes the process directory and its spec, then
hands the request to the spawner (batched: one pipe write per start batch). The
shim's notification lines say whether exec worked and, later, that the program
exited; the agent also watches the shim with a pidfd on the event loop (no task
or polling per process). A shim that dies leaves its programs to the spawner (a
subreaper), which writes their exits: the agent then watches the program itself,
and only a program that ended with neither shim nor spawner left to write its
exit is lost. One scan over the active processes, every `scan_interval`, turns
new output of each stream (stdout, and stderr when separate) into events; once
the exit is known, the remaining output is enqueued before the final event, so
`proc.exited` always follows all output of its process. A program re-adopted
after a restart has a shim (or spawner) that talks to the old daemon: the scan
notices its `exit` file.

Signals, stops and kills go to the run's cgroup where it has one (cgroups.py),
else to its process group. The cgroup keeper makes run cgroups ahead and
removes each once its run has ended and nothing is left in it.

Flow control: no more output is enqueued for a process (or for the agent) while
its unacknowledged output exceeds a cap; the file keeps the bytes meanwhile.

Stop timers are `loop.call_at` handles, persisted in the `stop` file so that a
restarted agent re-arms them; timeouts are derived from the start time and the
spec, so they need no file of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from apsis_agent import cgroups, registry
from apsis_agent.cgroups import Cgroup, Keeper
from apsis_agent.login import login_environment
from apsis_agent.outbox import Outbox
from apsis_agent.registry import Proc, Recovery, StopFacts
from apsis_agent.remover import Remover, remove_dir
from apsis_agent.spares import Spares
from apsis_agent.spawner import write_atomic
from apsis_common.codec import spec_digest
from apsis_common.errors import ApsisError, BadInput, Conflict, NotFound, Unavailable
from apsis_common.protocol import (
    MAX_OUTPUT_CHUNK,
    AgentStarted,
    Event,
    LostReason,
    ProcExited,
    ProcLost,
    ProcSignaled,
    ProcSpec,
    ProcStarted,
    ProcStartFailed,
    ProcState,
    ProcSummary,
    SignalReason,
    StartProc,
    StartResult,
    StartStatus,
    StderrMode,
)

log = logging.getLogger(__name__)

INTERRUPTED = "agent stopped during start"
# After a SIGKILL to a cgroup: look again this much later, this many times.
KILL_AGAIN = 0.5
KILL_TRIES = 3
_VALID_SIGNALS = frozenset(int(s) for s in signal.valid_signals())


@dataclass(frozen=True)
class Limits:
    """Tunable limits of one agent."""

    max_procs: int = 4096
    scan_interval: float = 0.075
    unacked_per_proc: int = 16 * 1024 * 1024
    unacked_total: int = 64 * 1024 * 1024


def check_spec(spec: ProcSpec) -> None:
    """BadInput unless `spec` can be handed to exec."""
    if not spec.argv or not spec.argv[0]:
        raise BadInput("argv must name a program")
    texts = [*spec.argv, spec.cwd or "", *spec.env, *spec.env.values()]
    if any("\0" in text for text in texts):
        raise BadInput("argv, cwd and env must not contain NUL characters")
    if any(not name or "=" in name for name in spec.env):
        raise BadInput("environment variable names must be non-empty and without '='")
    signals = [spec.stop.signal] + ([spec.timeout.signal] if spec.timeout else [])
    if any(s not in _VALID_SIGNALS for s in signals):
        raise BadInput("unknown signal number")
    if spec.stop.grace < 0 or (spec.timeout is not None and spec.timeout.duration <= 0):
        raise BadInput("grace must be >= 0 and timeout duration > 0")
    if spec.output_max < 0:
        raise BadInput("output_max must be >= 0")
    limits = spec.resources
    if limits is not None and (
        (limits.memory is not None and limits.memory < 1 << 20)
        or (limits.cpu is not None and not 0.01 <= limits.cpu <= 4096)
        or (limits.pids is not None and limits.pids < 1)
    ):
        raise BadInput("resources: memory >= 1 MiB, cpu from 0.01 to 4096, pids >= 1")


def check_signal(number: int) -> int:
    if number not in _VALID_SIGNALS:
        raise BadInput(f"unknown signal number {number}")
    return number


def _claimed(proc: Proc) -> bool:
    """Whether the agent took an interrupted start (no shim will make it now)."""
    try:
        return registry.claim(proc.directory)
    except OSError:  # cannot tell (a full disk): a shim may have it
        return False


class Procs:
    """Every process of one agent, and the facts reported about them."""

    def __init__(
        self,
        root: Path,
        outbox: Outbox,
        spawn: Callable[[bytes], None],
        boot_id: str,
        limits: Limits,
        on_outbox: Callable[[], None],
        spares: Spares | None = None,
        keeper: Keeper | None = None,
    ) -> None:
        self._root = root
        self._keeper = keeper
        self._spares = spares
        self._outbox = outbox
        self._spawn = spawn
        self._boot_id = boot_id
        self.limits = limits
        self._on_outbox = on_outbox
        self._loop = asyncio.get_running_loop()
        self._procs: dict[str, Proc] = {}
        self._live: set[str] = set()  # starting or running
        self._active: dict[str, Proc] = {}  # output to scan, or a final event pending
        # Their exit may come without a word to this daemon: re-adopted at recovery
        # (their shim talks to the old one), or orphaned (the spawner writes it).
        self._adopted: dict[str, Proc] = {}
        self._busy = asyncio.Event()  # set when _active or _adopted gets a process
        self._flush_handle: asyncio.Handle | None = None
        # Why the outbox cannot be written (a full disk), until it can: said once.
        self.outbox_error: str | None = None
        self._start_waiters: dict[str, asyncio.Future[None]] = {}
        self._home = os.path.expanduser("~")
        # For programs of another user's agent (ProcSpec.login_env).
        self._login = login_environment()
        self.draining = False
        self._remover = Remover(spares=spares)

    # -- queries ---------------------------------------------------------------------

    @property
    def running(self) -> int:
        return len(self._live)

    @property
    def idle(self) -> bool:
        """No process starting or running and no final event waiting for output."""
        return not self._live and not self._active

    def get(self, proc_id: str) -> Proc:
        proc = self._procs.get(proc_id)
        if proc is None:
            raise NotFound(f"no process {proc_id!r}")
        return proc

    def summaries(self) -> list[ProcSummary]:
        return [proc.summary() for proc in self._procs.values()]

    # -- reporting ---------------------------------------------------------------------

    def _report(self, event: Event, **ledger: Any) -> None:
        self._outbox.add(event, **ledger)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        # Everything reported in one turn of the event loop goes in one transaction.
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        try:
            stored = self._outbox.flush()
        except sqlite3.Error as exc:
            # A full or unwritable disk: the events stay buffered; try again shortly.
            if self.outbox_error is None:
                log.error("cannot write the outbox (retrying every second): %s", exc)
            self.outbox_error = str(exc)
            self._flush_handle = self._loop.call_later(1.0, self._flush)
            return
        if self.outbox_error is not None:
            log.info("the outbox is writable again")
            self.outbox_error = None
        if stored:
            self._on_outbox()

    # -- starting ----------------------------------------------------------------------

    def start(self, items: Iterable[StartProc]) -> list[StartResult]:
        """Start new processes; known ids with the same spec are `exists`."""
        if self.draining:
            raise Unavailable("draining: no new processes")
        items = list(items)
        new = sum(1 for item in items if item.proc_id not in self._procs)
        if new and self.running + new > self.limits.max_procs:
            raise Unavailable(f"process limit reached ({self.limits.max_procs})")
        results: list[StartResult] = []
        requests: list[dict[str, Any]] = []
        for item in items:
            try:
                request = self._prepare(item)
            except ApsisError as exc:
                results.append(StartResult(item.proc_id, StartStatus.REFUSED, str(exc)))
                continue
            status = StartStatus.EXISTS if request is None else StartStatus.ACCEPTED
            results.append(StartResult(item.proc_id, status))
            if request is not None:
                requests.append(request)
        if requests:
            self._spawn(json.dumps(requests).encode() + b"\n")
            self._remover.started()
            if self._keeper is not None:
                self._keeper.started()
        return results

    async def with_facts(self, results: list[StartResult], wait: float) -> list[StartResult]:
        """The results, with the facts of each process that starts within `wait` seconds
        (or had started), so the server need not wait for the webhook to know."""
        waiting = {}
        for result in results:
            proc = self._procs.get(result.proc_id)
            if result.status is StartStatus.ACCEPTED and proc is not None and proc.facts is None:
                future = self._loop.create_future()
                self._start_waiters[result.proc_id] = waiting[result.proc_id] = future
        if waiting:
            await asyncio.wait(waiting.values(), timeout=wait)
            for proc_id, future in waiting.items():
                if self._start_waiters.get(proc_id) is future:
                    del self._start_waiters[proc_id]  # still starting: the webhook tells
        out = []
        for result in results:
            proc = self._procs.get(result.proc_id)
            facts = (
                proc.facts
                if proc is not None and result.status is not StartStatus.REFUSED
                else None
            )
            if facts is not None:
                result = replace(
                    result, pid=facts.pid, pgid=facts.pgid, start_time=facts.start_time
                )
            out.append(result)
        return out

    def _started_or_failed(self, proc_id: str) -> None:
        future = self._start_waiters.pop(proc_id, None)
        if future is not None and not future.done():
            future.set_result(None)

    def start_one(self, proc_id: str, spec: ProcSpec) -> StartResult:
        """Start one process; errors raise (BadInput, Conflict, Unavailable)."""
        if self.draining:
            raise Unavailable("draining: no new processes")
        if proc_id not in self._procs and self.running >= self.limits.max_procs:
            raise Unavailable(f"process limit reached ({self.limits.max_procs})")
        request = self._prepare(StartProc(proc_id, spec))
        if request is None:
            return StartResult(proc_id, StartStatus.EXISTS)
        self._spawn(json.dumps([request]).encode() + b"\n")
        return StartResult(proc_id, StartStatus.ACCEPTED)

    def _prepare(self, item: StartProc) -> dict[str, Any] | None:
        """The spawn request for a new process, None for a known one with the same spec."""
        proc_id, spec = item.proc_id, item.spec
        registry.check_proc_id(proc_id)
        check_spec(spec)
        known = self._procs.get(proc_id)
        if known is not None:
            if known.digest == spec_digest(spec):
                return None
            raise Conflict(f"conflict: process {proc_id!r} exists with a different spec")
        if item.instance and item.instance != self._outbox.instance:
            raise Conflict(
                "this start was sent before the agent's state was reset (event sequence"
                f" {item.instance}, now {self._outbox.instance}): it may have started then,"
                " so it is not started again"
            )
        try:
            proc = registry.create(self._root, proc_id, spec, self._spares)
        except OSError as exc:
            log.error("cannot create the directory of %s: %s", proc_id, exc)
            raise Unavailable(f"cannot create process directory: {exc.strerror}") from exc
        self._procs[proc_id] = proc
        self._live.add(proc_id)
        request = {
            "id": proc_id,
            "dir": str(proc.directory),
            "argv": list(spec.argv),
            # By default a program starts in its user's home: the login's, with one.
            "cwd": spec.cwd or (self._login.get("HOME", "/") if spec.login_env else self._home),
            "env_inherit": spec.env_inherit,
            "env": spec.env,
        }
        if spec.stderr is StderrMode.SEPARATE:  # merged when absent: requests stay small
            request["stderr"] = str(spec.stderr)
        if spec.login_env:
            request["login"] = self._login
        limits = spec.resources
        if limits is not None:
            request["resources"] = {k: v for k, v in vars(limits).items() if v is not None}
            if self._keeper is None:
                log.warning("%s: no cgroups on this host, its resources are not limited", proc_id)
        cgroup = self._keeper.take() if self._keeper is not None else None
        if cgroup is not None:
            request["cgroup"] = cgroup  # made ahead: the shim makes none
        return request

    def on_notification(self, message: dict[str, Any]) -> None:
        """A line from a shim or the spawner: the program started, could not start,
        exited, or was lost with its shim."""
        proc = self._procs.get(str(message.get("id")))
        if proc is None:
            return
        if "exit" in message:
            self._ended(proc, message["exit"])  # the shim lives on, for the next program
            return
        if "lost" in message:
            proc.lost_note = str(message["lost"])
            if proc.status is ProcState.STARTING:
                self._started_or_failed(proc.proc_id)
                self._live.discard(proc.proc_id)
                self._lost(proc, LostReason.SHIM_VANISHED)
                self._finish(proc)
            else:
                self._ended(proc)
            return
        if proc.status is not ProcState.STARTING:
            return
        error = message.get("error")
        if error is not None:
            self._start_failed(proc, str(error))
            return
        facts = registry.parse_pid(message.get("facts"))
        if facts is None:
            log.error("bad facts for %s: %r", proc.proc_id, message)
            return
        proc.facts = facts
        self._running(proc)
        if message.get("unsaved"):
            self._save_facts(proc, json.dumps(message["facts"]).encode(), first=True)

    def _save_facts(self, proc: Proc, text: bytes, first: bool = False) -> None:
        """Write the `pid` its shim could not (a full disk), once there is room: a
        restarted daemon needs it to watch the program, or to stop it."""
        if proc.status is not ProcState.RUNNING:
            return  # ended meanwhile: its `exit` tells a restarted daemon
        try:
            write_atomic(str(proc.directory / "pid"), text)
        except OSError as exc:
            if first:
                log.error(
                    "cannot write the pid of %s (retrying every second): %s", proc.proc_id, exc
                )
            self._at(proc, time.time() + 1.0, lambda p: self._save_facts(p, text))
            return
        if not first:
            log.info("wrote the pid of %s", proc.proc_id)

    def _running(self, proc: Proc, orphan: bool = False) -> None:
        """The program runs: watch its shim (or, for an orphan, the program itself)."""
        assert proc.facts is not None
        self._started_or_failed(proc.proc_id)
        proc.status = ProcState.RUNNING
        self._live.add(proc.proc_id)
        if not self._outbox.ledger(proc.proc_id).started:
            self._report_started(proc)
        self._active[proc.proc_id] = proc
        self._busy.set()  # the scan has work
        if not orphan:
            self._watch(proc)
        elif not self._orphaned(proc):
            self._loop.call_soon(self._ended, proc)
        timeout = proc.spec.timeout
        if timeout is not None:
            when = proc.facts.start_time + timeout.duration
            self._at(proc, when, self._timed_out)
        if proc.stop is not None:
            self._at(proc, proc.stop.deadline, self._escalate)
        elif proc.pending_stop is not None:
            self._begin_stop(proc, *proc.pending_stop, SignalReason.STOP)

    def _report_started(self, proc: Proc) -> None:
        facts = proc.facts
        assert facts is not None
        event = ProcStarted(proc.proc_id, facts.pid, facts.pgid, facts.start_time)
        self._report(event, started=True)

    def _start_failed(self, proc: Proc, error: str) -> None:
        self._started_or_failed(proc.proc_id)
        proc.status = ProcState.FAILED
        proc.error = error
        self._live.discard(proc.proc_id)
        if not self._outbox.ledger(proc.proc_id).final:
            self._report(ProcStartFailed(proc.proc_id, error), final=True)

    # -- watching ----------------------------------------------------------------------

    def _watch(self, proc: Proc) -> None:
        assert proc.facts is not None
        try:
            fd = os.pidfd_open(proc.facts.shim_pid)
        except ProcessLookupError:
            self._loop.call_soon(self._ended, proc)
            return
        proc.pidfd = fd
        self._loop.add_reader(fd, self._ended, proc)

    def _unwatch(self, proc: Proc) -> None:
        if proc.pidfd is not None:
            self._loop.remove_reader(proc.pidfd)
            os.close(proc.pidfd)
            proc.pidfd = None

    def _ended(self, proc: Proc, exit_record: Any = None) -> None:
        """The program may have ended: its shim (or the spawner) says so with the
        `exit` record it wrote, or a watched process (the shim, or an orphan
        program) is gone — then the files tell, or the program is watched on."""
        self._unwatch(proc)
        if proc.status is not ProcState.RUNNING:
            return
        proc.exit = registry.parse_exit(exit_record) or registry.read_exit(proc.directory)
        if proc.exit is None:
            proc.lost_note = proc.lost_note or registry.read_lost(proc.directory)
            if proc.lost_note is None and self._orphaned(proc):
                return  # its exit comes from the spawner
            log.warning("%s ended without an exit record", proc.proc_id)
            self._live.discard(proc.proc_id)
            self._lost(proc, LostReason.SHIM_VANISHED)
        else:
            self._live.discard(proc.proc_id)
            proc.status = ProcState.EXITED
        self._adopted.pop(proc.proc_id, None)
        self._finish(proc)

    def _finish(self, proc: Proc) -> None:
        """The exit (or loss) is known: send the rest of the output, then say so."""
        proc.final_pending = True
        self._active[proc.proc_id] = proc
        self._busy.set()  # the scan has work
        self._send_output(proc)
        facts = proc.facts
        if facts is not None and facts.cgroup is not None and self._keeper is not None:
            self._keeper.remove(facts.cgroup, proc.proc_id)  # once nothing is left in it

    def _orphaned(self, proc: Proc) -> bool:
        """The shim is gone without an exit: whether someone may still write it.

        A program that still runs is watched itself (its pidfd); one that ended
        is waited for while the spawner that reaps it lives (the scan reads its
        `exit` file, should the spawner's word not reach this daemon).
        """
        facts = proc.facts
        assert facts is not None
        if registry.program_alive(facts):
            with contextlib.suppress(ProcessLookupError):
                fd = os.pidfd_open(facts.pid)
                if registry.program_alive(facts):  # the fd is the program's, not a reuse
                    proc.pidfd = fd
                    self._loop.add_reader(fd, self._ended, proc)
                else:
                    os.close(fd)
        if proc.pidfd is None and not registry.spawner_alive(facts):
            return False
        self._adopted[proc.proc_id] = proc
        self._busy.set()  # the scan has work
        return True

    def _lost(self, proc: Proc, reason: LostReason) -> None:
        proc.status, proc.lost = ProcState.LOST, reason
        proc.error = f"process lost: {reason.replace('_', ' ')}"
        if (
            reason is not LostReason.REBOOT
            and proc.facts is not None
            and registry.group_alive(proc.facts)
        ):
            registry.kill_group(proc.facts, signal.SIGKILL)

    # -- output ------------------------------------------------------------------------

    async def scan(self) -> None:
        """Turn new output into events, for every active process, forever; asleep
        while no process is active (an idle agent costs nothing)."""
        while True:
            if not (self._active or self._adopted):
                self._busy.clear()
                await self._busy.wait()
            await asyncio.sleep(self.limits.scan_interval)
            self.scan_once()

    def scan_once(self) -> None:
        for proc in list(self._adopted.values()):
            self._check_adopted(proc)
        for proc in list(self._active.values()):
            self._send_output(proc)

    def _check_adopted(self, proc: Proc) -> None:
        """A re-adopted program's shim may run others and outlive it (a shim leaves
        once all its programs have ended): its `exit` file tells when it ended. An
        orphan's spawner writes it, or `lost`; if the spawner is gone too, the
        program is lost once it has ended."""
        if proc.status is not ProcState.RUNNING:
            del self._adopted[proc.proc_id]
            return
        directory, facts = proc.directory, proc.facts
        if (
            os.path.exists(directory / "exit")
            or os.path.exists(directory / "lost")
            or (
                proc.pidfd is None  # an orphan that ended: its program is not watched
                and facts is not None
                and not registry.spawner_alive(facts)
                and not registry.program_alive(facts)
                and not registry.shim_alive(facts)
            )
        ):
            del self._adopted[proc.proc_id]
            self._ended(proc)

    def _send_output(self, proc: Proc) -> None:
        """Enqueue what the streams have that may be sent, a chunk of each in turn
        (so a busy stdout does not hold a separate stderr back), while flow control
        allows; then the final event, once the exit is known and all is enqueued."""
        sizes = {fd: proc.output_size(fd) for fd in proc.fds}
        while not self._held_back(proc.proc_id):
            # Again after each chunk: a stream over the cap goes on past its middle.
            ends = {fd: proc.output_end(fd, size, proc.final_pending) for fd, size in sizes.items()}
            behind = [fd for fd, end in ends.items() if proc.enqueued[fd] < end]
            if not behind:
                break
            for fd in behind:
                offset = proc.enqueued[fd]
                length = min(MAX_OUTPUT_CHUNK, ends[fd] - offset)
                self._outbox.add_output(proc.proc_id, fd, proc.output_path(fd), offset, length)
                proc.enqueued[fd] += length
            self._schedule_flush()
        if proc.final_pending and all(proc.enqueued[fd] >= size for fd, size in sizes.items()):
            self._report_final(proc, sizes)

    def _held_back(self, proc_id: str) -> bool:
        """Flow control: too much output of the process, or of the agent, is unacked."""
        outbox, limits = self._outbox, self.limits
        return (
            outbox.unacked_bytes.get(proc_id, 0) >= limits.unacked_per_proc
            or outbox.unacked_total >= limits.unacked_total
        )

    def _report_final(self, proc: Proc, sizes: dict[int, int]) -> None:
        proc.final_pending = False
        del self._active[proc.proc_id]
        if proc.status is ProcState.EXITED:
            assert proc.exit is not None
            exited = ProcExited(proc.proc_id, proc.exit, sizes[1], sizes.get(2, 0))
            self._report(exited, final=True)
        else:
            assert proc.lost is not None
            if proc.lost_note:
                log.warning("%s lost: %s", proc.proc_id, proc.lost_note)
            self._report(ProcLost(proc.proc_id, proc.lost), final=True)

    # -- signals and timers ------------------------------------------------------------

    def _at(self, proc: Proc, when: float, callback: Callable[[Proc], None]) -> None:
        """Call `callback(proc)` at wall-clock time `when` (now, if past)."""
        delay = max(0.0, when - time.time())
        proc.timers.append(self._loop.call_later(delay, callback, proc))

    def signal(self, proc_id: str, number: int) -> ProcSummary:
        """Send `number` to the process's group (reason: request)."""
        proc = self.get(proc_id)
        check_signal(number)
        if proc.status is not ProcState.RUNNING or proc.facts is None:
            raise Conflict(f"process {proc_id!r} is {proc.status.value}")
        registry.kill_group(proc.facts, number)
        self._report(ProcSignaled(proc_id, number, SignalReason.REQUEST))
        return proc.summary()

    def stop(self, proc_id: str, number: int | None, grace: float | None) -> ProcSummary:
        """Signal the group, persist the deadline, SIGKILL it then; idempotent."""
        proc = self.get(proc_id)
        number = check_signal(proc.spec.stop.signal if number is None else number)
        grace = proc.spec.stop.grace if grace is None else grace
        if grace < 0:
            raise BadInput("grace must be >= 0")
        if proc.status is ProcState.STARTING:
            # Not spawned yet: stop it as soon as it is (a stop must never be lost).
            proc.pending_stop = (number, grace)
        elif proc.status is ProcState.RUNNING and proc.stop is None:
            self._begin_stop(proc, number, grace, SignalReason.STOP)
        return proc.summary()

    def _begin_stop(self, proc: Proc, number: int, grace: float, reason: SignalReason) -> None:
        assert proc.facts is not None
        stop = StopFacts(number, time.time() + grace, reason)
        try:
            registry.write_stop(proc, stop)
        except OSError as exc:
            # The SIGKILL is still armed; only its survival across a restart is lost.
            log.error("cannot persist the stop of %s: %s", proc.proc_id, exc)
            proc.stop = stop
        registry.kill_group(proc.facts, number)
        self._report(ProcSignaled(proc.proc_id, number, reason))
        self._at(proc, stop.deadline, self._escalate)

    def _timed_out(self, proc: Proc) -> None:
        if proc.status is ProcState.RUNNING and proc.stop is None:
            timeout = proc.spec.timeout
            assert timeout is not None
            self._begin_stop(proc, timeout.signal, proc.spec.stop.grace, SignalReason.TIMEOUT)

    def _escalate(self, proc: Proc) -> None:
        facts = proc.facts
        if facts is None or not registry.group_alive(facts):
            return
        registry.kill_group(facts, signal.SIGKILL)
        if not self._outbox.ledger(proc.proc_id).final and not proc.status.final:
            self._report(ProcSignaled(proc.proc_id, int(signal.SIGKILL), SignalReason.ESCALATION))
        if facts.cgroup is not None:
            self._loop.call_later(KILL_AGAIN, self._kill_again, facts.cgroup, KILL_TRIES)

    def _kill_again(self, cgroup: Cgroup, tries: int) -> None:
        """Kill what a fork slipped into the cgroup while it was being frozen."""
        if cgroups.kill(cgroup) and tries > 1:
            self._loop.call_later(KILL_AGAIN, self._kill_again, cgroup, tries - 1)

    # -- removal -----------------------------------------------------------------------

    def remove_reported(self) -> None:
        """Remove the directories of processes the server has the final word on.

        Once the final event (exited, lost, start failed) is acknowledged the
        server has stored everything, so no `DELETE` round trip per run is needed.
        """
        gone = []
        for proc_id in self._outbox.take_done():
            proc = self._procs.get(proc_id)
            if proc is not None and (not proc.status.final or proc.final_pending):
                continue
            if proc is not None:
                self._let_go(proc)
                del self._procs[proc_id]
            self._remover.remove(self._root / proc_id)
            gone.append(proc_id)
        if gone:
            self._outbox.forget_reported(gone)

    def delete(self, proc_id: str) -> None:
        """Forget a finished process whose result the server has stored."""
        proc = self.get(proc_id)
        if not proc.status.final or proc.final_pending:
            raise Conflict(f"process {proc_id!r} is {proc.status.value}")
        try:
            self._outbox.forget(proc_id)
        except sqlite3.Error as exc:  # a full disk: the server asks again
            raise Unavailable(f"cannot forget process {proc_id!r} now: {exc}") from None
        self._let_go(proc)
        remove_dir(proc.directory)
        del self._procs[proc_id]

    def _let_go(self, proc: Proc) -> None:
        """Forget a finished process's timers; a stop under way still ends in SIGKILL
        at its deadline for whatever is left in the group (children that ignore the
        stop signal outlive the program, and the record, otherwise)."""
        self._cancel_timers(proc)
        if proc.stop is not None:  # not kept in `timers`: nothing cancels it now
            delay = max(0.0, proc.stop.deadline - time.time())
            self._loop.call_later(delay, self._escalate, proc)

    def _cancel_timers(self, proc: Proc) -> None:
        for timer in proc.timers:
            timer.cancel()
        proc.timers.clear()

    def close(self) -> None:
        """Stop watching (processes keep running under their shims)."""
        for proc in self._procs.values():
            self._cancel_timers(proc)
            self._unwatch(proc)
        self._remover.close()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        try:
            self._outbox.flush()
        except sqlite3.Error as exc:
            # Unstored events had no number anyone saw; recovery reports the facts again.
            log.error("cannot write the outbox at exit: %s", exc)

    # -- recovery ----------------------------------------------------------------------

    def recover(self, epoch: int) -> int:
        """Load the process directories, report `agent.started`, then each recovery."""
        found: list[tuple[Proc, Recovery]] = []
        for entry in sorted(os.scandir(self._root), key=lambda e: e.name):
            proc = registry.load(Path(entry.path))
            if proc is None:
                log.warning("removing %s: no spec", entry.path)
                remove_dir(Path(entry.path))
                continue
            proc.enqueued = self._outbox.ledger(proc.proc_id).offsets()
            self._procs[proc.proc_id] = proc
            found.append((proc, registry.decide(registry.observe(proc, self._boot_id))))
        adopted = sum(1 for _, action in found if action in (Recovery.ADOPT, Recovery.ORPHAN))
        self._report(AgentStarted(epoch, adopted))
        for proc, action in found:
            self._recover(proc, action)
        self._sweep_cgroups()
        return adopted

    def _sweep_cgroups(self) -> None:
        """Remove the cgroups of runs no process of which runs any more (a previous
        daemon's too, and its unused ones)."""
        if self._keeper is None:
            return
        live = {
            path
            for proc in self._procs.values()
            if proc.status is ProcState.RUNNING and proc.facts and proc.facts.cgroup
            for path in proc.facts.cgroup.dirs.values()
        }
        self._keeper.sweep(live)

    def _recover(self, proc: Proc, action: Recovery) -> None:
        ledger = self._outbox.ledger(proc.proc_id)
        if proc.facts is not None and not ledger.started and action is not Recovery.FAILED:
            self._report_started(proc)
        if action in (Recovery.ADOPT, Recovery.ORPHAN):
            log.info("re-adopting %s (pid %s)", proc.proc_id, proc.facts and proc.facts.pid)
            self._adopted[proc.proc_id] = proc
            self._busy.set()  # the scan has work
            self._running(proc, orphan=action is Recovery.ORPHAN)
            return
        if action is Recovery.FAILED:
            self._start_failed(proc, proc.error or "start failed")
            return
        if action is Recovery.INTERRUPTED and not _claimed(proc):
            # A shim of the previous daemon took the start and may have started the
            # program, without a pid file yet: it cannot be started again, nor
            # watched: lost (the run errors; never a second start).
            action = Recovery.LOST
        if action is Recovery.INTERRUPTED:
            with contextlib.suppress(OSError):
                write_atomic(str(proc.directory / "failed"), INTERRUPTED.encode())
            self._start_failed(proc, INTERRUPTED)
            return
        if action is Recovery.EXITED:
            proc.status = ProcState.EXITED
        else:
            reason = {
                Recovery.LOST: LostReason.SHIM_VANISHED,
                Recovery.LOST_REBOOT: LostReason.REBOOT,
                Recovery.LOST_VANISHED: LostReason.SHIM_VANISHED,
                Recovery.LOST_PID_REUSED: LostReason.PID_REUSED,
            }[action]
            self._lost(proc, reason)
        if proc.stop is not None:
            self._at(proc, proc.stop.deadline, self._escalate)
        if not ledger.final:
            proc.final_pending = True
            self._active[proc.proc_id] = proc
            self._busy.set()  # the scan has work
            self._send_output(proc)
