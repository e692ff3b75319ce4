"""The agent runs real programs and reports them: starts, output, exits, stops, timeouts."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from apsis_agent import spares, spawner
from apsis_common import codec, protocol
from apsis_common.protocol import (
    AgentStarted,
    ProcExited,
    ProcList,
    ProcOutput,
    ProcSignaled,
    ProcSpec,
    ProcStarted,
    ProcStartFailed,
    ProcSummary,
    SignalRequest,
    StartBatch,
    StartProc,
    StartResult,
    StartResults,
    StderrMode,
    StopRequest,
    StopSpec,
    TimeoutSpec,
)
from tests.agent_harness import Agent, Receiver, pid_alive, running_agent, sh
from tests.harness import wait_for


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[Agent, Receiver]]:
    with running_agent(tmp_path) as pair:
        yield pair


def _exited(rx: Receiver, proc_id: str, timeout: float = 10.0) -> ProcExited:
    return wait_for(lambda: rx.exited(proc_id), timeout, f"{proc_id} to exit")


def _pieces(rx: Receiver, proc_id: str, fd: int) -> list[tuple[int, bytes]]:
    """The bytes of one stream from its events, as (offset, bytes) runs in order:
    events that follow on are joined; a gap starts a new run, an overlap fails."""
    runs: list[tuple[int, bytearray]] = []
    for event in rx.events(proc_id, ProcOutput):
        if event.fd != fd:
            continue
        end = runs[-1][0] + len(runs[-1][1]) if runs else 0
        assert event.offset >= end, f"fd {fd}: overlap at {event.offset}"
        if runs and event.offset == end:
            runs[-1][1].extend(event.data)
        else:
            runs.append((event.offset, bytearray(event.data)))
    return [(offset, bytes(data)) for offset, data in runs]


def _stream(rx: Receiver, proc_id: str, fd: int) -> bytes:
    """The whole of one stream from its events, checking there is no gap."""
    runs = _pieces(rx, proc_id, fd)
    assert len(runs) <= 1 and all(offset == 0 for offset, _ in runs), f"fd {fd}: a gap"
    return runs[0][1] if runs else b""


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_success_and_exit_code(agent: tuple[Agent, Receiver]) -> None:
    a, rx = agent
    results = a.start(("ok", ProcSpec(argv=("true",))), ("seven", sh("exit 7")))
    assert [r.status for r in results.results] == ["accepted", "accepted"]
    assert _exited(rx, "ok").exit.exit_code == 0
    seven = _exited(rx, "seven")
    assert seven.exit.exit_code == 7 and seven.exit.signal is None
    assert isinstance(rx.events()[0], AgentStarted)
    # Every process: started, then (output), then exited.
    for proc_id in ("ok", "seven"):
        kinds = [type(e) for e in rx.events(proc_id)]
        assert kinds[0] is ProcStarted and kinds[-1] is ProcExited


def test_output_is_byte_exact_and_merged(agent: tuple[Agent, Receiver]) -> None:
    a, rx = agent
    script = "printf 'a\\0b\\377'; echo err >&2; head -c 600000 /dev/zero | tr '\\0' x; echo end"
    a.start(("out", sh(script)))
    exited = _exited(rx, "out")
    expected = b"a\0b\xff" + b"err\n" + b"x" * 600000 + b"end\n"
    assert rx.output("out") == expected
    assert exited.output_length == len(expected)
    # The output events come before the exit, and chunks are bounded.
    events = rx.events("out")
    assert isinstance(events[-1], ProcExited)
    assert all(len(getattr(e, "data", b"")) <= protocol.MAX_OUTPUT_CHUNK for e in events)
    # Once the exit is acknowledged the server has it all: the directory goes.
    wait_for(lambda: a.request("GET", "/procs/out").status_code == 404, 5, "removal")
    wait_for(lambda: not (a.state_dir / "procs" / "out").exists(), 5, "the directory to go")


def test_output_by_range(agent: tuple[Agent, Receiver]) -> None:
    a, rx = agent
    a.start(("ranged", sh("printf 'abcdefgh'; sleep 30")))
    wait_for(lambda: rx.output("ranged") == b"abcdefgh", 5, "output")
    response = a.request("GET", "/procs/ranged/output?start=1&stop=6")
    assert response.status_code == 200 and response.content == b"bcdef"
    assert response.headers["x-apsis-output-length"] == "8"
    merged = a.request("GET", "/procs/ranged/output?fd=2")  # stderr is in stdout's file
    assert merged.status_code == 200 and merged.content == b""
    assert merged.headers["x-apsis-output-length"] == "0"
    a.request("POST", "/procs/ranged/stop", codec.encode(StopRequest(grace=1.0)))
    _exited(rx, "ranged")


def test_stderr_separate(agent: tuple[Agent, Receiver]) -> None:
    """A program with a separate stderr: each stream is a file and events of its
    own (fd 1 and 2, offsets in that stream), both lengths come with the exit,
    and the output endpoint reads either."""
    a, rx = agent
    rx.held.add("sep")  # kept, to read it back
    script = "echo out; echo err >&2; printf 'a\\0b'; printf '\\377' >&2; echo more >&2"
    a.start(("sep", sh(script, stderr=StderrMode.SEPARATE)))
    exited = _exited(rx, "sep")
    out, err = b"out\na\0b", b"err\n\xffmore\n"
    assert (_stream(rx, "sep", 1), _stream(rx, "sep", 2)) == (out, err)
    assert (exited.output_length, exited.stderr_length) == (len(out), len(err))
    directory = a.state_dir / "procs" / "sep"
    assert (directory / "output").read_bytes() == out
    assert (directory / "stderr").read_bytes() == err
    summary = codec.decode(ProcSummary, a.request("GET", "/procs/sep").content)
    assert (summary.output_length, summary.stderr_length) == (len(out), len(err))
    for query, expected in [("", out), ("?fd=1", out), ("?fd=2", err)]:
        response = a.request("GET", f"/procs/sep/output{query}")
        assert response.status_code == 200 and response.content == expected
        assert response.headers["x-apsis-output-length"] == str(len(expected))
    ranged = a.request("GET", "/procs/sep/output?fd=2&start=4&stop=6")
    assert ranged.content == b"\xffm"
    assert ranged.headers["x-apsis-output-length"] == str(len(err))
    for bad in ("3", "0", "-1", "x"):
        response = a.request("GET", f"/procs/sep/output?fd={bad}")
        assert response.status_code == 400
        error = codec.decode_plain(response.content)["error"]
        assert error.startswith("fd must be 1 (stdout) or 2 (stderr)")


def test_stderr_separate_burst_is_byte_exact(agent: tuple[Agent, Receiver]) -> None:
    """10 MiB to each of stdout and stderr, written alternately in 64 KiB chunks
    of distinct patterns: both streams arrive whole, in order, each in its own."""
    a, rx = agent
    script = (
        "import os\n"
        "for i in range(160):\n"
        "    os.write(1, bytes([65 + i % 26, i % 256]) * 32768)\n"
        "    os.write(2, bytes([97 + i % 26, 255 - i % 256]) * 32768)\n"
    )
    spec = ProcSpec(argv=(sys.executable, "-c", script), stderr=StderrMode.SEPARATE)
    a.start(("burst", spec))
    exited = _exited(rx, "burst", 120)
    out = b"".join(bytes([65 + i % 26, i % 256]) * 32768 for i in range(160))
    err = b"".join(bytes([97 + i % 26, 255 - i % 256]) * 32768 for i in range(160))
    assert _stream(rx, "burst", 1) == out
    assert _stream(rx, "burst", 2) == err
    assert (exited.output_length, exited.stderr_length) == (len(out), len(err))
    assert isinstance(rx.events("burst")[-1], ProcExited)


def test_output_max_caps_each_stream(agent: tuple[Agent, Receiver]) -> None:
    """With a separate stderr, `output_max` applies to each stream: each gets its
    head (sent as written) and its tail (once finished), never its middle."""
    a, rx = agent
    script = "printf '%050d%050d' 1 2; printf '%040d%040d' 3 4 >&2"
    a.start(("capped", sh(script, output_max=20, stderr=StderrMode.SEPARATE)))
    exited = _exited(rx, "capped")
    out, err = b"%050d%050d" % (1, 2), b"%040d%040d" % (3, 4)
    assert _pieces(rx, "capped", 1) == [(0, out[:10]), (90, out[-10:])]
    assert _pieces(rx, "capped", 2) == [(0, err[:10]), (70, err[-10:])]
    assert (exited.output_length, exited.stderr_length) == (100, 80)


def test_output_under_the_cap_while_running_is_not_the_head(
    agent: tuple[Agent, Receiver],
) -> None:
    """A stream still under the cap while its program runs may end over it: only
    its head goes out until the end, so what is kept is the head and the tail
    (seen: the agent sent what it had, 15 bytes of a 20-byte cap, then the tail)."""
    a, rx = agent
    a.start(("grows", sh("printf '%015d' 1; sleep 0.5; printf '%085d' 2", output_max=20)))
    _exited(rx, "grows")
    out = b"%015d%085d" % (1, 2)
    assert _pieces(rx, "grows", 1) == [(0, out[:10]), (90, out[-10:])]


def test_start_failures_have_clear_messages(agent: tuple[Agent, Receiver], tmp_path: Path) -> None:
    a, rx = agent
    plain = tmp_path / "not-executable"
    plain.write_text("echo hi\n")
    a.start(
        ("nope", ProcSpec(argv=("/usr/bin/nope",))),
        ("perm", ProcSpec(argv=(str(plain),))),
        ("cwd", ProcSpec(argv=("true",), cwd="/nope")),
        ("path", ProcSpec(argv=("no-such-program-anywhere",))),
    )

    def errors() -> dict[str, str]:
        found = {e.proc_id: e.error for e in rx.events(kind=ProcStartFailed)}
        return found if len(found) == 4 else {}

    found = wait_for(errors, what="four start failures")
    assert found == {
        "nope": "no such file: /usr/bin/nope",
        "perm": f"permission denied: {plain}",
        "cwd": "no such directory: /nope",
        "path": "no such file: no-such-program-anywhere",
    }
    # Kept while its failure is not acknowledged, then shown as failed.
    rx.held.add("nope2")
    a.start(("nope2", ProcSpec(argv=("/usr/bin/nope",))))
    wait_for(lambda: rx.events("nope2", ProcStartFailed), what="the failure")
    summary = codec.decode(ProcSummary, a.request("GET", "/procs/nope2").content)
    assert summary.state == "failed" and summary.error == "no such file: /usr/bin/nope"


def test_env_cwd_and_stdin(agent: tuple[Agent, Receiver], tmp_path: Path) -> None:
    a, rx = agent
    spec = sh(
        'echo "$FOO|$HOME_SET|$(pwd)"; cat; echo "stdin done"',
        env={"FOO": "bar baz"},
        cwd=str(tmp_path),
    )
    a.start(("env", spec))
    _exited(rx, "env")
    assert rx.output("env") == f"bar baz||{tmp_path}\nstdin done\n".encode()
    bare = ProcSpec(argv=("/usr/bin/env",), env_inherit=False, env={"ONLY": "1"})
    a.start(("bare", bare))
    _exited(rx, "bare")
    assert rx.output("bare") == b"ONLY=1\n"


def test_idempotent_start_and_conflict(agent: tuple[Agent, Receiver]) -> None:
    a, rx = agent
    spec = sh("sleep 30")
    assert a.start(("same", spec)).results[0].status == "accepted"
    assert a.start(("same", spec)).results[0].status == "exists"
    conflict = a.start(("same", sh("sleep 31"))).results[0]
    assert conflict.status == "refused" and "conflict" in (conflict.error or "")
    response = a.request("PUT", "/procs/same", codec.encode(sh("sleep 31")))
    assert response.status_code == 409
    response = a.request("PUT", "/procs/same", codec.encode(spec))
    assert codec.decode(StartResult, response.content).status == "exists"
    response = a.request("PUT", "/procs/single", codec.encode(ProcSpec(argv=("true",))))
    assert response.status_code == 201
    assert codec.decode(StartResult, response.content).status == "accepted"
    _exited(rx, "single")
    wait_for(lambda: rx.events("same", ProcStarted))
    assert len(rx.events("same", ProcStarted)) == 1


def test_stop_kills_the_whole_group(agent: tuple[Agent, Receiver]) -> None:
    a, rx = agent
    rx.held.add("sleepy")
    a.start(("sleepy", sh("sleep 600 & sleep 600; wait")))
    started = wait_for(lambda: rx.events("sleepy", ProcStarted), what="start")[0]
    response = a.request("POST", "/procs/sleepy/stop", codec.encode(StopRequest(grace=5)))
    assert response.status_code == 200
    exited = _exited(rx, "sleepy")
    assert exited.exit.signal == signal.SIGTERM
    wait_for(lambda: _group_gone(started.pgid), what="the group to be empty")
    signaled = rx.events("sleepy", ProcSignaled)
    assert [(s.signal, s.reason) for s in signaled] == [(signal.SIGTERM, "stop")]
    # Stopping again is harmless.
    again = a.request("POST", "/procs/sleepy/stop", codec.encode(StopRequest()))
    assert again.status_code == 200


def test_sigterm_ignored_escalates_to_sigkill(agent: tuple[Agent, Receiver]) -> None:
    a, rx = agent
    script = "trap '' TERM; echo ready; sleep 60 & wait"
    a.start(("stubborn", sh(script, stop=StopSpec(grace=0.5))))
    started = wait_for(lambda: rx.events("stubborn", ProcStarted), what="start")[0]
    wait_for(lambda: rx.output("stubborn") == b"ready\n", what="the trap to be set")
    a.request("POST", "/procs/stubborn/stop", codec.encode(StopRequest()))
    exited = _exited(rx, "stubborn")
    assert exited.exit.signal == signal.SIGKILL
    reasons = [(s.signal, s.reason) for s in rx.events("stubborn", ProcSignaled)]
    assert reasons == [(signal.SIGTERM, "stop"), (signal.SIGKILL, "escalation")]
    wait_for(lambda: _group_gone(started.pgid), what="the grandchild to be gone")


def test_timeout(agent: tuple[Agent, Receiver]) -> None:
    a, rx = agent
    a.start(("slow", sh("sleep 30", timeout=TimeoutSpec(duration=0.3), stop=StopSpec(grace=5))))
    exited = _exited(rx, "slow")
    assert exited.exit.signal == signal.SIGTERM
    assert [(s.signal, s.reason) for s in rx.events("slow", ProcSignaled)] == [
        (signal.SIGTERM, "timeout")
    ]


def test_signal_request(agent: tuple[Agent, Receiver]) -> None:
    a, rx = agent
    rx.held.add("hup")
    a.start(("hup", sh("trap 'echo got hup; exit 3' HUP; echo ready; sleep 30 & wait")))
    wait_for(lambda: rx.output("hup") == b"ready\n", what="the trap to be set")
    response = a.request("POST", "/procs/hup/signal", codec.encode(SignalRequest(signal.SIGHUP)))
    assert response.status_code == 200
    assert _exited(rx, "hup").exit.exit_code == 3
    assert rx.output("hup") == b"ready\ngot hup\n"
    assert rx.events("hup", ProcSignaled)[0].reason == "request"
    bad = a.request("POST", "/procs/hup/signal", codec.encode(SignalRequest(999)))
    assert bad.status_code == 400


def test_list_get_delete(agent: tuple[Agent, Receiver]) -> None:
    a, rx = agent
    a.start(("busy", sh("sleep 30")))
    wait_for(lambda: rx.events("busy", ProcStarted))
    rx.held.add("done")  # kept until its exit is acknowledged
    a.start(("done", ProcSpec(argv=("true",), labels={"run": "r1"})))
    _exited(rx, "done")
    listed = codec.decode(ProcList, a.request("GET", "/procs").content)
    states = {p.proc_id: p.state for p in listed.procs}
    assert states == {"done": "exited", "busy": "running"}
    done = codec.decode(ProcSummary, a.request("GET", "/procs/done").content)
    assert done.exit is not None and done.exit.exit_code == 0 and done.labels == {"run": "r1"}
    assert "utime" in done.exit.rusage
    assert a.request("DELETE", "/procs/busy").status_code == 409
    assert a.request("DELETE", "/procs/done").status_code == 204
    assert a.request("GET", "/procs/done").status_code == 404
    assert not (a.state_dir / "procs" / "done").exists()
    assert a.request("GET", "/procs/nothing").status_code == 404


def test_json_is_accepted(agent: tuple[Agent, Receiver]) -> None:
    a, rx = agent
    body = codec.encode_json(ProcSpec(argv=("true",)))
    response = a.request("PUT", "/procs/js", body, headers={"content-type": protocol.JSON})
    assert response.status_code == 201
    answer = response.json()
    assert {k: answer[k] for k in ("proc_id", "status", "error")} == {
        "proc_id": "js",
        "status": "accepted",
        "error": None,
    }
    _exited(rx, "js")


def test_a_start_batch_answer_carries_the_pids_of_started_programs(
    agent: tuple[Agent, Receiver],
) -> None:
    a, rx = agent
    batch = StartBatch(
        (
            StartProc("quick", ProcSpec(argv=("sleep", "0.5"))),
            StartProc("bad", ProcSpec(argv=("/nonexistent",))),
        )
    )
    response = a.request("POST", "/procs", codec.encode(batch))
    assert response.status_code == 200
    results = {r.proc_id: r for r in codec.decode(StartResults, response.content).results}
    quick = results["quick"]
    assert quick.status == "accepted" and quick.pid is not None and quick.pgid == quick.pid
    assert quick.start_time is not None and abs(quick.start_time - time.time()) < 5
    assert results["bad"].pid is None  # it never started: the webhook says why
    _exited(rx, "quick")


def test_process_dir_layout(agent: tuple[Agent, Receiver]) -> None:
    a, rx = agent
    rx.held.add("layout")
    a.start(("layout", sh("echo hi")))
    _exited(rx, "layout")
    directory = a.state_dir / "procs" / "layout"
    assert directory.stat().st_mode & 0o777 == 0o700
    assert {p.name for p in directory.iterdir()} == {"spec", "claim", "pid", "exit", "output"}
    assert (directory / "output").read_bytes() == b"hi\n"
    pid = rx.events("layout", ProcStarted)[0].pid
    wait_for(lambda: not pid_alive(pid), what="no zombie left")


def test_stop_right_after_start_is_not_lost(agent: tuple[Agent, Receiver]) -> None:
    a, rx = agent
    a.start(("early", sh("sleep 60", stop=StopSpec(grace=5))))
    a.request("POST", "/procs/early/stop", codec.encode(StopRequest()))
    exited = _exited(rx, "early")
    assert exited.exit.signal == signal.SIGTERM


def test_an_idle_shim_runs_the_next_programs(agent: tuple[Agent, Receiver]) -> None:
    """A shim whose programs ended runs the next ones; each program still gets its own
    exit status, signal, environment and working directory. (A program's parent is
    its shim: $PPID names it.)"""
    a, rx = agent
    programs = [
        ("first", sh('echo "$PPID $SEEN $PWD"; exit 3', env={"SEEN": "one"}, cwd="/tmp")),
        ("second", sh('echo "$PPID ${SEEN:-unset} $PWD"; kill -TERM $$', cwd="/")),
        ("third", sh('echo "$PPID $SEEN"', env={"SEEN": "three"})),
    ]
    exits = []
    for proc_id, spec in programs:
        a.start((proc_id, spec))
        exits.append(_exited(rx, proc_id))
    shims, lines = zip(*(rx.output(p).split(b" ", 1) for p, _ in programs), strict=True)
    assert shims[0] == shims[1] == shims[2], "one idle shim should have run all three"
    assert lines == (b"one /tmp\n", b"unset /\n", b"three\n")
    assert exits[0].exit.exit_code == 3 and exits[0].exit.signal is None
    assert exits[1].exit.signal == signal.SIGTERM
    assert exits[2].exit.exit_code == 0


def test_a_dead_idle_shim_is_replaced(agent: tuple[Agent, Receiver]) -> None:
    a, rx = agent
    a.start(("before", sh("echo $PPID")))
    _exited(rx, "before")
    idle = int(rx.output("before"))
    os.kill(idle, signal.SIGKILL)  # the idle shim dies (OOM killer, a stray pkill)
    wait_for(lambda: not pid_alive(idle), 5, "the shim to die")
    a.start(("after", sh("echo $PPID; exit 4")))
    assert _exited(rx, "after").exit.exit_code == 4
    assert int(rx.output("after")) != idle


def test_a_start_batch_is_run_by_a_shim_per_share(agent: tuple[Agent, Receiver]) -> None:
    """Starts arriving together do not each get a new shim: one shim runs a share
    of the batch (a fresh agent has no idle shim, so each share forks one)."""
    a, rx = agent
    ids = [f"burst{i}" for i in range(spawner._SHARE + 10)]
    results = a.start(*((proc_id, sh("echo $PPID")) for proc_id in ids))
    assert {r.status for r in results.results} == {"accepted"}
    for proc_id in ids:
        assert _exited(rx, proc_id).exit.exit_code == 0
    shims = [int(rx.output(proc_id)) for proc_id in ids]
    assert len(set(shims[: spawner._SHARE])) == 1
    assert len(set(shims)) == 2


def test_an_exit_is_reported_while_programs_of_its_shim_run(
    agent: tuple[Agent, Receiver],
) -> None:
    """Programs sharing a shim are each reported as they end, not when all have."""
    a, rx = agent
    a.start(("slow", sh("echo $PPID; sleep 60")), ("fast", sh("echo $PPID; exit 5")))
    assert _exited(rx, "fast").exit.exit_code == 5
    wait_for(lambda: rx.output("slow"), what="the slow program's line")
    assert rx.output("slow") == rx.output("fast"), "one shim should run both"
    assert not rx.exited("slow")
    a.request("POST", "/procs/slow/stop", codec.encode(StopRequest()))
    assert _exited(rx, "slow").exit.signal == signal.SIGTERM


def test_process_directories_come_from_spares_and_go_back(
    agent: tuple[Agent, Receiver],
) -> None:
    """The agent keeps empty directories for new processes (made while starts
    pause), and an emptied process directory becomes one again."""
    a, rx = agent
    spare = a.state_dir / "spare"
    wait_for(lambda: len(os.listdir(spare)) == spares.LIMIT, 30, "the spares to be made")
    before = {os.stat(d).st_ino for d in spare.iterdir()}
    a.start(("recycled", sh("echo hi")))
    _exited(rx, "recycled")
    directory = a.state_dir / "procs" / "recycled"
    inode = os.stat(directory).st_ino
    assert inode in before, "the process directory should be a spare"
    wait_for(lambda: not directory.exists(), 5, "the directory to go")
    wait_for(lambda: len(os.listdir(spare)) == spares.LIMIT, 5, "the directory back")
    assert inode in {os.stat(d).st_ino for d in spare.iterdir()}
    blanks = sorted(spawner.BLANK + name for name in spawner.BLANKS)
    assert all(sorted(os.listdir(d)) == blanks for d in spare.iterdir())
    recycled = next(d for d in spare.iterdir() if os.stat(d).st_ino == inode)
    assert all(os.path.getsize(recycled / name) == 0 for name in blanks)
