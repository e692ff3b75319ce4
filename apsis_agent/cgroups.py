"""Containment of runs in cgroups: whether the host allows it, and signalling,
killing and removing a run's cgroup.

Theory of operation. At start the daemon looks for a cgroup hierarchy it may
create cgroups in (`probe`): cgroup v2 with the memory, pids and cpu
controllers, else v1 with the freezer, memory, pids and cpu hierarchies
(cpuacct too, where there is one, for CPU time). Under its own cgroup in each
hierarchy it makes `apsis-agent.<tag>` (the tag is a hash of the state dir, so
several agents on a host never share one), and hands the `Layout` to the
spawner. A run's cgroup is made ahead, in a quiet moment (`Keeper`), and named
in its start request; the shim moves itself into it before the program is
forked, so the program and everything it forks are in it from birth
(spawner.py, `_Cgroups`); the `pid` file names it. Making a cgroup for each run
as it starts, and removing it as it ends, cost a burst of starts ~50 us of CPU
a run, more than the move itself (~35 us).

A run's cgroup, not its process group, is then the unit of signals, stops and
kills, so processes that left the group (`setsid`, a double fork) are reached
too. SIGKILL freezes the cgroup first (v1 freezer, v2 `cgroup.freeze`; v2's
`cgroup.kill` where the kernel has it), so nothing forks between listing the
processes and killing them. Once the program has ended the keeper removes its
cgroup, in a quiet moment, when nothing is left in it (it looks again every
`RETRY` seconds while processes the program left behind run). A cgroup is
never used for two runs: a late SIGKILL for one must not reach another.

Where no hierarchy allows it (not root, a v2 cgroup shared with other
processes, controllers bound elsewhere), runs are contained by their process
group, as without cgroups, and their exit records say so (`cgroup: 0`).

Nothing here runs in the spawner or a shim: they stay with built-in modules.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import logging
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

V1_NEEDED = ("freezer", "memory", "pids", "cpu")
V1_OPTIONAL = ("cpuacct",)
V2_NEEDED = ("memory", "pids", "cpu")
# How long a SIGKILL waits for the cgroup to freeze (it takes microseconds unless a
# process is stuck in the kernel; then the daemon kills again later).
FREEZE_WAIT = 0.05
# Cgroups made ahead: a burst of this many starts makes none. An empty v1 freezer
# cgroup costs next to nothing; a v2 one holds a memory cgroup (~14 KB of kernel).
POOL = {1: 64, 2: 64}
# The keeper works when no start came for QUIET seconds, or once a cgroup to
# remove has waited MAX_WAIT; it looks again every RETRY seconds at cgroups that
# processes outlived.
QUIET = 0.2
MAX_WAIT = 10.0
RETRY = 5.0
_CHUNK = 64


@dataclass(frozen=True)
class Layout:
    """Where this agent's run cgroups go: the directory holding them and the
    daemon's own cgroup (where shims go back to), per hierarchy — v1 by
    controller, v2 as `unified`."""

    version: int
    bases: dict[str, str]
    homes: dict[str, str]

    def config(self) -> dict[str, Any]:
        """What the spawner is told (as JSON)."""
        return {"version": self.version, "bases": self.bases, "homes": self.homes}


@dataclass(frozen=True)
class Cgroup:
    """A run's cgroup, as its `pid` file names it: directories by hierarchy, the
    first one (freezer, or the v2 cgroup) listing and freezing its processes."""

    version: int
    dirs: dict[str, str]

    @property
    def main(self) -> str:
        return next(iter(self.dirs.values()))


def from_facts(data: Any) -> Cgroup | None:
    """The cgroup a `pid` file's `cgroup` key names, if it names one."""
    if not isinstance(data, dict):
        return None
    version, dirs = data.get("version"), data.get("dirs")
    if version not in (1, 2) or not isinstance(dirs, dict) or not dirs:
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in dirs.items()):
        return None
    return Cgroup(version, dirs)


# -- the host ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Mount:
    path: str  # where it is mounted
    root: str  # the cgroup it shows at `path`
    controllers: frozenset[str]  # v1 (with the mount's other options); empty for v2


def _mounts() -> tuple[list[_Mount], _Mount | None]:
    """The v1 hierarchies and the v2 one, from /proc/self/mountinfo."""
    v1, v2 = [], None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, options = fields[sep + 1], fields[sep + 3]
            root, path = fields[3], fields[4]
            if fstype == "cgroup2":
                v2 = _Mount(path, root, frozenset())
            elif fstype == "cgroup":
                v1.append(_Mount(path, root, frozenset(options.split(","))))
    return v1, v2


def _own() -> dict[str, str]:
    """This process's cgroup by controller (v1), and by "" (v2)."""
    out = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                out[controller] = path
    return out


def _dir(mount: _Mount, cgroup: str) -> str | None:
    """The directory of `cgroup` in `mount`, if the mount shows it."""
    root = mount.root.rstrip("/")
    if cgroup != root and not cgroup.startswith(root + "/"):
        return None
    return os.path.normpath(mount.path + cgroup[len(root) :])


def tag(state_dir: Path) -> str:
    """The name of this agent's cgroup of runs: one per state dir."""
    digest = hashlib.sha256(str(state_dir.absolute()).encode()).hexdigest()[:12]
    return f"apsis-agent.{digest}"


def probe(state_dir: Path, ours: tuple[int, ...]) -> tuple[Layout | None, str]:
    """Where this agent may make run cgroups (and the directories to hold them,
    made now), or None and why not. `ours` are the daemon's and spawner's pids
    (a v2 cgroup holding only them may be split for delegation)."""
    try:
        v1, v2 = _mounts()
        own = _own()
    except OSError as exc:
        return None, f"cannot read the cgroups of this process: {exc}"
    name = tag(state_dir)
    reasons = []
    if v2 is not None and "" in own:
        layout, reason = _probe_v2(v2, own[""], name, ours)
        if layout is not None:
            return layout, ""
        reasons.append(reason)
    if v1:
        layout, reason = _probe_v1(v1, own, name)
        if layout is not None:
            return layout, ""
        reasons.append(reason)
    return None, "; ".join(reasons) or "no cgroup file system is mounted"


def _probe_v1(mounts: list[_Mount], own: dict[str, str], name: str) -> tuple[Layout | None, str]:
    bases, homes = {}, {}
    for controller in V1_NEEDED + V1_OPTIONAL:
        mount = next((m for m in mounts if controller in m.controllers), None)
        home = _dir(mount, own.get(controller, "")) if mount is not None else None
        if home is None:
            if controller in V1_NEEDED:
                return None, f"cgroup v1: no {controller} hierarchy"
            continue
        try:
            os.makedirs(os.path.join(home, name), exist_ok=True)
            # Shims move themselves in and out of run cgroups: so may this process.
            _write(os.path.join(home, name, "cgroup.procs"), str(os.getpid()))
            _write(os.path.join(home, "cgroup.procs"), str(os.getpid()))
        except OSError as exc:
            if controller in V1_NEEDED:
                return None, f"cgroup v1: cannot use a cgroup in {home}: {exc.strerror}"
            continue
        bases[controller] = os.path.join(home, name)
        homes[controller] = home
    return Layout(1, bases, homes), ""


def _probe_v2(
    mount: _Mount, own: str, name: str, ours: tuple[int, ...]
) -> tuple[Layout | None, str]:
    home = _dir(mount, own)
    if home is None:
        return None, "cgroup v2: this process's cgroup is not visible"
    available = set(_read(os.path.join(home, "cgroup.controllers")).split())
    missing = [c for c in V2_NEEDED if c not in available]
    if missing:
        return None, f"cgroup v2: no {', '.join(missing)} controller in {home}"
    enable = " ".join(f"+{c}" for c in V2_NEEDED)
    base = os.path.join(home, name)
    try:
        if own != "/":
            # Controllers are enabled for a cgroup's children only while it holds
            # no process itself: the daemon and spawner move to a leaf of their own.
            holders = {int(p) for p in _read(os.path.join(home, "cgroup.procs")).split()}
            if not holders <= set(ours):
                return None, f"cgroup v2: {home} holds other processes (delegate one to the agent)"
            leaf = os.path.join(home, f"{name}.daemon")
            os.makedirs(leaf, exist_ok=True)
            for pid in holders:
                _write(os.path.join(leaf, "cgroup.procs"), str(pid))
            _write(os.path.join(home, "cgroup.subtree_control"), enable)
            home = leaf
        else:
            _write(os.path.join(home, "cgroup.subtree_control"), enable)
        os.makedirs(base, exist_ok=True)
        _write(os.path.join(base, "cgroup.subtree_control"), enable)
    except OSError as exc:
        return None, f"cgroup v2: cannot prepare {home}: {exc.strerror}"
    return Layout(2, {"unified": base}, {"unified": home}), ""


# -- a run's cgroup ------------------------------------------------------------------


def processes(cgroup: Cgroup) -> list[int]:
    """The processes in the run's cgroup (none if it is gone)."""
    try:
        return [int(p) for p in _read(os.path.join(cgroup.main, "cgroup.procs")).split()]
    except FileNotFoundError:
        return []


def populated(cgroup: Cgroup) -> bool:
    """Whether any process is left in the run's cgroup."""
    if cgroup.version == 2:
        with contextlib.suppress(FileNotFoundError):
            return "populated 1" in _read(os.path.join(cgroup.main, "cgroup.events"))
        return False
    return bool(processes(cgroup))


def send(cgroup: Cgroup, number: int) -> bool:
    """Send signal `number` to every process in the run's cgroup; False if it was
    empty (or gone)."""
    if number == signal.SIGKILL:
        return kill(cgroup)
    pids = processes(cgroup)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, number)
    return bool(pids)


def kill(cgroup: Cgroup) -> bool:
    """SIGKILL every process in the run's cgroup, frozen first so none forks in
    between; False if it was empty (or gone)."""
    if not populated(cgroup):
        return False
    main = cgroup.main
    if cgroup.version == 2:
        try:
            _write(os.path.join(main, "cgroup.kill"), "1")
            return True
        except FileNotFoundError:
            pass  # before Linux 5.14: freeze, kill, thaw
        freeze, thaw, frozen = ("cgroup.freeze", "1"), ("cgroup.freeze", "0"), "frozen 1"
        state = "cgroup.events"
    else:
        freeze, thaw, frozen = ("freezer.state", "FROZEN"), ("freezer.state", "THAWED"), "FROZEN"
        state = "freezer.state"
    try:
        _write(os.path.join(main, freeze[0]), freeze[1])
    except FileNotFoundError:
        return False  # removed meanwhile: empty
    try:
        deadline = time.monotonic() + FREEZE_WAIT
        while frozen not in _read(os.path.join(main, state)) and time.monotonic() < deadline:
            time.sleep(0.001)
        for pid in processes(cgroup):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    finally:
        with contextlib.suppress(FileNotFoundError):
            _write(os.path.join(main, thaw[0]), thaw[1])  # the killed die as they thaw
    return True


def remove(cgroup: Cgroup) -> bool:
    """Remove the run's cgroup if nothing is left in it; whether it is gone."""
    gone = True
    for path in cgroup.dirs.values():
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError:
            gone = False  # still populated
    return gone


def leftovers(layout: Layout) -> list[Cgroup]:
    """The run cgroups under this agent's directories (a previous daemon's too)."""
    by_name: dict[str, dict[str, str]] = {}
    for controller, base in layout.bases.items():
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(base):
                if entry.is_dir() and entry.name.startswith(("proc-", "run-")):
                    by_name.setdefault(entry.name, {})[controller] = entry.path
    first = next(iter(layout.bases))
    out = []
    for dirs in by_name.values():
        ordered = {k: dirs[k] for k in sorted(dirs, key=lambda k: k != first)}
        out.append(Cgroup(layout.version, ordered))
    return out


def release(layout: Layout) -> None:
    """Remove this agent's directories of run cgroups, if no run cgroup is left in
    them (at the daemon's exit; programs that outlive it keep theirs)."""
    for base in set(layout.bases.values()):
        with contextlib.suppress(OSError):
            os.rmdir(base)


def agent_dirs(state_dir: Path) -> list[str]:
    """The directories of this agent's run cgroups that exist now, in every
    hierarchy (for cleaning up after it)."""
    try:
        v1, v2 = _mounts()
        own = _own()
    except OSError:
        return []
    name, found = tag(state_dir), []
    for mount in v1:
        controller = next((c for c in sorted(mount.controllers) if c in own), None)
        home = _dir(mount, own[controller]) if controller is not None else None
        found.append(os.path.join(home, name) if home is not None else "")
    if v2 is not None and "" in own:
        home = _dir(v2, own[""])
        found.append(os.path.join(home, name) if home is not None else "")
    return [path for path in found if path and os.path.isdir(path)]


class Keeper:
    """Run cgroups made before starts ask for them and removed after their runs,
    by a thread at low priority in quiet moments (as the remover does for
    process directories): `take` and `remove` are called on the event loop.

    Pool cgroups are `run-<epoch>-<n>` in the main hierarchy (freezer, or v2's),
    never named twice. A run with limits also has `proc-<proc id>` cgroups the
    shim makes in the other v1 hierarchies it needs.
    """

    def __init__(
        self, layout: Layout, epoch: int, limit: int | None = None, orphans: float | None = None
    ) -> None:
        """`orphans`: SIGKILL what is left in a run's cgroup so long after its program
        ended (None: it may run on; the cgroup goes once it is empty)."""
        self.layout = layout
        self._main = next(iter(layout.bases))
        self._base = layout.bases[self._main]
        self._limit = POOL[layout.version] if limit is None else limit
        self._names: collections.deque[str] = collections.deque()
        self._numbers = (f"run-{epoch}-{n}" for n in itertools.count())
        self._gone: queue.SimpleQueue[tuple[float, Cgroup, str] | None] = queue.SimpleQueue()
        self._orphans = orphans
        # Cgroups processes outlived their program in, with when it ended and whose.
        self._left: list[tuple[float, Cgroup, str]] = []
        self._last_start = 0.0
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cgroups", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def started(self) -> None:
        """Programs are being started: the keeper waits for a pause."""
        self._last_start = time.monotonic()

    def take(self) -> str | None:
        """A new, empty cgroup for a run (its path), if one is ready."""
        return self._names.popleft() if self._names else None

    def remove(self, cgroup: Cgroup, whose: str = "") -> None:
        """Remove a finished run's cgroup once nothing is left in it (`whose`: its
        proc id, for the log)."""
        self._gone.put((time.monotonic(), cgroup, whose))

    def sweep(self, live: set[str]) -> None:
        """At start: remove the cgroups of runs, and a previous daemon's unused
        ones, that no running process of ours is in (`live`: their directories)."""
        for cgroup in leftovers(self.layout):
            if live.isdisjoint(cgroup.dirs.values()):
                self.remove(cgroup)

    def close(self, timeout: float = 5.0) -> None:
        """Remove what was queued (without waiting for quiet) and the unused pool."""
        self._closing.set()
        self._gone.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)
        while self._names:
            with contextlib.suppress(OSError):
                os.rmdir(self._names.popleft())

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        next_retry = time.monotonic() + RETRY
        while True:
            # Asleep while there is nothing to do (an idle agent costs nothing).
            wait = max(0.0, next_retry - time.monotonic()) if self._left else None
            if len(self._names) < self._limit and not self._closing.is_set():
                wait = QUIET if wait is None else min(wait, QUIET)
            try:
                item = self._gone.get(timeout=wait)
            except queue.Empty:
                item = None
                if time.monotonic() >= next_retry:
                    self._left = [left for left in self._left if not self._settled(*left)]
                    next_retry = time.monotonic() + RETRY
                self._fill()
                continue
            if item is None:
                self._drain()
                return
            queued, cgroup, whose = item
            self._wait_for_quiet(queued + MAX_WAIT)
            if not remove(cgroup):
                self._left.append((queued, cgroup, whose))

    def _settled(self, ended: float, cgroup: Cgroup, whose: str) -> bool:
        """Whether a cgroup processes outlived their program in is gone now: removed
        once empty, after its processes are killed when the policy says so."""
        if remove(cgroup):
            return True
        if self._orphans is not None and time.monotonic() - ended >= self._orphans:
            left = processes(cgroup)
            if left and kill(cgroup):
                log.warning(
                    "%s: killed %d processes left behind %.0f s after its program ended: %s",
                    whose or cgroup.main,
                    len(left),
                    self._orphans,
                    " ".join(map(str, left[:10])),
                )
            return remove(cgroup)
        return False

    def _drain(self) -> None:
        while True:
            try:
                item = self._gone.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                remove(item[1])

    def _fill(self) -> None:
        """Make pool cgroups while no start comes."""
        while len(self._names) < self._limit and not self._closing.is_set():
            if time.monotonic() - self._last_start < QUIET or not self._gone.empty():
                return
            for _ in range(min(_CHUNK, self._limit - len(self._names))):
                path = os.path.join(self._base, next(self._numbers))
                try:
                    os.mkdir(path)
                except OSError as exc:
                    log.warning("cannot make a cgroup in %s: %s", self._base, exc)
                    self._limit = len(self._names)  # no more: starts make their own
                    return
                self._names.append(path)

    def _wait_for_quiet(self, deadline: float) -> None:
        while not self._closing.is_set():
            wait = min(self._last_start + QUIET, deadline) - time.monotonic()
            if wait <= 0:
                return
            self._closing.wait(wait)


def name_of(proc_id: str) -> str:
    """The name of a run's cgroup (as the shim makes it)."""
    return f"proc-{proc_id}"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, data: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)
