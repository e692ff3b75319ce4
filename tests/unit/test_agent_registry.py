"""Process directories: the recovery table, process ids, spec checks and digests."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest

from apsis_agent import cgroups, registry, spawner
from apsis_agent.procs import check_spec
from apsis_agent.registry import Observed, Recovery, check_proc_id, decide
from apsis_common import codec
from apsis_common.codec import spec_digest
from apsis_common.errors import BadInput
from apsis_common.protocol import ProcSpec, SignalReason, StderrMode, StopSpec, TimeoutSpec


def _seen(**kw: bool) -> Observed:
    base = {
        "has_exit": False,
        "has_failed": False,
        "has_pid": True,
        "same_boot": True,
        "shim_pid_alive": False,
        "shim_matches": False,
    }
    return Observed(**(base | kw))


@pytest.mark.parametrize(
    ("seen", "action"),
    [
        (_seen(has_exit=True), Recovery.EXITED),
        (_seen(has_exit=True, same_boot=False), Recovery.EXITED),
        (_seen(has_failed=True, has_pid=False), Recovery.FAILED),
        (_seen(shim_pid_alive=True, shim_matches=True), Recovery.ADOPT),
        (_seen(same_boot=False), Recovery.LOST_REBOOT),
        (_seen(same_boot=False, shim_pid_alive=True), Recovery.LOST_REBOOT),
        (_seen(), Recovery.LOST_VANISHED),
        (_seen(shim_pid_alive=True), Recovery.LOST_PID_REUSED),
        (_seen(has_pid=False, same_boot=False), Recovery.INTERRUPTED),
        # The shim is gone, but the program runs (or its spawner does, and writes
        # its exit): watched; without either, it is lost.
        (_seen(program_alive=True), Recovery.ORPHAN),
        (_seen(spawner_alive=True), Recovery.ORPHAN),
        (_seen(shim_pid_alive=True, program_alive=True), Recovery.ORPHAN),
        (_seen(same_boot=False, program_alive=True), Recovery.LOST_REBOOT),
        (_seen(has_lost=True), Recovery.LOST),
        (_seen(has_lost=True, has_pid=False), Recovery.LOST),
        (_seen(has_exit=True, has_lost=True), Recovery.EXITED),
        (_seen(shim_pid_alive=True, shim_matches=True, spawner_alive=True), Recovery.ADOPT),
    ],
)
def test_recovery_table(seen: Observed, action: Recovery) -> None:
    assert decide(seen) is action


@pytest.mark.parametrize("proc_id", ["r1", "r1.0", "run-42:attempt@2", "A_b+c", "x" * 128])
def test_good_proc_ids(proc_id: str) -> None:
    assert check_proc_id(proc_id) == proc_id


@pytest.mark.parametrize(
    "proc_id", ["", ".", "..", ".hidden", "a/b", "a\0b", "a b", "x" * 129, "é"]
)
def test_bad_proc_ids(proc_id: str) -> None:
    with pytest.raises(BadInput):
        check_proc_id(proc_id)


def test_digest_is_stable_and_sensitive() -> None:
    spec = ProcSpec(argv=("echo", "hi"), env={"B": "2", "A": "1"})
    same = ProcSpec(argv=("echo", "hi"), env={"A": "1", "B": "2"})
    assert spec_digest(spec) == spec_digest(same)
    assert spec_digest(spec) != spec_digest(ProcSpec(argv=("echo", "ho")))
    assert spec_digest(spec) != spec_digest(ProcSpec(argv=("echo", "hi"), stop=StopSpec(grace=1)))
    decoded = codec.decode(ProcSpec, codec.encode(spec))
    assert spec_digest(decoded) == spec_digest(spec)


@pytest.mark.parametrize(
    "spec",
    [
        ProcSpec(argv=()),
        ProcSpec(argv=("",)),
        ProcSpec(argv=("a\0b",)),
        ProcSpec(argv=("true",), env={"A=B": "1"}),
        ProcSpec(argv=("true",), env={"": "1"}),
        ProcSpec(argv=("true",), cwd="/a\0"),
        ProcSpec(argv=("true",), stop=StopSpec(signal=999)),
        ProcSpec(argv=("true",), stop=StopSpec(grace=-1)),
        ProcSpec(argv=("true",), timeout=TimeoutSpec(duration=0)),
        ProcSpec(argv=("true",), output_max=-1),
    ],
)
def test_bad_specs(spec: ProcSpec) -> None:
    with pytest.raises(BadInput):
        check_spec(spec)


def test_good_spec() -> None:
    check_spec(ProcSpec(argv=("true",), timeout=TimeoutSpec(1.0, int(signal.SIGINT))))


def test_load_reads_what_the_shim_wrote(tmp_path: Path) -> None:
    spec = ProcSpec(argv=("true",))
    proc = registry.create(tmp_path, "p", spec)
    (proc.directory / "pid").write_text(
        '{"pid": 5, "pgid": 5, "start_ticks": 10, "start_time": 1.5, "boot_id": "b",'
        ' "shim_pid": 4, "shim_ticks": 9}'
    )
    (proc.directory / "stop").write_text('{"signal": 15, "deadline": 2.0, "reason": "stop"}')
    loaded = registry.load(proc.directory)
    assert loaded is not None
    assert loaded.digest == spec_digest(spec)
    assert loaded.facts == registry.PidFacts(5, 5, 10, 1.5, "b", 4, 9)
    assert loaded.facts.session == 4  # written before programs had sessions of their own
    assert loaded.stop == registry.StopFacts(15, 2.0, SignalReason.STOP)
    assert loaded.exit is None and loaded.error is None
    seen = registry.observe(loaded, "other-boot")
    assert decide(seen) is Recovery.LOST_REBOOT
    (proc.directory / "exit").write_text("not json")
    assert registry.load(proc.directory) is not None


def test_a_directory_without_spec_is_not_a_process(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    assert registry.load(tmp_path / "p") is None


def test_pid_facts_name_session_spawner_and_cgroup() -> None:
    facts = registry.parse_pid(
        {
            "pid": 7, "pgid": 7, "sid": 7, "start_ticks": 10, "start_time": 1.5,
            "boot_id": "b", "shim_pid": 4, "shim_ticks": 9,
            "spawner_pid": 3, "spawner_ticks": 8,
            "cgroup": {"version": 1, "dirs": {"freezer": "/f/proc-p", "memory": "/m/proc-p"}},
        }
    )  # fmt: skip
    assert facts is not None
    assert (facts.session, facts.spawner_pid, facts.spawner_ticks) == (7, 3, 8)
    assert facts.cgroup is not None and facts.cgroup.main == "/f/proc-p"
    assert registry.parse_pid({"pid": "x"}) is None
    bad = {"version": 3, "dirs": {"freezer": "/f"}}
    assert cgroups.from_facts(bad) is None and cgroups.from_facts({"version": 1}) is None


def test_a_start_a_full_disk_refuses_leaves_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space"):
        registry.create(tmp_path, "p1", ProcSpec(argv=("true",)))
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_the_first_claim_owns_the_start(tmp_path: Path) -> None:
    """A shim and a recovering agent both claim a start no pid was written for:
    whoever is first owns it; the other never starts it (or starts it again)."""
    shim_first, agent_first = tmp_path / "a", tmp_path / "b"
    shim_first.mkdir()
    agent_first.mkdir()
    assert spawner._claim(str(shim_first))
    assert not registry.claim(shim_first)
    assert registry.claim(agent_first)
    assert not spawner._claim(str(agent_first))


def test_each_stream_has_its_file_and_its_cap(tmp_path: Path) -> None:
    """A separate stderr is a stream of its own: its file, its size, its share of
    `output_max` (a head sent as written, a tail once finished, for each stream)."""
    spec = ProcSpec(argv=("true",), output_max=10, stderr=StderrMode.SEPARATE)
    proc = registry.create(tmp_path, "p", spec)
    assert proc.fds == (1, 2)
    assert proc.output_path(1).name == "output" and proc.output_path(2).name == "stderr"
    proc.output_path(1).write_bytes(b"o" * 100)
    proc.output_path(2).write_bytes(b"e" * 8)
    assert proc.output_end(1, 100, finished=False) == 5
    # Under the cap, but it may yet go over: the head alone while the program runs.
    assert proc.output_end(2, 8, finished=False) == 5
    proc.enqueued = {1: 5, 2: 5}
    assert proc.output_end(1, 100, finished=True) == 100
    assert proc.output_end(2, 8, finished=True) == 8  # it ended under the cap: all of it
    assert proc.enqueued == {1: 95, 2: 5}  # stdout's middle skipped, stderr's untouched
    summary = proc.summary()
    assert (summary.output_length, summary.stderr_length) == (100, 8)
    merged = registry.create(tmp_path, "m", ProcSpec(argv=("true",)))
    assert merged.fds == (1,) and merged.summary().stderr_length == 0


def test_a_stream_that_ended_unsent_goes_head_then_tail(tmp_path: Path) -> None:
    """A program that ended before any of its output was sent: its head, then (the
    head enqueued) its tail, never the middle."""
    proc = registry.create(tmp_path, "p", ProcSpec(argv=("true",), output_max=10))
    assert proc.output_end(1, 100, finished=True) == 5
    proc.enqueued[1] = 5
    assert proc.output_end(1, 100, finished=True) == 100
    assert proc.enqueued[1] == 95
    assert proc.output_end(1, 100, finished=True) == 100  # again: no further jump
    assert proc.enqueued[1] == 95
