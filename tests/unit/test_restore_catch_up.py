"""Catch-up after a long outage: past the number of missed times it lists per
schedule, the rest are not recorded one by one, but said on the oldest run that is."""

from __future__ import annotations

import time
from pathlib import Path

from apsis_common.states import State
from apsis_server.core.catchup import CatchUp, CatchUpPolicy
from apsis_server.engine.restore import restore
from apsis_server.engine.timers import WATERMARK
from apsis_server.store.base import Changes, RunFilter
from apsis_server.store.sqlite import SqliteStore
from tests.engine_kit import QuietAgents, new_engine


def test_missed_times_past_the_listing_limit_are_said_not_dropped(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "apsis.db")
    now = float(int(time.time()))
    store.write(Changes(cursors={WATERMARK: now - 10_050.5}))  # 10,050 one-second times
    job = "program: {type: no-op}\nschedule: {type: interval, interval: 1}\ncatch_up: none\n"
    engine = new_engine(store, {"j": job}, QuietAgents())
    restore(engine, CatchUp(CatchUpPolicy.NONE))
    skipped = store.query(RunFilter(job_id="j", states=(State.SKIPPED,), limit=20_000))
    assert len(skipped) == 10_000
    oldest = min(skipped, key=lambda r: r.schedule_time or 0.0)
    notes = [e.message for e in store.log(oldest.run_id)]
    said = [m for m in notes if "older times missed while the server was down" in m]
    assert said and 50 <= int(said[0].split()[0]) <= 52, notes  # the clock moves on
    store.close()
