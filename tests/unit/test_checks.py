"""The sanity checker's pure core: each check finds what it must, and nothing else."""

from __future__ import annotations

from collections.abc import Iterator

from apsis_common.states import State
from apsis_server.core.checks import (
    AgentSeen,
    Check,
    CheckSettings,
    Facts,
    Severity,
    counts,
    find,
)
from apsis_server.core.runs import Run
from apsis_server.core.schedule_types import PluginSchedule

NOW = 100_000.0
S = CheckSettings(overdue=60, late=60, late_window=3600, silent=30, failures=3)


def _run(n: int, job: str, state: State, due: float | None = None, **times: float) -> Run:
    return Run(f"r{n}", job, {}, state, schedule_time=due, times=times, message=f"m{n}")


def _checks(facts: Facts) -> list[tuple[Check, str | None]]:
    return [(f.check, f.job_id or f.agent_id) for f in find(facts, S)]


def test_nothing_wrong_finds_nothing() -> None:
    facts = Facts(
        NOW,
        next_due={"a": NOW + 10},
        unfinished=[_run(1, "a", State.SCHEDULED, NOW + 10)],
        started=[_run(2, "a", State.SUCCESS, NOW - 100, running=NOW - 99)],
        last_finished={"a": [_run(2, "a", State.SUCCESS), _run(3, "a", State.FAILURE)]},
        agents=[
            AgentSeen("local", "connected", NOW - 2, 1, [_run(4, "b", State.RUNNING, running=0)])
        ],
    )
    assert find(facts, S) == []


def test_a_job_due_with_no_run_scheduled() -> None:
    facts = Facts(
        NOW,
        next_due={"a": NOW + 10, "b": NOW + 5},
        unfinished=[_run(1, "b", State.SCHEDULED, NOW + 5), _run(2, "a", State.RUNNING, NOW - 5)],
    )
    [finding] = find(facts, S)
    assert (finding.check, finding.severity, finding.job_id) == (
        Check.NO_RUN_AHEAD,
        Severity.ERROR,
        "a",
    )
    assert finding.link == "/jobs/a" and "1970-01-02T03:46:50" in finding.message


def test_overdue_only_past_the_threshold() -> None:
    facts = Facts(
        NOW,
        unfinished=[
            _run(1, "a", State.SCHEDULED, NOW - 61),
            _run(2, "b", State.SCHEDULED, NOW - 59),
            _run(3, "c", State.WAITING, NOW - 600),  # waiting on a condition is not overdue
        ],
    )
    assert _checks(facts) == [(Check.OVERDUE, "a")]
    assert find(facts, S)[0].link == "/runs/r1"


def test_late_starts_in_the_window() -> None:
    facts = Facts(
        NOW,
        started=[
            _run(1, "a", State.SUCCESS, NOW - 200, running=NOW - 100),  # 100 s late
            _run(2, "b", State.RUNNING, NOW - 50, running=NOW - 49),  # on time
            _run(3, "c", State.SUCCESS, NOW - 9000, running=NOW - 4000),  # long ago
            _run(4, "d", State.SCHEDULED, NOW - 500),  # not started: overdue's business
        ],
    )
    [finding] = find(facts, S)
    assert (finding.check, finding.severity, finding.run_id) == (
        Check.LATE_START,
        Severity.WARNING,
        "r1",
    )
    assert "100 s after its time" in finding.message


def test_agents_silent_disconnected_and_short_of_processes() -> None:
    long_running = [_run(n, "j", State.RUNNING, running=NOW - 300) for n in (1, 2, 3)]
    just_started = [_run(9, "j", State.RUNNING, running=NOW - 5)]
    agents = [
        AgentSeen("quiet", "connected", NOW - 31, 3, long_running),
        AgentSeen("gone", "stopped", None, None, long_running[:1]),
        AgentSeen("lost", "disconnected", NOW - 100, None, []),
        AgentSeen("idle", "stopped", None, None, []),  # stopped when idle: fine
        AgentSeen("back", "connecting", None, None, long_running),  # after a restart
        AgentSeen("short", "connected", NOW - 1, 1, long_running),
        AgentSeen("new-runs", "connected", NOW - 1, 0, just_started),  # not settled yet
    ]
    assert sorted(_checks(Facts(NOW, agents=agents))) == sorted(
        [
            (Check.SILENT_AGENT, "quiet"),
            (Check.SILENT_AGENT, "gone"),
            (Check.SILENT_AGENT, "lost"),
            (Check.ORPHANED, "short"),
        ]
    )


def test_failing_jobs_need_the_last_n_all_failed() -> None:
    facts = Facts(
        NOW,
        last_finished={
            "bad": [
                _run(5, "bad", State.ERROR),
                _run(4, "bad", State.FAILURE),
                _run(3, "bad", State.FAILURE),
                _run(2, "bad", State.SUCCESS),
            ],
            "mended": [
                _run(9, "mended", State.SUCCESS),
                _run(8, "mended", State.FAILURE),
                _run(7, "mended", State.FAILURE),
                _run(6, "mended", State.FAILURE),
            ],
            "young": [_run(10, "young", State.FAILURE), _run(11, "young", State.FAILURE)],
        },
    )
    [finding] = find(facts, S)
    assert (finding.check, finding.job_id, finding.run_id) == (Check.FAILING, "bad", "r5")
    assert "last 3 runs failed" in finding.message and "m5" in finding.message


def test_errors_come_first_and_counts_cover_every_pair() -> None:
    facts = Facts(
        NOW,
        unfinished=[_run(1, "a", State.SCHEDULED, NOW - 100)],
        last_finished={"b": [_run(n, "b", State.FAILURE) for n in (4, 3, 2)]},
    )
    found = find(facts, S)
    assert [f.severity for f in found] == [Severity.ERROR, Severity.WARNING]
    table = counts(found)
    assert len(table) == len(Check) * len(Severity)
    assert table[Check.OVERDUE, Severity.ERROR] == 1
    assert table[Check.FAILING, Severity.WARNING] == 1
    assert sum(table.values()) == 2


class _Breaking:
    """A plugin schedule's rule with a bug: two times, then an exception."""

    def times(self, start: float) -> Iterator[float]:
        yield start + 10
        yield start + 20
        raise ValueError("no calendar for 2027")

    def describe(self) -> str:
        return "breaks"


def test_a_plugin_schedule_that_raises_is_a_finding_not_silence() -> None:
    """Its times end where it raised (nothing more is planned from it), and the
    checker says so with what it raised: not a job that quietly stops running."""
    schedule = PluginSchedule(type_name="acme-calendar", rule=_Breaking(), job_id="a")
    assert [d.time for d in schedule.due(NOW, ())] == [NOW + 10, NOW + 20]
    assert schedule.failure == ["times() raised ValueError: no calendar for 2027"]
    failures = {"a": f"its acme-calendar schedule {schedule.failure[0]}"}
    [finding] = find(Facts(NOW, schedule_failures=failures), S)
    assert (finding.check, finding.severity, finding.link) == (
        Check.SCHEDULE_FAILED,
        Severity.ERROR,
        "/jobs/a",
    )
    assert finding.message == (
        "job a: its acme-calendar schedule times() raised ValueError: no calendar for 2027"
    )
    # A rule giving something that is not a time is said too (the time is skipped).
    odd = PluginSchedule(type_name="odd", rule=_Odd(), job_id="b")
    assert [d.time for d in odd.due(NOW, ())] == [NOW + 1]
    assert odd.failure == ["times() gave 'soon', not a time"]


class _Odd:
    def times(self, start: float) -> Iterator[float]:
        yield "soon"  # type: ignore[misc]
        yield start + 1

    def describe(self) -> str:
        return "odd"
