"""Cgroups without a kernel: which hierarchies the agent takes, what the shim
writes for a run's limits and reads for its usage (v1 and v2), on a fake tree."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from apsis_agent import cgroups, spawner
from apsis_agent.cgroups import Cgroup, _Mount
from tests.harness import wait_for


def _v1_mounts(root: Path, controllers: list[str]) -> list[_Mount]:
    mounts = []
    for name in controllers:
        # What the kernel makes in each cgroup: the list of its processes.
        (root / name / "own" / "apsis-agent.x").mkdir(parents=True)
        (root / name / "own" / "cgroup.procs").touch()
        (root / name / "own" / "apsis-agent.x" / "cgroup.procs").touch()
        mounts.append(_Mount(str(root / name), "/", frozenset({"rw", name})))
    return mounts


def test_v1_needs_freezer_memory_pids_and_cpu(tmp_path: Path) -> None:
    own = dict.fromkeys(("freezer", "memory", "pids", "cpu", "cpuacct"), "/own")
    mounts = _v1_mounts(tmp_path, ["freezer", "memory", "pids", "cpu", "cpuacct"])
    layout, why = cgroups._probe_v1(mounts, own, "apsis-agent.x")
    assert layout is not None and why == ""
    assert list(layout.bases) == ["freezer", "memory", "pids", "cpu", "cpuacct"]
    assert layout.bases["memory"] == str(tmp_path / "memory/own/apsis-agent.x")
    assert layout.homes["memory"] == str(tmp_path / "memory/own")
    assert os.path.isdir(layout.bases["cpuacct"])
    missing = _v1_mounts(tmp_path / "b", ["freezer", "memory", "cpu"])
    assert cgroups._probe_v1(missing, own, "apsis-agent.x") == (
        None,
        "cgroup v1: no pids hierarchy",
    )
    # cpuacct is optional: CPU time is then not measured.
    optional = _v1_mounts(tmp_path / "c", ["freezer", "memory", "pids", "cpu"])
    layout, _ = cgroups._probe_v1(optional, own, "apsis-agent.x")
    assert layout is not None and "cpuacct" not in layout.bases


def test_v2_needs_its_controllers_and_a_cgroup_of_its_own(tmp_path: Path) -> None:
    home = tmp_path / "service"
    home.mkdir()
    (home / "cgroup.controllers").write_text("cpu io memory\n")
    mount = _Mount(str(tmp_path), "/", frozenset())
    assert cgroups._probe_v2(mount, "/service", "t", (1,)) == (
        None,
        f"cgroup v2: no pids controller in {home}",
    )
    (home / "cgroup.controllers").write_text("cpu io memory pids\n")
    (home / "cgroup.procs").write_text("1\n2\n99\n")
    layout, why = cgroups._probe_v2(mount, "/service", "t", (1, 2))
    assert layout is None and "holds other processes" in why


@pytest.mark.parametrize(
    ("mount_root", "cgroup", "expected"),
    [
        ("/", "/a/b", "/m/a/b"),
        ("/", "/", "/m"),
        ("/a", "/a/b", "/m/b"),
        ("/a", "/c", None),  # not visible in this mount
    ],
)
def test_a_cgroup_in_a_mount(mount_root: str, cgroup: str, expected: str | None) -> None:
    assert cgroups._dir(_Mount("/m", mount_root, frozenset()), cgroup) == expected


def test_leftovers_and_removal(tmp_path: Path) -> None:
    layout = cgroups.Layout(1, {"freezer": str(tmp_path / "f"), "memory": str(tmp_path / "m")}, {})
    for base in layout.bases.values():
        os.makedirs(os.path.join(base, "proc-r1.0"))
    os.makedirs(tmp_path / "m" / "other")
    (found,) = cgroups.leftovers(layout)
    assert found.main == str(tmp_path / "f" / "proc-r1.0")  # the freezer lists and kills
    assert list(found.dirs) == ["freezer", "memory"]
    assert cgroups.remove(found) and cgroups.remove(found)  # gone, and gone again
    assert cgroups.leftovers(layout) == []
    assert not cgroups.populated(Cgroup(1, {"freezer": str(tmp_path / "gone")}))


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_v1_limits_and_usage(tmp_path: Path) -> None:
    """The shim's writes for a run's limits, and what it reads of its usage."""
    bases = {c: str(tmp_path / c) for c in ("freezer", "memory", "pids", "cpu", "cpuacct")}
    shim = spawner._Cgroups({"version": 1, "bases": bases, "homes": bases})
    limits: dict[str, Any] = {"memory": 64 << 20, "cpu": 1.5, "pids": 10}
    request = {"id": "r1.0", "resources": limits}
    dirs = shim.dirs(request)
    assert list(dirs) == ["freezer", "memory", "cpuacct", "pids", "cpu"]
    # Without limits, the freezer alone: each hierarchy costs a run ~90 us.
    assert list(shim.dirs({"id": "r2.0"})) == ["freezer"]
    some: dict[str, Any] = {"id": "r3.0", "resources": {"memory": 1 << 30}}
    assert list(shim.dirs(some)) == ["freezer", "memory", "cpuacct"]
    limit_files = [
        "memory/proc-r1.0/memory.limit_in_bytes",
        "memory/proc-r1.0/memory.memsw.limit_in_bytes",
        "cpu/proc-r1.0/cpu.cfs_period_us",
        "cpu/proc-r1.0/cpu.cfs_quota_us",
        "pids/proc-r1.0/pids.max",
    ]
    _tree(tmp_path, dict.fromkeys(limit_files, ""))
    shim._limit(dirs, limits)
    written = [(tmp_path / name).read_text() for name in limit_files]
    assert written == [str(64 << 20), str(64 << 20), "100000", "150000", "11"]
    _tree(
        tmp_path,
        {
            "memory/proc-r1.0/memory.max_usage_in_bytes": "3813376\n",
            "memory/proc-r1.0/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
            "cpuacct/proc-r1.0/cpuacct.usage": "1500000000\n",
        },
    )
    assert shim.usage(dirs) == {
        "cgroup": 1.0,
        "memory_peak": 3813376.0,
        "cpu_time": 1.5,
        "oom_kills": 2.0,
    }


def test_v2_limits_and_usage(tmp_path: Path) -> None:
    bases = {"unified": str(tmp_path)}
    shim = spawner._Cgroups({"version": 2, "bases": bases, "homes": bases})
    limits: dict[str, Any] = {"memory": 1 << 30, "cpu": 0.5, "pids": 100}
    request = {"id": "r1.0", "resources": limits}
    dirs = shim.dirs(request)
    assert dirs == {"unified": str(tmp_path / "proc-r1.0")}
    names = ["memory.max", "memory.swap.max", "cpu.max", "pids.max"]
    _tree(tmp_path / "proc-r1.0", dict.fromkeys(names, ""))
    shim._limit(dirs, limits)
    written = [(tmp_path / "proc-r1.0" / name).read_text() for name in names]
    assert written == [str(1 << 30), "0", "50000 100000", "101"]
    _tree(
        tmp_path / "proc-r1.0",
        {
            "memory.peak": "1000\n",
            "cpu.stat": "usage_usec 2500000\nuser_usec 2000000\n",
            "memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        },
    )
    assert shim.usage(dirs) == {
        "cgroup": 1.0,
        "memory_peak": 1000.0,
        "cpu_time": 2.5,
        "oom_kills": 1.0,
    }


def test_the_keeper_makes_cgroups_ahead_and_removes_them_after(tmp_path: Path) -> None:
    """Run cgroups are made while starts pause, each handed out once, and removed
    once their runs are over (and empty), all off the event loop."""
    base = tmp_path / "freezer" / "apsis-agent.x"
    base.mkdir(parents=True)
    layout = cgroups.Layout(1, {"freezer": str(base)}, {"freezer": str(tmp_path / "freezer")})
    keeper = cgroups.Keeper(layout, epoch=7, limit=5)
    keeper.start()
    try:
        wait_for(lambda: len(os.listdir(base)) == 5, 5, "the pool to fill")
        taken = [keeper.take() for _ in range(6)]
        assert taken[5] is None and len(set(taken[:5])) == 5
        assert all(os.path.basename(str(t)).startswith("run-7-") for t in taken[:5])
        busy = Cgroup(1, {"freezer": str(taken[0])})
        (Path(str(taken[0])) / "cgroup.procs").write_text("42\n")  # a process left: kept
        keeper.remove(busy)
        keeper.remove(Cgroup(1, {"freezer": str(taken[1])}))
        wait_for(lambda: not os.path.exists(str(taken[1])), 5, "the removal")
        assert os.path.exists(str(taken[0]))
        # New ones are never named as the ones handed out.
        wait_for(lambda: len(os.listdir(base)) == 4 + 5, 5, "the pool to fill again")
        handed = {os.path.basename(str(t)) for t in taken[:5]}
        assert len(set(os.listdir(base)) - handed) == 5
        assert os.path.basename(str(taken[1])) not in os.listdir(base)
    finally:
        keeper.close()
    # Closing removes the unused pool; the busy one stays (as processes would keep it).
    kept = [taken[0], *taken[2:5]]
    assert sorted(os.listdir(base)) == sorted(os.path.basename(str(t)) for t in kept)
