"""The spawner process and the shims it forks to run programs.

The daemon starts the spawner once: this very file, run by a fresh interpreter
in isolated mode without `site` (`python -I -S spawner.py`), so it holds nothing
but the few built-in modules it imports. Every shim is a fork of it, and a
shim's cost is mostly its address space: copied page tables, copy-on-write
faults, and tearing it all down at exit. From this ~10 MB process a shim costs
about a third less than from a fork of the daemon, and a fresh interpreter per
run would be ~3x slower. Hence the rules for this file: built-in modules only
(no `typing`, `dataclasses` or `contextlib` at run time), nothing from apsis.

Spawner: reads lines of JSON (lists of spawn requests: one start batch) from a
pipe and hands each batch, in shares of at most `_SHARE` requests, to an idle
shim, or forks a new one. SIGCHLD is ignored so exited shims never linger as
zombies.

Shim: makes its own session (so signals to the agent's group do not reach it),
and starts each program of its share with posix_spawn into a process group of
its own, with the merged `output` file as stdout and stderr; exec errors come
back from posix_spawn itself. For each it writes `pid` (or `failed`) and tells
the daemon with one short line on the notification pipe. It then waits for its
programs with wait4, and as each ends writes its `exit` atomically (temp file,
fsync, rename) and says so. The shim, not the daemon, is the programs' parent,
so programs outlive a killed daemon.

A shim per share, not per program: a fork, its copy-on-write faults and the
teardown at exit cost more than a short program's whole start, and in a burst
of short programs, shims still writing their exits made the spawner fork more
shims, which slowed everything else (2,000 starts at once took 200 to 1,000
forks, and the slowest bursts had the most). The price is that killing a shim
loses the exits of all its programs, as it did one program's.

Shims are reused: once all its programs have ended, a shim waits for the next
share while its spawner lives (at most `_MAX_IDLE` wait, for up to `_IDLE_LIFE`
seconds). When the daemon dies, so does the spawner, and every shim leaves once
its programs have ended, as a fresh one would. A restarted daemon reads each
program's `exit` as it appears, and sees the shim exit.

Notifications (one JSON object per line, each shorter than PIPE_BUF so lines
written by many shims never interleave):
    {"id": proc_id, "facts": {...the pid file...}}     exec succeeded
    {"id": proc_id, "error": message}                 start failed
    {"id": proc_id, "exit": {...the exit file...}}    `exit` is written
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
# burst, a smaller one loses fewer exits if a shim is killed.
_SHARE = 100


def read_boot_id() -> str:
    """The kernel's boot id: differs after a reboot."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def read_stat(pid: int) -> tuple[int, int, int] | None:
    """(process group, session, start time in clock ticks since boot) of `pid`, if alive."""
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
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] == b"Z":  # a zombie has finished running
        return None
    return int(fields[2]), int(fields[3]), int(fields[19])


def write_new(path: str, data: bytes) -> None:
    """Create a file with one write, so a reader sees it whole or empty."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, sync: bool = False) -> None:
    """Write a file so readers see all of it or none of it."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
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
        self.requests = requests  # write end: lines of JSON lists of requests
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
    """The spawner's loop: hand each request to a shim until the daemon goes away."""
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)  # and so in every shim, which inherits it
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # shims are reaped by the kernel
    close_fds_except(req_r, note_w)
    import gc

    spawner = _Spawner(req_r, note_w)
    gc.freeze()  # keep pages shared with forked shims
    gc.disable()
    spawner.serve()


class _Spawner:
    """Requests in, shims out: an idle shim takes a share, else a new one is forked.

    Each reusable shim reads shares from a pipe of its own; once all its
    programs have ended it writes its pid on the idle pipe. A share goes to the
    shim most recently idle; if that shim has died meanwhile, the write fails
    and the next one (or a new shim) takes it. Only the spawner sends a shim
    away, by closing its pipe, so nothing is ever written for a shim that chose
    to go.
    """

    def __init__(self, req_r: int, note_w: int) -> None:
        self.req_r = req_r
        self.note_w = note_w
        self.idle_r, self.idle_w = os.pipe()
        os.set_blocking(self.idle_r, False)
        self.idle_buffer = b""
        self.pipes: dict[int, int] = {}  # reusable shim's pid -> its requests pipe
        self.idle: list[int] = []  # pids of shims waiting for a request, oldest first
        self.boot_id = read_boot_id()
        # Decoded once: reading os.environ afresh in every shim costs a third of a ms.
        self.environ = dict(os.environ)

    def serve(self) -> None:
        requests = b""
        while True:
            ready = select.select([self.req_r, self.idle_r], [], [], _IDLE_LIFE)[0]
            if not ready:
                self._dismiss(len(self.idle))  # quiet for a while: the pool goes
            if self.idle_r in ready:
                self._take_idle()
            if self.req_r in ready:
                data = os.read(self.req_r, 1 << 16)
                if not data:
                    return  # the daemon is gone; idle shims read end of file and go
                requests += data
                *lines, requests = requests.split(b"\n")
                for line in lines:
                    batch = json.loads(line)
                    for i in range(0, len(batch), _SHARE):
                        self._start(batch[i : i + _SHARE])
            self._dismiss(len(self.idle) - _MAX_IDLE)

    def _take_idle(self) -> None:
        """Note the shims that said they are idle since the last look (never waits)."""
        try:
            self.idle_buffer += os.read(self.idle_r, 1 << 16)
        except BlockingIOError:
            return
        *pids, self.idle_buffer = self.idle_buffer.split(b"\n")
        self.idle += [int(pid) for pid in pids if int(pid) in self.pipes]

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
                return
            except OSError:
                self._forget(pid)  # it died while idle
        self._fork(requests)

    def _dismiss(self, count: int) -> None:
        for _ in range(max(0, count)):
            self._forget(self.idle.pop(0))

    def _forget(self, pid: int) -> None:
        os.close(self.pipes.pop(pid))

    def _reusable(self) -> bool:
        """Whether a new shim may have a pipe (they are few: each holds an fd here)."""
        if len(self.pipes) >= _MAX_PIPES:
            for pid in list(self.pipes):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:  # died busy; never said it was idle
                    self._forget(pid)
        return len(self.pipes) < _MAX_PIPES

    def _fork(self, requests: list[dict[str, Any]]) -> None:
        requests_r, requests_w = os.pipe() if self._reusable() else (-1, -1)
        try:
            pid = os.fork()
        except OSError as exc:
            if requests_r >= 0:
                os.close(requests_r)
                os.close(requests_w)
            error = f"cannot fork: {exc.strerror}"
            for request in requests:
                write_atomic(os.path.join(request["dir"], "failed"), error.encode())
                _notify(self.note_w, {"id": request["id"], "error": error})
            return
        if pid == 0:  # pragma: no cover - runs in the shim
            status = 1
            try:
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
        if requests_r >= 0:
            os.close(requests_r)
            self.pipes[pid] = requests_w


class _Shim:
    """One shim: runs a share of programs, then, while its spawner lives, the next."""

    def __init__(self, spawner: _Spawner, requests: int) -> None:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        self.note_w = spawner.note_w
        self.idle_w = spawner.idle_w
        self.requests = requests  # -1: one share only
        self.buffer = b""
        self.boot_id = spawner.boot_id
        self.environ = spawner.environ
        self.pid = os.getpid()
        stat = read_stat(self.pid)
        self.ticks = stat[2] if stat else None

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
        """Start the programs, report each, then wait for them all, writing each exit."""
        running: dict[int, tuple[str, str]] = {}  # pid -> (directory, quoted process id)
        for request in requests:
            pid = self.start(request)
            if pid is not None:
                running[pid] = (request["dir"], json.dumps(request["id"]))
        while running:
            try:
                pid, status, usage = os.wait4(-1, 0)
            except ChildProcessError:  # pragma: no cover - only our programs are children
                return
            found = running.pop(pid, None)
            if found is not None:
                directory, quoted = found
                text = _write_exit(directory, status, usage)
                _notify_line(self.note_w, f'{{"id": {quoted}, "exit": {text}}}'.encode())

    def start(self, request: dict[str, Any]) -> int | None:
        """Start one program and report it; its pid, or None if it could not start."""
        directory: str = request["dir"]
        proc_id: str = request["id"]
        env = {**self.environ, **request["env"]} if request["env_inherit"] else request["env"]
        try:
            pid = _spawn(request, env)
        except _StartError as exc:
            _fail(directory, proc_id, self.note_w, str(exc))
            return None
        stat = read_stat(pid)
        facts = {
            "pid": pid,
            "pgid": pid,
            "start_ticks": stat[2] if stat else None,
            "start_time": time.time(),
            "boot_id": self.boot_id,
            "shim_pid": self.pid,
            "shim_ticks": self.ticks,
        }
        text = json.dumps(facts)
        # A torn pid file reads as none, which recovery treats as a start that never
        # happened, as it would a missing one: no temp file and rename needed.
        write_new(os.path.join(directory, "pid"), text.encode())
        _notify_line(self.note_w, f'{{"id": {json.dumps(proc_id)}, "facts": {text}}}'.encode())
        return pid


def _notify(note_w: int, message: dict[str, Any]) -> None:
    line = json.dumps(message).encode()
    if len(line) >= _MAX_LINE:
        message["error"] = str(message.get("error", ""))[:1000]
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
    """Start the program in its own process group; its pid.

    posix_spawn (vfork + exec in glibc) costs a fraction of a fork of even a
    small Python process, and reports exec errors synchronously. The shim's own
    descriptors are all close-on-exec, so the program gets only stdin (/dev/null)
    and the output file as stdout and stderr.
    """
    cwd: str = request["cwd"]
    argv: list[str] = request["argv"]
    try:
        os.chdir(cwd)  # the shim's own directory is the program's: nothing else uses it
    except OSError as exc:
        raise _StartError(cwd_error(exc, cwd)) from None
    try:
        out = os.open(
            os.path.join(request["dir"], "output"),
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
            0o600,
        )
    except OSError as exc:
        raise _StartError(f"cannot open the output file: {exc.strerror}") from None
    try:
        return os.posix_spawnp(
            argv[0],
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out, 1),
                (os.POSIX_SPAWN_DUP2, out, 2),
            ],
            setpgroup=0,
            setsigdef=[getattr(signal, name) for name in _RESET_SIGNALS],
        )
    except OSError as exc:
        raise _StartError(exec_error(exc, argv[0])) from None
    finally:
        os.close(out)


def _fail(directory: str, proc_id: str, note_w: int, error: str) -> None:
    write_atomic(os.path.join(directory, "failed"), error.encode(), sync=True)
    _notify(note_w, {"id": proc_id, "error": error})


def _write_exit(directory: str, status: int, usage: Any) -> str:
    """Write `exit` durably; its text (the notification carries it too)."""
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
        },
        "end_time": time.time(),
    }
    text = json.dumps(exit_info)
    write_atomic(os.path.join(directory, "exit"), text.encode(), sync=True)
    return text


if __name__ == "__main__":  # pragma: no cover - the spawner process
    _serve(0, 1)
