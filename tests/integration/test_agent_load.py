"""Load: many starts through the shim path, large output with bounded memory, many sleepers."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from apsis_common.protocol import ProcExited, ProcOutput, ProcSpec
from tests.agent_harness import Agent, running_agent, sh
from tests.harness import wait_for


def _rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _start_in_batches(a: Agent, ids: list[str], spec: ProcSpec, size: int = 100) -> None:
    for i in range(0, len(ids), size):
        results = a.start(*[(proc_id, spec) for proc_id in ids[i : i + size]])
        assert {r.status for r in results.results} == {"accepted"}


def test_many_short_runs(tmp_path: Path) -> None:
    with running_agent(tmp_path) as (a, rx):
        ids = [f"t{i}" for i in range(300)]
        began = time.monotonic()
        _start_in_batches(a, ids, ProcSpec(argv=("true",)))
        wait_for(lambda: len(rx.events(kind=ProcExited)) == len(ids), 30, "every exit")
        rate = len(ids) / (time.monotonic() - began)
        print(f"\n{len(ids)} runs of true through the agent: {rate:.0f}/s")
        seqs = rx.seqs()
        assert seqs == list(range(1, len(seqs) + 1))
        assert all(e.exit.exit_code == 0 for e in rx.events(kind=ProcExited))


@pytest.mark.slow
def test_large_output_is_exact_and_memory_bounded(tmp_path: Path) -> None:
    size = 100 * 1024 * 1024
    with running_agent(tmp_path) as (a, rx):
        baseline = _rss_peak_kib(a.pid)
        script = f"head -c {size} /dev/urandom | tee {tmp_path}/expected"
        a.start(("big", sh(script, output_max=2 * size)))
        began = time.monotonic()
        exited = wait_for(lambda: rx.exited("big"), 120, "the big output")
        seconds = time.monotonic() - began
        digest, length = hashlib.sha256(), 0
        for event in rx.events("big", ProcOutput):
            assert event.offset == length
            digest.update(event.data)
            length += len(event.data)
        expected = (tmp_path / "expected").read_bytes()
        assert length == exited.output_length == size == len(expected)
        assert digest.hexdigest() == hashlib.sha256(expected).hexdigest()
        growth = (_rss_peak_kib(a.pid) - baseline) / 1024
        print(f"\n100 MB output: {size / seconds / 1e6:.0f} MB/s, agent RSS peak +{growth:.0f} MB")
        assert growth <= 64


@pytest.mark.slow
def test_thousand_concurrent_sleeps(tmp_path: Path) -> None:
    with running_agent(tmp_path) as (a, rx):
        fds_before = _fds(a.pid)
        ids = [f"s{i}" for i in range(1000)]
        _start_in_batches(a, ids, sh("sleep 5"), size=250)
        wait_for(lambda: len(rx.events(kind=ProcExited)) == len(ids), 60, "every exit")
        assert all(e.exit.exit_code == 0 for e in rx.events(kind=ProcExited))
        rss = _rss_peak_kib(a.pid) / 1024
        print(f"\n1000 concurrent sleeps: agent RSS peak {rss:.0f} MB")
        assert rss <= 200
        assert _fds(a.pid) <= fds_before + 2
