"""Scheduling against the real server: catch-up after downtime, reload, identity."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.harness import running_server, wait_for


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _job(policy: str) -> str:
    return (
        "program: 'true'\n"
        "schedule: {type: interval, interval: 1}\n"
        f"catch_up: {{policy: {policy}, window: 1 hour, max: 100}}\n"
    )


def _runs(server: Any, job_id: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = server.get("/runs", params={"job_id": job_id, "limit": 1000})[
        "runs"
    ]
    return runs


def _planned_twice(state: Path) -> list[Any]:
    """Each (job, schedule time, args) planned from schedules more than once, read
    from the real SQLite file: there must be none."""
    db = sqlite3.connect(state / "apsis.db")
    try:
        return db.execute(
            "SELECT job_id, time, args, COUNT(*) FROM runs WHERE schedule_key IS NOT NULL"
            " GROUP BY job_id, time, args HAVING COUNT(*) > 1"
        ).fetchall()
    finally:
        db.close()


def test_catch_up_policies_after_downtime(tmp_path: Path) -> None:
    jobs = {"all": _job("all"), "latest": _job("latest"), "none": _job("none")}
    with running_server(tmp_path, jobs) as server:
        wait_for(lambda: any(r["state"] == "success" for r in _runs(server, "none")), 10, "a run")
        time.sleep(5.5)  # past one watermark period, so the watermark is recent
        server.kill()
        down_from = time.time()
        time.sleep(4.5)

        server.start()
        up_at = time.time()
        time.sleep(max(0.0, up_at + 2.5 - time.time()))

        def window(job_id: str) -> list[dict[str, Any]] | None:
            runs = sorted(
                (
                    r
                    for r in _runs(server, job_id)
                    if down_from + 0.5 < _ts(r["schedule_time"]) < up_at + 2
                ),
                key=lambda r: _ts(r["schedule_time"]),
            )
            return runs if all(r["state"] in ("success", "skipped") for r in runs) else None

        def check(job_id: str) -> list[str]:
            runs = wait_for(lambda: window(job_id), 10, f"{job_id} settled")
            times = [_ts(r["schedule_time"]) for r in runs]
            # Every second in the window is there exactly once: no gap, no duplicate.
            assert times == [times[0] + i for i in range(len(times))], times
            states = [r["state"] for r in runs]
            skipped = states.count("skipped")
            # Skipped runs are the oldest ones, each with the reason.
            assert states == ["skipped"] * skipped + ["success"] * (len(states) - skipped)
            assert all(r["message"] == "missed while the server was down" for r in runs[:skipped])
            return states

        none, latest, every = check("none"), check("latest"), check("all")
        assert none.count("skipped") >= 3, none
        assert latest.count("skipped") == none.count("skipped") - 1, (none, latest)
        assert every.count("skipped") == 0, every

        assert _planned_twice(server.state) == []


def test_reload_replans_scheduled_runs_and_keeps_hand_scheduled(tmp_path: Path) -> None:
    jobs = {"tick": "program: 'true'\nschedule: {type: interval, interval: 3600}\n"}
    with running_server(tmp_path, jobs) as server:
        planned = [r for r in _runs(server, "tick") if r["state"] == "scheduled"]
        assert planned and all(not r["ad_hoc"] for r in planned)
        later = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
        by_hand = server.post("/runs", {"job_id": "tick", "time": later})["run"]["run_id"]

        (server.jobs_dir / "tick.yaml").write_text(
            "program: 'true'\nschedule: {type: interval, interval: 1800}\n"
        )
        (server.jobs_dir / "new.yaml").write_text("program: 'true'\n")
        (server.jobs_dir / "broken.yaml").write_text("program: {type: nope}\n")
        answer = server.post("/jobs/reload")
        assert answer["changed"] == ["tick"] and answer["added"] == ["new"]
        assert any(e["job_id"] == "broken" for e in answer["errors"])

        after = _runs(server, "tick")
        ids = {r["run_id"] for r in after}
        assert by_hand in ids
        assert not ids & {r["run_id"] for r in planned}  # old scheduled runs withdrawn
        times = sorted(_ts(r["schedule_time"]) for r in after if not r["ad_hoc"])
        assert times and all(t % 1800 == 0 for t in times)
        assert server.get("/jobs/new")["job"]["job_id"] == "new"
        assert server.api("GET", "/jobs/broken").status_code == 422


def test_reload_of_a_changed_job_keeps_runs_handled_by_hand(tmp_path: Path) -> None:
    """Only the job's metadata changes: its scheduled runs are planned again (with
    the new labels) under the same identities, and a future run skipped by hand
    stays skipped, with no new run at its time."""
    jobs = {"tick": "program: 'true'\nschedule: {type: interval, interval: 3600}\n"}
    with running_server(tmp_path, jobs) as server:
        planned = sorted(
            (r for r in _runs(server, "tick") if r["state"] == "scheduled"),
            key=lambda r: _ts(r["schedule_time"]),
        )
        assert len(planned) >= 3
        skipped = planned[1]
        server.post(f"/runs/{skipped['run_id']}/skip")

        (server.jobs_dir / "tick.yaml").write_text(
            "program: 'true'\nschedule: {type: interval, interval: 3600}\nlabels: [nightly]\n"
        )
        answer = server.post("/jobs/reload")
        assert answer["changed"] == ["tick"], answer

        after = _runs(server, "tick")
        at_skipped = [r for r in after if r["schedule_time"] == skipped["schedule_time"]]
        assert [(r["run_id"], r["state"]) for r in at_skipped] == [(skipped["run_id"], "skipped")]
        scheduled = [r for r in after if r["state"] == "scheduled"]
        assert len(scheduled) == len(planned) - 1, (planned, after)
        assert all("nightly" in r["labels"] for r in scheduled)
        assert not {r["run_id"] for r in scheduled} & {r["run_id"] for r in planned}
        # A second reload with nothing changed changes nothing.
        assert server.post("/jobs/reload")["changed"] == []
        assert {r["run_id"] for r in _runs(server, "tick")} == {r["run_id"] for r in after}


def test_a_schedule_changed_while_the_server_is_down_plans_each_time_once(
    tmp_path: Path,
) -> None:
    """The interval goes from 2 s to 4 s while the server is down: the runs the old
    schedule planned are withdrawn at start (as a reload would), and no time gets
    a run from both schedules, whether missed during the outage or still to come."""
    job = "program: 'true'\nschedule: {type: interval, interval: %d}\ncatch_up: all\n"
    with running_server(tmp_path, {"tick": job % 2}) as server:
        wait_for(lambda: any(r["state"] == "success" for r in _runs(server, "tick")), 10, "a run")
        time.sleep(5.5)  # past one watermark period
        server.kill()
        (server.jobs_dir / "tick.yaml").write_text(job % 4)
        time.sleep(3)
        server.start()
        up_at = time.time()
        time.sleep(5)

        runs = _runs(server, "tick")
        scheduled = [r for r in runs if r["state"] == "scheduled"]
        assert scheduled and all(_ts(r["schedule_time"]) % 4 == 0 for r in scheduled), scheduled
        later = [r for r in runs if _ts(r["schedule_time"]) > up_at]
        assert later and all(_ts(r["schedule_time"]) % 4 == 0 for r in later), later
        assert _planned_twice(server.state) == []


def test_a_job_whose_file_breaks_keeps_its_last_good_definition(tmp_path: Path) -> None:
    good = "program: 'true'\nschedule: {type: interval, interval: 3600}\n"
    with running_server(tmp_path, {"tick": good}) as server:
        planned = {r["run_id"] for r in _runs(server, "tick") if r["state"] == "scheduled"}
        assert planned
        (server.jobs_dir / "tick.yaml").write_text(good + "shedule: typo\n")
        answer = server.post("/jobs/reload")
        assert answer["kept"] == ["tick"] and answer["removed"] == [], answer
        assert [e["key_path"] for e in answer["errors"]] == ["shedule"]
        scheduled = {r["run_id"] for r in _runs(server, "tick") if r["state"] == "scheduled"}
        assert scheduled == planned  # nothing withdrawn
        detail = server.get("/jobs/tick")
        assert detail["job"]["job_id"] == "tick" and detail["errors"], detail
        # Mended as it was: nothing changes; the error is gone.
        (server.jobs_dir / "tick.yaml").write_text(good)
        answer = server.post("/jobs/reload")
        assert answer["kept"] == answer["changed"] == answer["errors"] == [], answer
        assert "errors" not in server.get("/jobs/tick")
