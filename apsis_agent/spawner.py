"""The spawner process and the shim it forks for every program.

The daemon starts the spawner once: this very file, run by a fresh interpreter
in isolated mode without `site` (`python -I -S spawner.py`), so it holds nothing
but the few built-in modules it imports. Every shim is a fork of it, and a
shim's cost is mostly its address space: copied page tables, copy-on-write
faults, and tearing it all down at exit. From this ~10 MB process a shim costs
about a third less than from a fork of the daemon, and a fresh interpreter per
run would be ~3x slower. Hence the rules for this file: built-in modules only
(no `typing`, `dataclasses` or `contextlib` at run time), nothing from apsis.

Spawner: reads lines of JSON (lists of spawn requests) from a pipe and forks one
shim per request. SIGCHLD is ignored so exited shims never linger as zombies.

Shim: resets SIGCHLD, makes its own session (so signals to the agent's group do
not reach it), and starts the program with posix_spawn into its own process
group, with the merged `output` file as stdout and stderr; exec errors come back
from posix_spawn itself. It then writes `pid` (or `failed`), tells the daemon with one
short line on the notification pipe, waits for the program with wait4 and writes
`exit` atomically (temp file, fsync, rename). The shim, not the daemon, is the
program's parent, so programs outlive a killed daemon.

Notifications (one JSON object per line, each shorter than PIPE_BUF so lines
written by many shims never interleave):
    {"id": proc_id, "facts": {...the pid file...}}     exec succeeded
    {"id": proc_id, "error": message}                 start failed
"""

from __future__ import annotations

import errno
import json
import os
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


def read_boot_id() -> str:
    """The kernel's boot id: differs after a reboot."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def read_stat(pid: int) -> tuple[int, int, int] | None:
    """(process group, session, start time in clock ticks since boot) of `pid`, if alive."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] == b"Z":  # a zombie has finished running
        return None
    return int(fields[2]), int(fields[3]), int(fields[19])


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
    """The spawner's loop: fork a shim for each request until the daemon goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # shims are reaped by the kernel
    close_fds_except(req_r, note_w)
    import gc

    gc.freeze()  # keep pages shared with forked shims
    gc.disable()
    boot_id = read_boot_id()
    # Decoded once: reading os.environ afresh in every shim costs a third of a millisecond.
    environ = dict(os.environ)
    buffer = b""
    while True:
        data = os.read(req_r, 1 << 16)
        if not data:
            return
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            for request in json.loads(line):
                _fork_shim(request, req_r, note_w, boot_id, environ)


def _notify(note_w: int, message: dict[str, Any]) -> None:
    line = json.dumps(message).encode()
    if len(line) >= _MAX_LINE:
        message["error"] = str(message.get("error", ""))[:1000]
        line = json.dumps(message).encode()[: _MAX_LINE - 1]
    try:  # noqa: SIM105 - contextlib is not imported here (see the module's rules)
        os.write(note_w, line + b"\n")
    except OSError:
        pass  # the daemon is gone: the files in the process directory tell the story


def _fork_shim(
    request: dict[str, Any], req_r: int, note_w: int, boot_id: str, environ: dict[str, str]
) -> None:
    try:
        pid = os.fork()
    except OSError as exc:
        error = f"cannot fork: {exc.strerror}"
        write_atomic(os.path.join(request["dir"], "failed"), error.encode())
        _notify(note_w, {"id": request["id"], "error": error})
        return
    if pid == 0:  # pragma: no cover - runs in the shim
        status = 1
        try:
            # The requests pipe is the spawner's stdin: /dev/null takes its place, so
            # no file the shim opens lands on fd 0.
            null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            os.dup2(null, req_r, inheritable=False)
            os.close(null)
            _shim(request, note_w, boot_id, environ)
            status = 0
        finally:
            os._exit(status)


def _shim(request: dict[str, Any], note_w: int, boot_id: str, environ: dict[str, str]) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    os.setsid()
    directory: str = request["dir"]
    proc_id: str = request["id"]
    shim_pid = os.getpid()
    env = {**environ, **request["env"]} if request["env_inherit"] else dict(request["env"])
    try:
        pid = _spawn(request, env)
    except _StartError as exc:
        _fail(directory, proc_id, note_w, str(exc))
        return
    stat = read_stat(pid)
    shim_stat = read_stat(shim_pid)
    facts = {
        "pid": pid,
        "pgid": pid,
        "start_ticks": stat[2] if stat else None,
        "start_time": time.time(),
        "boot_id": boot_id,
        "shim_pid": shim_pid,
        "shim_ticks": shim_stat[2] if shim_stat else None,
    }
    write_atomic(os.path.join(directory, "pid"), json.dumps(facts).encode())
    _notify(note_w, {"id": proc_id, "facts": facts})
    os.close(note_w)
    _, status, usage = os.wait4(pid, 0)
    _write_exit(directory, status, usage)


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


def _write_exit(directory: str, status: int, usage: Any) -> None:
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
    write_atomic(os.path.join(directory, "exit"), json.dumps(exit_info).encode(), sync=True)


if __name__ == "__main__":  # pragma: no cover - the spawner process
    _serve(0, 1)
