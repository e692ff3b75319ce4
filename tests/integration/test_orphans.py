"""The agent's orphan policy: processes a run leaves behind (a background child, a
`setsid` escapee) are SIGKILLed so long after its program ended, with
`--kill-orphans-after`; without it they run on. Needs cgroups."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from apsis_agent import cgroups
from tests.agent_harness import running_agent, sh
from tests.harness import wait_for

LEAVE = "sleep 300 & echo $!; setsid sleep 301 & echo $!; exit 0"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _skip_without_cgroups(tmp_path: Path) -> None:
    layout, why = cgroups.probe(tmp_path / "probe", (os.getpid(),))
    if layout is None:
        pytest.skip(f"this host lets no agent make cgroups: {why}")
    cgroups.release(layout)


@pytest.mark.parametrize("policy", ["kill", "keep"])
def test_processes_left_behind(tmp_path: Path, policy: str) -> None:
    _skip_without_cgroups(tmp_path)
    extra = ("--kill-orphans-after", "1") if policy == "kill" else ()
    with running_agent(tmp_path, False, *extra) as (agent, rx):
        agent.start(("leaves", sh(LEAVE)))
        exited = wait_for(lambda: rx.exited("leaves"), 10, "the program to end")
        assert exited.exit.exit_code == 0
        left = [int(w) for w in rx.output("leaves").split()]
        assert len(left) == 2 and all(map(_alive, left))
        try:
            if policy == "kill":  # the keeper looks every 5 s: gone within ~7 s
                wait_for(lambda: not any(map(_alive, left)), 15, "the orphans killed")
                log = (tmp_path / "agent" / "agent.log").read_text()
                assert "leaves: killed 2 processes left behind 1 s after its program ended" in log
            else:
                time.sleep(7)
                assert all(map(_alive, left)), "nothing kills them without the policy"
        finally:
            for pid in left:
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
