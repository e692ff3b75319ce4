"""The spawner process and the shims it forks to run programs.

The daemon starts the spawner once: this very file, run by a fresh interpreter
in isolated mode without `site` (`python -I -S spawner.py`), so it holds nothing
but the few built-in modules it imports. Every shim is a fork of it, and a
shim's cost is mostly its address space: copied page tables, copy-on-write
faults, and tearing it all down at exit. From this ~10 MB process a shim costs
about a third less than from a fork of the daemon, and a fresh interpreter per
run would be ~3x slower. Hence the rules for this file: built-in modules only
(no `typing`, `dataclasses` or `contextlib` at run time), nothing from apsis.

Spawner: reads lines of JSON from a pipe — first, once, the daemon's settings
(the cgroups runs go in, if any); then lists of spawn requests, one start batch
a line — and hands each batch, in shares of at most `_SHARE` requests, to an
idle shim, or forks a new one.

Shim: makes its own session (so signals to the agent's group do not reach it),
and starts each program of its share with posix_spawn into a session of its own
(so a program that kills its session kills only itself), with the `output`
file as stdout, and as stderr too unless the request keeps stderr separate
(then the `stderr` file), opened by the new process itself: an `output` file
exists only once a program was forked. With cgroups, the shim first makes the
run's cgroup and moves itself into it, so the program is born there (no fork
of the program can precede its placement), and moves back before it reports
the program. Exec errors come back from posix_spawn itself.
For each program it writes `pid` (or `failed`) and tells the daemon with one
short line on the notification pipe. It then waits for its programs with wait4,
and as each ends writes its `exit` atomically (temp file, fsync, rename) and
says so. The shim, not the daemon, is the programs' parent, so programs outlive
a killed daemon.

A shim per share, not per program: a fork, its copy-on-write faults and the
teardown at exit cost more than a short program's whole start, and in a burst
of short programs, shims still writing their exits made the spawner fork more
shims, which slowed everything else (2,000 starts at once took 200 to 1,000
forks, and the slowest bursts had the most).

A program may kill its shim (`kill -9 $PPID`). The spawner is a child
subreaper, so the programs of a dead shim become its children: it reaps them
and writes their exits, as the shim would have. It keeps each shim's share, and
when a shim dies it looks at the share's process directories: a program with a
`pid` and no `exit` is now its child (or was just reaped: the status of unknown
children is kept a little while for that); a program without `pid` whose
`output` exists was forked as the shim died, and is found among its children
by its stdout or stderr; a program without `output` was never started, and
goes to another shim. Children it cannot place (a program's own orphaned
children) are reaped and forgotten.

Shims are reused: once all its programs have ended, a shim waits for the next
share while its spawner lives (at most `_MAX_IDLE` wait, for up to `_IDLE_LIFE`
seconds). When the daemon dies, the spawner dismisses its shims and stays as
long as a shim or an orphaned program of its own lives, so programs stay
watched; a restarted daemon reads each program's `exit` as it appears.

Notifications (one JSON object per line, each shorter than PIPE_BUF so lines
written by many shims never interleave):
    {"id": proc_id, "facts": {...the pid file...}}     exec succeeded
    {"id": proc_id, "error": message}                 start failed
    {"id": proc_id, "exit": {...the exit file...}}    `exit` is written
    {"id": proc_id, "lost": message}                  `lost` is written: the end
                                                      of the program is unknowable
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import sys
import time

TYPE_CHECKING = False  # mypy reads the name; nothing imports `typing` at run time
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# Signals the shim or Python itself may have set to "ignore": ignored signals
# survive exec, so the program gets them back at their defaults.
_RESET_SIGNALS = ("SIGPIPE", "SIGXFSZ", "SIGINT", "SIGTERM", "SIGHUP", "SIGCHLD", "SIGQUIT")
# Keep notification lines atomic on the pipe.
_MAX_LINE = 3800
# Shims that may be reused (each costs the spawner an fd), how many of them may
# wait idle, and for how long while no request comes.
_MAX_PIPES = 128
_MAX_IDLE = 16
_IDLE_LIFE = 60.0
# Most programs one shim takes from a start batch: a bigger share forks less in a
# burst, a smaller one takes longer to start again when a shim is killed.
_SHARE = 100
# prctl(2) option: orphaned descendants are reparented to this process.
_PR_SET_CHILD_SUBREAPER = 36
# How long the status of a reaped child nobody claimed is kept: a program of a
# killed shim may be reaped just before its shim is.
_KEEP_REAPED = 10.0
# How long the spawner lets a start cut short by its shim's death finish.
_SETTLE = 0.05
# The file of each stream of a program, by fd: stdout (with stderr, when merged),
# and a separate stderr.
FILES = {1: "output", 2: "stderr"}
# The exit record's usage keys without a cgroup.
_NO_CGROUP = {"cgroup": 0.0}
# waitid(2)'s number by machine: the system call takes a fifth argument, the
# child's rusage, which glibc's wrapper does not pass.
_SYS_WAITID = {
    "x86_64": 247,
    "aarch64": 95,
    "riscv64": 95,
    "i386": 284,
    "i686": 284,
    "armv7l": 280,
    "ppc64le": 272,
    "ppc64": 272,
    "s390x": 281,
}


def read_boot_id() -> str:
    """The kernel's boot id: differs after a reboot."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command name (state first)."""
    try:  # os-level calls: the io stack costs a shim ~50 us a read
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # The command name may hold spaces and parentheses: split after the last ')'.
    return data[data.rindex(b")") + 2 :].split()


def read_stat(pid: int) -> tuple[int, int, int] | None:
    """(process group, session, start time in clock ticks since boot) of `pid`, if alive."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] == b"Z":  # a zombie has finished running
        return None
    return int(fields[2]), int(fields[3]), int(fields[19])


# A process directory taken from the spares (spares.py) holds an empty file for
# each of these, named BLANK + its name, which becomes the file instead of a new
# one: a start then allocates no inode for them. On ext4 without a journal, each
# new inode costs a scan past every inode freed in the last minute, and a burst
# of starts frees thousands (the directories of runs just ended): creating these
# files was most of a shim's and a third of the agent's CPU per run. Outputs are
# made new (a program that outlives its run may still write to its old ones).
BLANK = ".blank-"
BLANKS = ("spec", "claim", "pid", "exit")


def open_new(path: str) -> int:
    """`open(path, O_WRONLY | O_CREAT | O_EXCL)`: FileExistsError if it exists. Its
    blank, if the directory has one, becomes the file (a link, so the name is
    taken exactly once whoever races for it)."""
    head, name = os.path.split(path)
    blank = os.path.join(head, BLANK + name)
    try:
        os.link(blank, path)
    except FileNotFoundError:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:  # noqa: SIM105 - the spawner imports only what it must (no contextlib)
        os.unlink(blank)
    except FileNotFoundError:  # pragma: no cover - only the one who linked it unlinks it
        pass
    # Emptied again if a crash between the link and the unlink left the blank as a
    # second name of a file written since.
    return open_empty(path, os.O_WRONLY | os.O_CLOEXEC)


def open_empty(path: str, flags: int, mode: int = 0o600) -> int:
    """`os.open(path, flags | O_TRUNC, mode)` for a file that is nearly always empty
    already (a blank). Not O_TRUNC itself: on ext4, truncating a file makes its
    close write it out at once (`auto_da_alloc`, for files replaced by truncation),
    ~40 us and a disk request for every file; only a crash's leftover is emptied."""
    fd = os.open(path, flags, mode)
    try:
        if os.fstat(fd).st_size:
            os.ftruncate(fd, 0)
    except OSError:
        os.close(fd)
        raise
    return fd


def write_new(path: str, data: bytes) -> None:
    """Create a file with one write, so a reader sees it whole or empty."""
    fd = open_new(path)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, sync: bool = False) -> None:
    """Write a file so readers see all of it or none of it (through a temporary
    file: the blank of `path`, if there is one)."""
    tmp = f"{path}.tmp"
    head, name = os.path.split(path)
    try:  # noqa: SIM105 - the spawner imports only what it must (no contextlib)
        os.rename(os.path.join(head, BLANK + name), tmp)
    except OSError:
        pass
    fd = open_empty(tmp, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def exec_error(exc: OSError, argv0: str) -> str:
    """A clear message for a failed exec."""
    messages = {
        errno.ENOENT: "no such file",
        errno.EACCES: "permission denied",
        errno.ENOEXEC: "exec format error",
        errno.ENOTDIR: "not a directory",
        errno.EISDIR: "is a directory",
    }
    what = messages.get(exc.errno or 0)
    return f"{what}: {argv0}" if what else f"cannot execute {argv0}: {exc.strerror}"


def cwd_error(exc: OSError, cwd: str) -> str:
    """A clear message for a working directory that cannot be entered."""
    messages = {
        errno.ENOENT: "no such directory",
        errno.ENOTDIR: "not a directory",
        errno.EACCES: "permission denied",
    }
    what = messages.get(exc.errno or 0)
    return f"{what}: {cwd}" if what else f"cannot change to directory {cwd}: {exc.strerror}"


def close_fds_except(*keep: int) -> None:
    """Close every fd from 3 up, except `keep` (uses close_range: cheap)."""
    low = 3
    for fd in sorted(k for k in keep if k >= low):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


class Handle:
    """The daemon's end of a running spawner."""

    def __init__(self, pid: int, requests: int, notifications: int) -> None:
        self.pid = pid
        self.requests = requests  # write end: lines of JSON (settings, then requests)
        self.notifications = notifications  # read end: lines of JSON notifications


def start(state_dir: str) -> Handle:
    """Start the spawner: this file under a fresh interpreter, reading requests on
    its stdin and writing notifications on its stdout (stderr is the daemon's).
    `state_dir` is only shown in its command line (and its shims'), for `ps`."""
    req_r, req_w = os.pipe()
    note_r, note_w = os.pipe()
    argv = [sys.executable, "-I", "-S", os.path.abspath(__file__), state_dir]
    try:
        pid = os.posix_spawn(
            sys.executable,
            argv,
            dict(os.environ),
            file_actions=[(os.POSIX_SPAWN_DUP2, req_r, 0), (os.POSIX_SPAWN_DUP2, note_w, 1)],
            setpgroup=0,  # ^C on the daemon's terminal must not reach it
        )
    finally:
        os.close(req_r)
        os.close(note_w)
    return Handle(pid, req_w, note_r)


def _serve(req_r: int, note_w: int) -> None:
    """The spawner's loop: hand each request to a shim until the daemon goes away
    and nothing of its own is left to watch."""
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)  # and so in every shim, which inherits it
    close_fds_except(req_r, note_w)
    _become_subreaper()
    import gc

    spawner = _Spawner(req_r, note_w)
    gc.freeze()  # keep pages shared with forked shims
    gc.disable()
    spawner.serve()


def _become_subreaper() -> None:
    """Have the programs of a dead shim reparented to this process, not to init."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:  # pragma: no cover
        message = os.strerror(ctypes.get_errno())
        sys.stderr.write(f"spawner: cannot become a child subreaper: {message}\n")


def _on_child(number: int, frame: object) -> None:
    """SIGCHLD only wakes the loop up (through the wakeup fd); it reaps."""


class _Spawner:
    """Requests in, shims out: an idle shim takes a share, else a new one is forked.

    Each reusable shim reads shares from a pipe of its own; once all its
    programs have ended it writes its pid on the idle pipe. A share goes to the
    shim most recently idle; if that shim has died meanwhile, the write fails
    and the next one (or a new shim) takes it. Only the spawner sends a shim
    away, by closing its pipe, so nothing is ever written for a shim that chose
    to go. Every shim is reaped here; one that did not end cleanly leaves its
    share to `_take_over`.
    """

    def __init__(self, req_r: int, note_w: int) -> None:
        self.req_r = req_r
        self.note_w = note_w
        self.idle_r, self.idle_w = os.pipe()
        os.set_blocking(self.idle_r, False)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, _on_child)
        self.idle_buffer = b""
        self.pipes: dict[int, int] = {}  # reusable shim's pid -> its requests pipe
        self.idle: list[int] = []  # pids of shims waiting for a request, oldest first
        self.shares: dict[int, list[dict[str, Any]]] = {}  # live shim -> its share
        # A program of a dead shim -> its request and cgroup directories.
        self.orphans: dict[int, tuple[dict[str, Any], dict[str, str] | None]] = {}
        # Children reaped that nobody claimed (yet): pid -> status, usage, when
        # reaped (monotonic), whether it led its session, its start ticks.
        self.reaped: dict[int, tuple[int, Any, float, bool, int]] = {}
        self.dead: list[tuple[int, list[dict[str, Any]]]] = []  # shims to take over
        self.closing = False  # the daemon is gone
        self.pid = os.getpid()
        stat = read_stat(self.pid)
        self.ticks = stat[2] if stat else None
        self.boot_id = read_boot_id()
        self.cgroups: _Cgroups | None = None
        self.waiter = _Waiter()
        # Decoded once: reading os.environ afresh in every shim costs a third of a ms.
        self.environ = dict(os.environ)

    def serve(self) -> None:
        requests = b""
        while not self.closing or self.shares or self.orphans:
            readers = [self.wake_r, self.idle_r] + ([] if self.closing else [self.req_r])
            ready = select.select(readers, [], [], None if self.closing else _IDLE_LIFE)[0]
            if not ready:
                self._dismiss(len(self.idle))  # quiet for a while: the pool goes
            if self.wake_r in ready:
                self._reap()
            if self.idle_r in ready:
                self._take_idle()
            if self.req_r in ready:
                data = os.read(self.req_r, 1 << 16)
                if not data:
                    self._close()
                    continue
                requests += data
                *lines, requests = requests.split(b"\n")
                for line in lines:
                    self._request(json.loads(line))
            self._dismiss(len(self.idle) - _MAX_IDLE)

    def _request(self, message: Any) -> None:
        if isinstance(message, dict):  # the daemon's settings
            config = message.get("cgroups")
            self.cgroups = _Cgroups(config) if config else None
            return
        for i in range(0, len(message), _SHARE):
            self._start(message[i : i + _SHARE])

    def _close(self) -> None:
        """The daemon is gone: send every shim away (busy ones leave once their
        programs have ended) and stay while something of ours runs."""
        self.closing = True
        for pid in list(self.pipes):
            self._forget(pid)

    def _take_idle(self) -> None:
        """Note the shims that said they are idle since the last look (never waits)."""
        try:
            self.idle_buffer += os.read(self.idle_r, 1 << 16)
        except BlockingIOError:
            return
        *lines, self.idle_buffer = self.idle_buffer.split(b"\n")
        for line in lines:
            pid = int(line)
            if pid in self.shares:
                self.shares[pid] = []  # all its programs have ended
            if pid in self.pipes:
                self.idle.append(pid)

    def _start(self, requests: list[dict[str, Any]]) -> None:
        line = json.dumps(requests).encode() + b"\n"
        if not self.idle:
            # Within a burst, short programs end while the spawner forks: a shim
            # whose programs just finished is far cheaper than a new one.
            self._take_idle()
        while self.idle:
            pid = self.idle.pop()  # the most recently idle: its pages are warm
            try:
                os.write(self.pipes[pid], line)
            except OSError:
                self._forget(pid)  # it died while idle
                continue
            self.shares[pid] = requests
            return
        self._fork(requests)

    def _dismiss(self, count: int) -> None:
        for _ in range(max(0, count)):
            self._forget(self.idle[0])

    def _forget(self, pid: int) -> None:
        """No more shares for this shim: it leaves once its programs have ended."""
        os.close(self.pipes.pop(pid))
        if pid in self.idle:
            self.idle.remove(pid)

    def _fork(self, requests: list[dict[str, Any]]) -> None:
        reusable = len(self.pipes) < _MAX_PIPES and not self.closing
        requests_r, requests_w = os.pipe() if reusable else (-1, -1)
        try:
            pid = os.fork()
        except OSError as exc:
            if requests_r >= 0:
                os.close(requests_r)
                os.close(requests_w)
            error = f"cannot fork: {exc.strerror}"
            for request in requests:
                _fail(request["dir"], request["id"], self.note_w, error)
            return
        if pid == 0:  # pragma: no cover - runs in the shim
            status = 1
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                # The requests pipe is the spawner's stdin: /dev/null takes its place,
                # so no file the shim opens lands on fd 0.
                null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
                os.dup2(null, self.req_r, inheritable=False)
                os.close(null)
                # Other shims' pipes close too: their end of file must not wait on us.
                close_fds_except(self.note_w, self.idle_w, requests_r)
                _Shim(self, requests_r).serve(requests)
                status = 0
            finally:
                os._exit(status)
        self.shares[pid] = requests
        if requests_r >= 0:
            os.close(requests_r)
            self.pipes[pid] = requests_w

    # -- children ----------------------------------------------------------------------

    def _reap(self) -> None:
        """Reap every child that ended; take over the programs of dead shims."""
        _drain(self.wake_r)
        self._collect()
        while self.dead:
            self._take_over(*self.dead.pop(0))
        now = time.monotonic()
        for pid in [p for p, found in self.reaped.items() if now - found[2] > _KEEP_REAPED]:
            del self.reaped[pid]

    def _collect(self) -> None:
        """Reap the children that ended: a shim that died busy goes to `dead`, an
        orphaned program gets its exit, anything else is kept a while in `reaped`
        (with what its zombie still says: session and start)."""
        now = time.monotonic()
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            pid = info.si_pid
            known = pid in self.shares or pid in self.orphans
            fields = None if known else _stat_fields(pid)
            _, status, usage = os.wait4(pid, 0)
            if pid in self.shares:
                share = self.shares.pop(pid)
                if pid in self.pipes:
                    self._forget(pid)
                if status != 0 and share:  # killed (a clean exit ends no program)
                    self.dead.append((pid, share))
            elif pid in self.orphans:
                self._ended(*self.orphans.pop(pid), status, usage)
            else:
                leader = fields is not None and int(fields[3]) == pid
                ticks = int(fields[19]) if fields is not None else 0
                self.reaped[pid] = (status, usage, now, leader, ticks)

    def _take_over(self, shim: int, share: list[dict[str, Any]]) -> None:
        """A shim died with programs of its share unfinished: watch those it
        started (now our children), start again those it never started."""
        try:
            self._look_over(shim, share)
        except OSError as exc:  # pragma: no cover - a full disk, say: keep serving
            sys.stderr.write(f"spawner: cannot take over the programs of {shim}: {exc}\n")

    def _look_over(self, shim: int, share: list[dict[str, Any]]) -> None:
        unreported = []
        for request in share:
            directory = request["dir"]
            if not os.path.isdir(directory):
                continue  # reported and removed
            if _exists(directory, "exit") or _exists(directory, "failed"):
                continue
            facts = _read_json(os.path.join(directory, "pid"))
            try:
                pid, ticks = int(facts["pid"]), facts.get("start_ticks")
            except (KeyError, TypeError, ValueError, AttributeError):
                unreported.append(request)  # none, or torn as the shim died writing it
                continue
            cgroup = facts.get("cgroup")
            self._adopt(pid, ticks, request, cgroup["dirs"] if cgroup else None)
        sys.stderr.write(
            f"spawner: shim {shim} died with {len(share)} programs: the ends of those it"
            f" reported are watched here; {len(unreported)} were never reported\n"
        )
        if unreported:
            self._rescue(shim, unreported)

    def _adopt(
        self, pid: int, ticks: int | None, request: dict[str, Any], dirs: dict[str, str] | None
    ) -> None:
        """Watch a program whose shim died: its exit is ours to write."""
        if pid in self.reaped:
            status, usage, *_ = self.reaped.pop(pid)
            self._ended(request, dirs, status, usage)
            return
        fields = _stat_fields(pid)
        if (
            fields is not None
            and int(fields[1]) == self.pid
            and (ticks is None or int(fields[19]) == ticks)
        ):
            self.orphans[pid] = (request, dirs)
            return
        # Reaped by its shim, which died before writing the exit: nobody knows it.
        self._lost(request, "its shim died as it ended: its exit status is unknown")

    def _rescue(self, shim: int, requests: list[dict[str, Any]]) -> None:
        """Requests of a dead shim with no `pid`: started as it died, or never.

        The one its shim was starting as it died runs on (found by its stdout)
        or has ended already: then it is the session leader reaped here that
        started within the last second (if exactly one did; else it is lost).
        """
        time.sleep(_SETTLE)  # a posix_spawn cut short by the death ends meanwhile
        self._collect()
        by_output = self._outputs()
        again = []
        for request in requests:
            directory = request["dir"]
            if _exists(directory, "failed"):
                continue
            if not _exists(directory, "output"):
                # Never forked: started again by a new shim, which holds the dead
                # one's claim (a restarted daemon finding it reports it lost).
                again.append({**request, "claimed": True})
                continue
            files = [os.path.realpath(os.path.join(directory, n)) for n in FILES.values()]
            pid = next((by_output[f] for f in files if f in by_output), None)
            if pid is not None:
                self._found(shim, pid, request)
                continue
            pid = self._just_ended()
            if pid is None:
                self._lost(request, "its shim died as it started it: its fate is unknown")
                continue
            status, usage, _, _, ticks = self.reaped.pop(pid)
            self._found(shim, pid, request, ticks)
            self._ended(*self.orphans.pop(pid), status, usage)
        if self.closing:  # no daemon to tell: a restarted one reports them failed
            for request in again:
                _fail(request["dir"], request["id"], self.note_w, "agent stopped during start")
        elif again:
            self._start(again)

    def _just_ended(self) -> int | None:
        """The one unclaimed child reaped that led its own session (as programs do)
        and started within the last second, if there is exactly one."""
        now = time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK")
        recent = [
            pid
            for pid, (_, _, _, leader, ticks) in self.reaped.items()
            if leader and now - ticks < os.sysconf("SC_CLK_TCK")
        ]
        return recent[0] if len(recent) == 1 else None

    def _outputs(self) -> dict[str, int]:
        """Our unknown children by the file their stdout or stderr is (a program's
        `output` or `stderr`, unless it redirected both)."""
        found: dict[str, int] = {}
        for pid in self._children():
            for fd in (1, 2):
                try:  # noqa: SIM105 - no contextlib here (see the module's rules)
                    found.setdefault(os.readlink(f"/proc/{pid}/fd/{fd}"), pid)
                except OSError:
                    pass
        return found

    def _found(
        self, shim: int, pid: int, request: dict[str, Any], ticks: int | None = None
    ) -> None:
        """A program its shim started but never reported: write its `pid`, tell the
        daemon, and watch it."""
        if ticks is None:
            stat = read_stat(pid)
            ticks = stat[2] if stat else None
        facts: dict[str, Any] = {
            "pid": pid,
            "pgid": pid,
            "sid": pid,
            "start_ticks": ticks,
            "start_time": time.time(),
            "boot_id": self.boot_id,
            "shim_pid": shim,
            "shim_ticks": None,
            "spawner_pid": self.pid,
            "spawner_ticks": self.ticks,
        }
        cgroups, dirs = self.cgroups, None
        if cgroups is not None:
            dirs = cgroups.dirs(request)
            if os.path.isdir(next(iter(dirs.values()))):  # placed before the death
                facts["cgroup"] = cgroups.facts(dirs)
            else:
                dirs = None
        text = json.dumps(facts)
        # It may exist, torn: the shim died writing it.
        _report_facts(request["dir"], request["id"], text, self.note_w, write_atomic)
        self.orphans[pid] = (request, dirs)

    def _children(self) -> list[int]:
        """Our children that are neither shims nor known programs."""
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:  # pragma: no cover - a kernel without CONFIG_PROC_CHILDREN
            pids = []
            for entry in os.listdir("/proc"):
                fields = _stat_fields(int(entry)) if entry.isdigit() else None
                if fields is not None and int(fields[1]) == self.pid:
                    pids.append(int(entry))
        return [p for p in pids if p not in self.shares and p not in self.orphans]

    def _ended(
        self, request: dict[str, Any], dirs: dict[str, str] | None, status: int, usage: Any
    ) -> None:
        """A program of a dead shim ended: write its exit, as its shim would have."""
        directory = request["dir"]
        try:
            used = self.cgroups.usage(dirs) if self.cgroups is not None and dirs else _NO_CGROUP
        except OSError:
            used = _NO_CGROUP
        text = _write_exit(directory, status, usage, used)
        quoted = json.dumps(request["id"])
        _notify_line(self.note_w, f'{{"id": {quoted}, "exit": {text}}}'.encode())

    def _lost(self, request: dict[str, Any], message: str) -> None:
        try:
            write_atomic(os.path.join(request["dir"], "lost"), message.encode(), sync=True)
        except OSError as exc:
            sys.stderr.write(f"spawner: cannot write `lost` for {request['id']}: {exc}\n")
        _notify(self.note_w, {"id": request["id"], "lost": message})


class _Shim:
    """One shim: runs a share of programs, then, while its spawner lives, the next."""

    def __init__(self, spawner: _Spawner, requests: int) -> None:
        os.setsid()
        self.note_w = spawner.note_w
        self.idle_w = spawner.idle_w
        self.requests = requests  # -1: one share only
        self.buffer = b""
        self.boot_id = spawner.boot_id
        self.environ = spawner.environ
        self.cgroups = spawner.cgroups
        self.waiter = spawner.waiter
        self.pid = os.getpid()
        stat = read_stat(self.pid)
        self.ticks = stat[2] if stat else None
        self.spawner_pid = spawner.pid
        self.spawner_ticks = spawner.ticks

    def serve(self, requests: list[dict[str, Any]] | None) -> None:
        while requests is not None:
            self.run(requests)
            requests = self._next()

    def _next(self) -> list[dict[str, Any]] | None:
        """The next requests, or None: sent away, or the spawner is gone."""
        if self.requests < 0:
            return None
        try:
            os.write(self.idle_w, f"{self.pid}\n".encode())
            while b"\n" not in self.buffer:
                data = os.read(self.requests, 1 << 16)
                if not data:
                    return None
                self.buffer += data
        except OSError:
            return None
        line, _, self.buffer = self.buffer.partition(b"\n")
        requests: list[dict[str, Any]] = json.loads(line)
        return requests

    def run(self, requests: list[dict[str, Any]]) -> None:
        """Start the programs, report each, then wait for them all, writing each exit.

        With cgroups, a program is reported once the shim has moved on to the
        next program's cgroup (or back to its own): one move per program, not two.
        """
        # pid -> (directory, quoted process id, cgroup directories)
        running: dict[int, tuple[str, str, dict[str, str] | None]] = {}
        unreported: tuple[dict[str, Any], int, dict[str, str] | None] | None = None
        for request in requests:
            if not request.get("claimed") and not _claim(request["dir"]):
                continue  # a restarted agent gave this start up first: it is not ours
            started = self.start(request)
            if unreported is not None:
                self.report(*unreported)  # the shim is out of its cgroup now
                unreported = None
            if isinstance(started, str):
                _fail(request["dir"], request["id"], self.note_w, started)
            else:
                pid, dirs = started
                running[pid] = (request["dir"], json.dumps(request["id"]), dirs)
                unreported = (request, pid, dirs)
        if self.cgroups is not None:
            self.cgroups.go_home()
        if unreported is not None:
            self.report(*unreported)
        while running:
            try:
                pid, status, usage = self.waiter.wait()
            except ChildProcessError:  # pragma: no cover - only our programs are children
                return
            found = running.pop(pid, None)
            if found is None:  # pragma: no cover - only our programs are children
                self.waiter.reap(pid)
                continue
            directory, quoted, dirs = found
            used = self.cgroups.usage(dirs) if self.cgroups is not None and dirs else _NO_CGROUP
            # Written before the program is reaped: should the shim be killed in
            # between, the spawner finds a zombie (and the exit written, or not).
            text = _write_exit(directory, status, usage, used)
            self.waiter.reap(pid)
            _notify_line(self.note_w, f'{{"id": {quoted}, "exit": {text}}}'.encode())
            # The daemon removes the cgroup, in a quiet moment (not in a burst).

    def start(self, request: dict[str, Any]) -> tuple[int, dict[str, str] | None] | str:
        """Start one program (in its cgroup, if there are cgroups); its pid and
        cgroup, or why it could not start."""
        env = {**self.environ, **request["env"]} if request["env_inherit"] else request["env"]
        if "login" in request:  # the user's login environment, then the job's
            env = {**env, **request["login"], **request["env"]}
        cgroups = self.cgroups
        dirs = None
        try:
            if cgroups is not None:
                dirs = cgroups.enter(request)
            return _spawn(request, env), dirs
        except _StartError as exc:
            if cgroups is not None and dirs is not None:
                cgroups.go_home()  # out of the cgroup, so it can go
                cgroups.remove(dirs)
            return str(exc)

    def report(self, request: dict[str, Any], pid: int, dirs: dict[str, str] | None) -> None:
        """Write the program's `pid` and tell the daemon (once the shim has left
        the program's cgroup: a kill of the cgroup must never reach the shim)."""
        directory: str = request["dir"]
        stat = read_stat(pid)
        facts: dict[str, Any] = {
            "pid": pid,
            "pgid": pid,
            "sid": pid,
            "start_ticks": stat[2] if stat else None,
            "start_time": time.time(),
            "boot_id": self.boot_id,
            "shim_pid": self.pid,
            "shim_ticks": self.ticks,
            "spawner_pid": self.spawner_pid,
            "spawner_ticks": self.spawner_ticks,
        }
        if self.cgroups is not None and dirs is not None:
            self.cgroups.settle(dirs, request)
            facts["cgroup"] = self.cgroups.facts(dirs)
        text = json.dumps(facts)
        # A torn pid file reads as none, which recovery treats as a start that never
        # happened, as it would a missing one: no temp file and rename needed.
        _report_facts(directory, request["id"], text, self.note_w, write_new)


class _Usage:
    """A child's resource usage, with the fields of `os.wait4`'s that the exit keeps."""

    def __init__(self, values: Any) -> None:
        self.ru_utime = values[0] + values[1] / 1e6
        self.ru_stime = values[2] + values[3] / 1e6
        self.ru_maxrss = values[4]
        self.ru_minflt, self.ru_majflt = values[8], values[9]
        self.ru_inblock, self.ru_oublock = values[11], values[12]
        self.ru_nvcsw, self.ru_nivcsw = values[16], values[17]


class _Waiter:
    """Waits for a program to end without reaping it (waitid with WNOWAIT, and the
    rusage Linux gives with it), so a shim writes the exit before the zombie goes:
    a shim killed in between leaves the zombie, and its status, to the spawner.
    On a machine whose system call number is not known here, wait4 reaps at once."""

    def __init__(self) -> None:
        import ctypes

        self.ctypes = ctypes
        self.number = _SYS_WAITID.get(os.uname().machine)
        self.syscall = ctypes.CDLL(None, use_errno=True).syscall
        self.info = ctypes.create_string_buffer(128)  # siginfo_t
        self.usage = (ctypes.c_long * 18)()  # struct rusage: two timevals, 14 longs
        self.offset = 16 if ctypes.sizeof(ctypes.c_void_p) == 8 else 12  # of si_pid

    def wait(self) -> tuple[int, int, Any]:
        """(pid, raw wait status, usage) of a child that ended."""
        if self.number is None:  # pragma: no cover - other machines
            return os.wait4(-1, 0)
        flags = os.WEXITED | os.WNOWAIT
        while self.syscall(self.number, os.P_ALL, 0, self.info, flags, self.usage) != 0:
            error = self.ctypes.get_errno()
            if error != errno.EINTR:
                raise OSError(error, os.strerror(error))  # ECHILD: ChildProcessError
        info, at = self.info.raw, self.offset
        code = int.from_bytes(info[8:12], sys.byteorder, signed=True)
        pid = int.from_bytes(info[at : at + 4], sys.byteorder, signed=True)
        value = int.from_bytes(info[at + 8 : at + 12], sys.byteorder, signed=True)
        if code == os.CLD_EXITED:
            status = (value & 0xFF) << 8
        else:
            status = value | (0x80 if code == os.CLD_DUMPED else 0)
        return pid, status, _Usage(list(self.usage))

    def reap(self, pid: int) -> None:
        if self.number is not None:
            try:  # noqa: SIM105 - no contextlib here (see the module's rules)
                os.waitpid(pid, 0)
            except ChildProcessError:  # pragma: no cover - reaped already
                pass


class _Cgroups:
    """The shim's part of cgroup containment (the daemon's is cgroups.py).

    `config` comes from the daemon: the cgroup version, the directory under
    which run cgroups go and the spawner's own cgroup, per hierarchy (v1) or for
    the one hierarchy `unified` (v2). A run's cgroup is `proc-<proc id>` in each
    hierarchy it needs. On v1 each costs the shim ~90 us of CPU per run (a
    directory, a move in and out, its removal): every run is in the freezer
    hierarchy (stop and kill); a run with limits is also in memory and cpuacct
    (if there is one), for its usage, and in pids and cpu for those limits.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.version: int = config["version"]
        self.bases: dict[str, str] = config["bases"]
        self.homes: dict[str, str] = config["homes"]
        self.me = str(os.getpid()).encode()
        # Where the shim is outside its own cgroups: hierarchy -> run cgroup.
        self.where: dict[str, str] = {}

    def dirs(self, request: dict[str, Any]) -> dict[str, str]:
        """The run's cgroup directories by hierarchy (the one to kill through first:
        the one the daemon made ahead, if it named one)."""
        name = "proc-" + request["id"]
        made = request.get("cgroup")
        if self.version == 2:
            return {"unified": made or os.path.join(self.bases["unified"], name)}
        limits = request.get("resources") or {}
        wanted = ["freezer"]
        if limits:
            wanted += ["memory", "cpuacct"] + [c for c in ("pids", "cpu") if limits.get(c)]
        out: dict[str, str] = {}
        for controller in wanted:
            base = self.bases.get(controller)
            if base is None:
                continue
            path = made if made and controller == "freezer" else os.path.join(base, name)
            if path not in out.values():  # hierarchies mounted together share one
                out[controller] = path
        return out

    def facts(self, dirs: dict[str, str]) -> dict[str, Any]:
        """What the `pid` file says of the run's cgroup."""
        return {"version": self.version, "dirs": dirs}

    def enter(self, request: dict[str, Any]) -> dict[str, str] | None:
        """Make the run's cgroup, set its limits and move this shim into it, so the
        program is born there; None (no cgroup, process group only; the shim is
        back in its own) if that fails for a run without limits."""
        dirs = self.dirs(request)
        limits = request.get("resources") or {}
        self.me = str(os.getpid()).encode()
        try:
            for path in dirs.values():
                try:  # noqa: SIM105 - no contextlib here (see the module's rules)
                    os.mkdir(path)
                except FileExistsError:
                    pass  # started again after a crash: the same run's cgroup
            self._limit(dirs, limits)
            for controller, path in dirs.items():
                _write(os.path.join(path, "cgroup.procs"), self.me)
                self.where[controller] = path
            for controller in [c for c in self.where if c not in dirs]:
                self._move_home(controller)  # the previous run had more hierarchies
        except OSError as exc:
            self.go_home()
            self.remove(dirs)
            if limits:
                raise _StartError(f"cannot make the run's cgroup: {exc.strerror}") from None
            return None
        return dirs

    def go_home(self) -> None:
        """Back to the spawner's cgroups, wherever the shim is."""
        for controller in list(self.where):
            self._move_home(controller)

    def _move_home(self, controller: str) -> None:
        try:
            _write(os.path.join(self.homes[controller], "cgroup.procs"), self.me)
            del self.where[controller]
        except OSError as exc:  # pragma: no cover - our own cgroup went away
            sys.stderr.write(f"shim: cannot go back to its {controller} cgroup: {exc}\n")

    def settle(self, dirs: dict[str, str], request: dict[str, Any]) -> None:
        """The shim has left the run's cgroup: its task limit no longer counts it."""
        pids = (request.get("resources") or {}).get("pids")
        if pids:
            self._write_limit(dirs, "pids", "pids.max", str(pids))

    def _limit(self, dirs: dict[str, str], limits: dict[str, Any]) -> None:
        memory, cpu, pids = limits.get("memory"), limits.get("cpu"), limits.get("pids")
        # While the shim is in the cgroup it counts as a task: one more until it leaves
        # (the program cannot have forked more than its limit once the shim is out).
        if self.version == 2:
            if memory:
                self._write_limit(dirs, "unified", "memory.max", str(memory))
                self._write_limit(dirs, "unified", "memory.swap.max", "0", optional=True)
            if cpu:
                self._write_limit(dirs, "unified", "cpu.max", f"{round(cpu * 100000)} 100000")
            if pids:
                self._write_limit(dirs, "unified", "pids.max", str(pids + 1))
            return
        if memory:
            self._write_limit(dirs, "memory", "memory.limit_in_bytes", str(memory))
            self._write_limit(dirs, "memory", "memory.memsw.limit_in_bytes", str(memory), True)
        if cpu:
            self._write_limit(dirs, "cpu", "cpu.cfs_period_us", "100000")
            self._write_limit(dirs, "cpu", "cpu.cfs_quota_us", str(round(cpu * 100000)))
        if pids:
            self._write_limit(dirs, "pids", "pids.max", str(pids + 1))

    @staticmethod
    def _write_limit(
        dirs: dict[str, str], controller: str, name: str, value: str, optional: bool = False
    ) -> None:
        try:
            _write(os.path.join(dirs[controller], name), value.encode())
        except FileNotFoundError:
            if not optional:
                raise

    def usage(self, dirs: dict[str, str]) -> dict[str, float]:
        """Peak memory, CPU time and OOM kills of the run's cgroup (as far as known)."""
        out = {"cgroup": 1.0}
        if self.version == 2:
            path = dirs["unified"]
            peak = _read_number(os.path.join(path, "memory.peak"))
            cpu = _read_key(os.path.join(path, "cpu.stat"), b"usage_usec")
            ooms = _read_key(os.path.join(path, "memory.events"), b"oom_kill")
            scale = 1e-6
        else:
            memory, cpuacct = dirs.get("memory"), dirs.get("cpuacct")
            peak = (
                _read_number(os.path.join(memory, "memory.max_usage_in_bytes")) if memory else None
            )
            ooms = (
                _read_key(os.path.join(memory, "memory.oom_control"), b"oom_kill")
                if memory
                else None
            )
            cpu = _read_number(os.path.join(cpuacct, "cpuacct.usage")) if cpuacct else None
            scale = 1e-9
        if peak is not None:
            out["memory_peak"] = float(peak)
        if cpu is not None:
            out["cpu_time"] = cpu * scale
        if ooms is not None:
            out["oom_kills"] = float(ooms)
        return out

    @staticmethod
    def remove(dirs: dict[str, str]) -> None:
        """Remove the cgroup of a run that could not start."""
        for path in dirs.values():
            try:  # noqa: SIM105 - no contextlib here (see the module's rules)
                os.rmdir(path)
            except OSError:
                pass


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _read(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_number(path: str) -> int | None:
    data = _read(path)
    try:
        return int(data) if data else None
    except ValueError:
        return None


def _read_key(path: str, key: bytes) -> int | None:
    """The number after `key` in a flat keyed file (`cpu.stat`, `memory.events`)."""
    for line in (_read(path) or b"").splitlines():
        name, _, value = line.partition(b" ")
        if name == key:
            return int(value)
    return None


def _drain(fd: int) -> None:
    """Read a non-blocking pipe empty."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _exists(directory: str, name: str) -> bool:
    return os.path.exists(os.path.join(directory, name))


def _read_json(path: str) -> Any:
    data = _read(path)
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None  # torn: written as the writer died


def _notify(note_w: int, message: dict[str, Any]) -> None:
    line = json.dumps(message).encode()
    if len(line) >= _MAX_LINE:
        for key in ("error", "lost"):
            if key in message:
                message[key] = str(message[key])[:1000]
        line = json.dumps(message).encode()[: _MAX_LINE - 1]
    _notify_line(note_w, line)


def _notify_line(note_w: int, line: bytes) -> None:
    try:  # noqa: SIM105 - contextlib is not imported here (see the module's rules)
        os.write(note_w, line + b"\n")
    except OSError:
        pass  # the daemon is gone: the files in the process directory tell the story


class _StartError(Exception):
    """The program could not be started; the message says why, plainly."""


def _spawn(request: dict[str, Any], env: dict[str, str]) -> int:
    """Start the program in a session of its own; its pid.

    posix_spawn (vfork + exec in glibc) costs a fraction of a fork of even a
    small Python process, and reports exec errors synchronously. The shim's own
    descriptors are all close-on-exec, so the program gets only stdin (/dev/null)
    and the output file as stdout and stderr (or, with `"stderr": "separate"`,
    the `stderr` file as stderr). The new process opens the output file itself
    (first): it exists once the program was forked, which tells a spawner whose
    shim died during the start whether to start it elsewhere.
    """
    cwd: str = request["cwd"]
    argv: list[str] = request["argv"]
    fds = (1, 2) if request.get("stderr") == "separate" else (1,)
    files = {fd: os.path.join(request["dir"], FILES[fd]) for fd in fds}
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    actions: list[Any] = [(os.POSIX_SPAWN_OPEN, fd, f, flags, 0o600) for fd, f in files.items()]
    if fds == (1,):
        actions.append((os.POSIX_SPAWN_DUP2, 1, 2))  # merged, in the order written
    actions.append((os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0))
    try:
        os.chdir(cwd)  # the shim's own directory is the program's: nothing else uses it
    except OSError as exc:
        raise _StartError(cwd_error(exc, cwd)) from None
    try:
        return os.posix_spawnp(
            argv[0],
            argv,
            env,
            file_actions=actions,
            setsid=True,
            setsigdef=[getattr(signal, name) for name in _RESET_SIGNALS],
        )
    except OSError as exc:
        for fd, path in files.items():
            if not os.path.exists(path):
                raise _StartError(f"cannot open the {FILES[fd]} file: {exc.strerror}") from None
        raise _StartError(exec_error(exc, argv[0])) from None


def _claim(directory: str) -> bool:
    """Take the start of the process in `directory`: whoever creates its `claim`
    file first (this shim, or an agent restarted since and recovering it) owns the
    start, so it never happens twice. False: the agent took it first. A claim that
    cannot be written (a full disk) is taken anyway: the start then fails there."""
    try:
        os.close(open_new(os.path.join(directory, "claim")))
    except FileExistsError:
        return False
    except OSError:
        pass
    return True


def _fail(directory: str, proc_id: str, note_w: int, error: str) -> None:
    try:
        write_atomic(os.path.join(directory, "failed"), error.encode(), sync=True)
    except OSError as exc:  # a full disk: the daemon is told all the same
        sys.stderr.write(f"spawner: cannot write `failed` for {proc_id}: {exc}\n")
    _notify(note_w, {"id": proc_id, "error": error})


def _report_facts(
    directory: str, proc_id: str, text: str, note_w: int, write: Callable[[str, bytes], None]
) -> None:
    """Write a started program's `pid` and tell the daemon. A `pid` that cannot be
    written (a full disk) does not stop the telling: the daemon watches the program
    all the same, and writes the file once there is room (`unsaved`)."""
    try:
        write(os.path.join(directory, "pid"), text.encode())
        unsaved = ""
    except OSError as exc:
        sys.stderr.write(f"spawner: cannot write the pid of {proc_id} (sent all the same): {exc}\n")
        unsaved = ', "unsaved": true'
    quoted = json.dumps(proc_id)
    _notify_line(note_w, f'{{"id": {quoted}, "facts": {text}{unsaved}}}'.encode())


def _write_exit(directory: str, status: int, usage: Any, used: dict[str, float]) -> str:
    """Write `exit` durably; its text (the notification carries it too). `used`
    adds the cgroup's usage (`cgroup`: 1.0 if the run had one, else 0.0)."""
    exit_info = {
        "status": status,
        "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "core_dump": os.WCOREDUMP(status),
        "rusage": {
            "utime": usage.ru_utime,
            "stime": usage.ru_stime,
            "maxrss": float(usage.ru_maxrss),
            "minflt": float(usage.ru_minflt),
            "majflt": float(usage.ru_majflt),
            "inblock": float(usage.ru_inblock),
            "oublock": float(usage.ru_oublock),
            "nvcsw": float(usage.ru_nvcsw),
            "nivcsw": float(usage.ru_nivcsw),
            **used,
        },
        "end_time": time.time(),
    }
    text = json.dumps(exit_info)
    path = os.path.join(directory, "exit")
    try:
        write_atomic(path, text.encode(), sync=True)
    except OSError as exc:
        # A full disk: the exit still goes to the daemon (the notification carries
        # it, and its outbox keeps it until it can be stored). Not writing it here
        # only loses it if the daemon dies before then (the run is then lost, with
        # the reason); raising would lose it for sure, and leave the program a zombie.
        sys.stderr.write(f"spawner: cannot write {path} (sent all the same): {exc}\n")
        try:  # noqa: SIM105 - the spawner imports only what it must (no contextlib)
            os.unlink(f"{path}.tmp")
        except OSError:
            pass
    return text


if __name__ == "__main__":  # pragma: no cover - the spawner process
    _serve(0, 1)
