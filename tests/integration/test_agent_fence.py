"""Fencing on a real agent: a request carrying an older leader epoch than the newest
the agent has seen changes nothing (409), across restarts; `PUT /leader` moves the
webhook to the new leader."""

from __future__ import annotations

from pathlib import Path

from apsis_common import codec
from apsis_common.protocol import LeaderNotice, StartBatch, StartProc, StopRequest
from tests.agent_harness import Agent, Receiver, bootstrap, kill_daemon, running_agent, sh
from tests.harness import wait_for


def start(agent: Agent, proc_id: str, query: str) -> int:
    batch = StartBatch((StartProc(proc_id, sh("sleep 30")),))
    return agent.request("POST", f"/procs{query}", codec.encode(batch)).status_code


def started(agent: Agent, proc_id: str) -> bool:
    return agent.request("GET", f"/procs/{proc_id}").status_code == 200


def test_an_older_epoch_changes_nothing(tmp_path: Path) -> None:
    with running_agent(tmp_path) as (agent, receiver):
        # The only server of a SQLite install sends no epoch: it passes.
        assert start(agent, "p0", "") == 200
        assert start(agent, "p5", "?leader_epoch=5") == 200
        for query, status in [
            ("?leader_epoch=4", 409),  # deposed
            ("?leader_epoch=-1", 409),  # standing by
            ("?leader_epoch=x", 400),
            ("?leader_epoch=6&leader_epoch=4", 400),
        ]:
            response = agent.request(
                "POST", f"/procs{query}", codec.encode(StartBatch((StartProc("p4", sh("")),)))
            )
            assert response.status_code == status, (query, response.text)
            assert not started(agent, "p4")
        refused = agent.request("POST", "/procs?leader_epoch=4", b"")
        assert "epoch 5" in codec.decode(dict, refused.content)["error"]
        # A stop from the deposed leader does not stop; the leader's does.
        stop = codec.encode(StopRequest(grace=1))
        assert agent.request("POST", "/procs/p5/stop?leader_epoch=3", stop).status_code == 409
        assert agent.request("GET", "/procs/p5").status_code == 200
        assert receiver.exited("p5") is None
        assert agent.request("POST", "/procs/p5/stop?leader_epoch=5", stop).status_code == 200
        wait_for(lambda: receiver.exited("p5") is not None, 10, "p5 to stop")
        # Reads are not fenced: a standby may look.
        assert agent.request("GET", "/procs").status_code == 200


def test_the_newest_epoch_survives_a_restart(tmp_path: Path) -> None:
    with running_agent(tmp_path) as (agent, receiver):
        assert start(agent, "a", "?leader_epoch=7") == 200
        kill_daemon(agent.state_dir)
        again = bootstrap(agent.state_dir, receiver, agent.ca, agent.key, "--heartbeat", "0.5")
        try:
            assert start(again, "b", "?leader_epoch=6") == 409
            assert start(again, "c", "?leader_epoch=7") == 200
            assert (agent.state_dir / "leader_epoch").read_text().strip() == "7"
        finally:
            again.close()


def test_a_new_leader_takes_the_events(tmp_path: Path) -> None:
    with running_agent(tmp_path) as (agent, old):
        assert start(agent, "before", "?leader_epoch=1") == 200
        wait_for(lambda: old.events("before"), 10, "the old leader to hear of it")
        with Receiver(old.keys) as new:
            # Servers sharing a database share what each agent's events were acked to.
            new.state.acked = old.state.acked
            notice = codec.encode(LeaderNotice("ftp://elsewhere/"))
            assert agent.request("PUT", "/leader?leader_epoch=2", notice).status_code == 400
            notice = codec.encode(LeaderNotice(new.url))
            # A deposed leader cannot take the events back.
            assert agent.request("PUT", "/leader?leader_epoch=2", notice).status_code == 200
            back = codec.encode(LeaderNotice(old.url))
            assert agent.request("PUT", "/leader?leader_epoch=1", back).status_code == 409
            assert start(agent, "after", "?leader_epoch=2") == 200
            wait_for(lambda: new.events("after"), 10, "the new leader to hear of it")
            assert not old.events("after")
        settings = (agent.state_dir / "agent.json").read_text()
        assert new.url in settings  # and so after a restart too


def test_a_new_leader_is_followed_while_the_disk_refuses_its_address(tmp_path: Path) -> None:
    """The agent's settings cannot be written (a full disk: chaos campaign, a 500
    and a traceback for each notice): the new leader is followed all the same, and
    its address reaches the file with its next notice."""
    with running_agent(tmp_path) as (agent, old):
        settings_file = agent.state_dir / "agent.json"
        saved = settings_file.read_text()
        settings_file.unlink()
        settings_file.mkdir()  # in the file's way: writing it fails
        with Receiver(old.keys) as new:
            new.state.acked = old.state.acked
            notice = codec.encode(LeaderNotice(new.url))
            assert agent.request("PUT", "/leader?leader_epoch=2", notice).status_code == 200
            assert start(agent, "after", "?leader_epoch=2") == 200
            wait_for(lambda: new.events("after"), 10, "the new leader to hear of it")
            assert not old.events("after")
            settings_file.rmdir()
            settings_file.write_text(saved)
            assert agent.request("PUT", "/leader?leader_epoch=2", notice).status_code == 200
            assert new.url in settings_file.read_text()  # and so after a restart too
