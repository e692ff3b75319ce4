"""The PostgreSQL store beyond the shared contract: migrations from every version,
atomic writes, fencing, the lease and the change notifications, on a real cluster;
and the config key that selects it."""

from __future__ import annotations

import asyncio
import inspect
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from apsis_common.errors import Unavailable
from apsis_common.states import State
from apsis_server.config import parse_config
from apsis_server.core.fields import Invalid
from apsis_server.core.runs import LogEntry, Run
from apsis_server.store.base import Changes, Chunk
from apsis_server.store.lease import Fenced, PostgresLease, Role, RunChanges
from apsis_server.store.postgres import MIGRATIONS, SCHEMA_VERSION, PostgresStore, archive_schema
from tests.harness import run_async, wait_for
from tests.postgres import Cluster
from tests.unit import test_store_contract as contract

# Every contract test, by name, to run again on a store migrated from an old version.
CONTRACT = {
    name: test
    for name, test in vars(contract).items()
    if name.startswith("test_") and "store" in inspect.signature(test).parameters
}


def _run(n: int, job: str = "a", state: State = State.SUCCESS) -> Run:
    return Run(f"r{n}", job, {}, state, schedule_time=float(n), times={"scheduled": float(n)})


def _twin(n: int) -> Run:
    """Runs planned for one schedule time: two cannot be stored at once."""
    return Run(f"r{n}", "a", {}, State.SCHEDULED, schedule_time=1.0, schedule_key="k")


@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresStore]:
    s = PostgresStore(postgres_url)
    yield s
    s.close()


@pytest.fixture
def lease(store: PostgresStore, postgres_url: str) -> Iterator[PostgresLease]:
    """A lease on the store's database (the store made its tables)."""
    held = PostgresLease(postgres_url)
    yield held
    held.close()


def _at_version(url: str, version: int) -> None:
    """Make the database as a server of schema `version` left it, with one old run."""
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("CREATE TABLE schema_version (version integer NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (%s)", (version,))
        for migration in MIGRATIONS[:version]:
            db.execute(migration)
        if version >= 1:
            db.execute(
                "INSERT INTO runs VALUES (1, 'old/job', '{}', 'success', 5.0, NULL, '{}', %s)",
                (
                    '{"schedule_time": 5.0, "times": {"success": 6.0}, "message": "exited 0",'
                    ' "ad_hoc": false, "rerun_of": null, "stop_time": null, "program": null,'
                    ' "proc_id": null, "agent_id": null, "attempt": 1}',
                ),
            )
            db.execute(
                "INSERT INTO run_output VALUES (1, 0, 6, 'zlib', %s)", (zlib.compress(b"hello\n"),)
            )


@pytest.mark.parametrize("version", range(SCHEMA_VERSION))
def test_migrates_forward_from(version: int, postgres_url: str) -> None:
    _at_version(postgres_url, version)
    store = PostgresStore(postgres_url)
    assert store.schema_version() == SCHEMA_VERSION
    if version >= 1:
        run = store.get("r1")
        assert run is not None and run.job_id == "old/job" and run.retry == 0
        assert store.output("r1") == b"hello\n"
    store.write(Changes(output=[Chunk("r2", 0, b"new\n"), Chunk("r3", 0, bytes(range(256)) * 64)]))
    assert store.output("r2") == b"new\n"
    assert store.output("r3") == bytes(range(256)) * 64
    store.close()


@pytest.mark.parametrize("check", sorted(CONTRACT))
@pytest.mark.parametrize("version", range(SCHEMA_VERSION))
def test_contract_holds_after_migrating_from(
    version: int, check: str, postgres: Cluster, tmp_path: Path
) -> None:
    url = postgres.database("m")
    try:
        with psycopg.connect(url, autocommit=True) as db:
            db.execute("CREATE TABLE schema_version (version integer NOT NULL)")
            db.execute("INSERT INTO schema_version VALUES (%s)", (version,))
            for migration in MIGRATIONS[:version]:
                db.execute(migration)
        store = PostgresStore(url)
        test: Callable[..., None] = CONTRACT[check]
        wanted = inspect.signature(test).parameters
        test(store, tmp_path) if "tmp_path" in wanted else test(store)
        store.close()
    finally:
        postgres.drop(url)


def test_newer_database_is_refused(postgres_url: str) -> None:
    PostgresStore(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(RuntimeError, match="newer"):
        PostgresStore(postgres_url)


def test_servers_starting_at_once_migrate_once(postgres_url: str) -> None:
    stores: list[PostgresStore] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        barrier.wait()
        try:
            stores.append(PostgresStore(postgres_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(stores) == 4
    assert {s.schema_version() for s in stores} == {SCHEMA_VERSION}
    for s in stores:
        s.close()


def test_survives_reopen(store: PostgresStore, postgres_url: str) -> None:
    store.write(Changes(runs={"r5": _run(5)}, output=[Chunk("r5", 0, b"x")], meta={"r5": {"a": 1}}))
    store.close()
    again = PostgresStore(postgres_url)
    assert again.max_run_number() == 5 and again.output("r5") == b"x"
    assert again.meta("r5") == {"a": 1}
    again.close()


def test_a_refused_batch_writes_nothing(store: PostgresStore) -> None:
    """Two runs with one identity break a unique index: the whole batch is refused."""
    store.write(Changes(runs={"r1": _twin(1)}))
    with pytest.raises(Unavailable):
        store.write(
            Changes(
                runs={"r2": _twin(2), "r3": _run(3)},
                log=[LogEntry("r3", 1.0, "planned")],
                output=[Chunk("r3", 0, b"x")],
                acks={"local": 3},
            )
        )
    assert store.get("r3") is None and store.log("r3") == [] and store.output("r3") == b""
    assert store.ack("local") == 0
    store.write(Changes(runs={"r3": _run(3)}))  # the store is writable again
    assert store.max_run_number() == 3


def test_a_lost_connection_is_unavailable_then_made_again(
    store: PostgresStore, postgres: Cluster, postgres_url: str
) -> None:
    with postgres.admin() as db:
        db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (postgres_url.rsplit("/", 1)[1],),
        )
    with pytest.raises(Unavailable):
        store.write(Changes(runs={"r1": _run(1)}))
    store.write(Changes(runs={"r1": _run(1)}))
    assert store.get("r1") == _run(1)


def test_text_with_nul_is_stored_without_it(store: PostgresStore) -> None:
    """PostgreSQL text holds no NUL: it becomes U+FFFD rather than wedging every write."""
    run = Run("r1", "a", {}, State.ERROR, labels=("x\x00y",), message="bad\x00")
    store.write(
        Changes(runs={"r1": run}, log=[LogEntry("r1", 1.0, "a\x00b")], meta={"r1": {"m": "\x00"}})
    )
    assert store.log("r1")[0].message == "a\ufffdb"
    assert store.get("r1") == Run(
        "r1", "a", {}, State.ERROR, labels=("x\ufffdy",), message="bad\x00"
    )
    assert store.meta("r1") == {"m": "\x00"}


def test_archive_schema_names() -> None:
    assert archive_schema(Path("state/archive.db")) == "archive"
    assert archive_schema(Path("/x/Old-Runs.db")) == "archive_old_runs"
    assert archive_schema(Path("archive-2024.sqlite")) == "archive_2024"


def test_the_archive_is_a_schema_of_the_database(store: PostgresStore, postgres_url: str) -> None:
    store.write(
        Changes(
            runs={"r1": _run(1)},
            log=[LogEntry("r1", 1.0, "done")],
            meta={"r1": {"pid": 5}},
            output=[Chunk("r1", 0, b"hello")],
        )
    )
    archive = store.archiver(Path("old.db"))
    assert archive.move([1]) == 1
    archive.close()
    with psycopg.connect(postgres_url) as db:
        counts = [
            db.execute(f"SELECT count(*) FROM archive_old.{t}").fetchone()
            for t in ("runs", "run_log", "run_meta", "run_output")
        ]
    assert counts == [(1,)] * 4
    assert store.get("r1") is None


# The lease.


def test_acquire_renew_expire_and_epochs(lease: PostgresLease, postgres_url: str) -> None:
    other = PostgresLease(postgres_url)
    try:
        assert lease.current() is None
        a = lease.acquire("a", "https://a", ttl=30)
        assert a is not None and a.epoch == 1
        assert other.acquire("b", "https://b", ttl=30) is None
        leader = other.current()
        assert leader is not None and (leader.holder, leader.url, leader.epoch) == (
            "a",
            "https://a",
            1,
        )
        renewed = lease.renew("a", a.epoch, ttl=30)
        assert renewed is not None and renewed >= a.deadline
        assert other.renew("b", a.epoch) is None  # not b's
        lease.release("a", a.epoch)
        assert lease.current() is None
        assert lease.renew("a", a.epoch) is None  # released is over
        b = other.acquire("b", "https://b", ttl=0.2)
        assert b is not None and b.epoch == 2
        wait_for(lambda: other.current() is None, 5, "b's lease to expire")
        assert other.renew("b", b.epoch) is None  # expired is over, taken or not
        again = other.acquire("b", "https://b", ttl=30)
        assert again is not None and again.epoch == 3
        # Acquiring again while holding is a new holding: the old epoch is fenced.
        restarted = other.acquire("b", "https://b", ttl=30)
        assert restarted is not None and restarted.epoch == 4
        assert other.renew("b", again.epoch) is None
    finally:
        other.close()


def _race(rivals: list[PostgresLease]) -> list[tuple[str, int]]:
    """Every rival acquires at once: (holder, epoch) of those that got the lease."""
    barrier = threading.Barrier(len(rivals))
    won: list[tuple[str, int]] = []

    def take(i: int) -> None:
        barrier.wait()
        got = rivals[i].acquire(f"s{i}", f"https://s{i}", ttl=30)
        if got is not None:
            won.append((f"s{i}", got.epoch))

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(rivals))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won


def test_concurrent_acquires_one_wins(lease: PostgresLease, postgres_url: str) -> None:
    rivals = [PostgresLease(postgres_url) for _ in range(2)]
    epochs: list[int] = []
    try:
        for _ in range(10):
            won = _race(rivals)
            assert len(won) == 1
            holder, epoch = won[0]
            epochs.append(epoch)
            lease.release(holder, epoch)
    finally:
        for r in rivals:
            r.close()
    assert epochs == list(range(1, 11))


def test_servers_report_themselves(lease: PostgresLease) -> None:
    lease.heartbeat("s1", "https://s1", Role.LEADER, 4)
    lease.heartbeat("s2", "https://s2", Role.STANDBY, None)
    lease.heartbeat("s1", "https://s1:8443", Role.STANDBY, None)
    seen = lease.servers()
    assert [(s.server_id, s.url, s.role, s.epoch) for s in seen] == [
        ("s1", "https://s1:8443", Role.STANDBY, None),
        ("s2", "https://s2", Role.STANDBY, None),
    ]
    assert len(lease.servers(seen_within=60)) == 2


# Fencing.


def test_a_stale_epoch_writes_nothing(lease: PostgresLease, postgres_url: str) -> None:
    held = lease.acquire("a", "https://a", ttl=30)
    assert held is not None
    epoch: list[int | None] = [held.epoch]
    fenced = PostgresStore(postgres_url, fence=lambda: epoch[0])
    try:
        fenced.write(Changes(runs={"r1": _run(1, state=State.RUNNING)}, acks={"x": 1}))
        lease.release("a", held.epoch)
        taken = lease.acquire("b", "https://b", ttl=30)
        assert taken is not None and taken.epoch > held.epoch
        with pytest.raises(Fenced):
            fenced.write(
                Changes(
                    runs={"r1": _run(1), "r2": _run(2)},
                    log=[LogEntry("r1", 1.0, "done")],
                    meta={"r1": {"a": 1}},
                    output=[Chunk("r1", 0, b"x")],
                    acks={"x": 2},
                )
            )
        assert fenced.get("r1") == _run(1, state=State.RUNNING) and fenced.get("r2") is None
        assert fenced.log("r1") == [] and fenced.meta("r1") == {} and fenced.output("r1") == b""
        assert fenced.ack("x") == 1
        archive = fenced.archiver(Path("archive.db"))
        with pytest.raises(Fenced):
            archive.move([1])
        epoch[0] = taken.epoch  # the current epoch writes
        fenced.write(Changes(runs={"r1": _run(1)}))
        assert fenced.get("r1") == _run(1)
        assert archive.move([1]) == 1
        epoch[0] = None  # no epoch: unchecked, as a single server writes
        fenced.write(Changes(runs={"r2": _run(2)}))
    finally:
        fenced.close()


def test_an_expired_lease_writes_nothing(lease: PostgresLease, postgres_url: str) -> None:
    """Even when nobody has taken it yet."""
    held = lease.acquire("a", "https://a", ttl=0.2)
    assert held is not None
    fenced = PostgresStore(postgres_url, fence=lambda: held.epoch)
    try:
        wait_for(lambda: lease.current() is None, 5, "the lease to expire")
        with pytest.raises(Fenced):
            fenced.write(Changes(runs={"r1": _run(1)}))
        assert fenced.get("r1") is None
    finally:
        fenced.close()


def test_a_takeover_waits_for_a_checked_write(lease: PostgresLease, postgres_url: str) -> None:
    """A write that passed the fence holds the lease row until it commits: a
    takeover in between waits for it rather than overlap it."""
    held = lease.acquire("a", "https://a", ttl=0.5)
    assert held is not None
    rival = PostgresLease(postgres_url, lock_timeout=0.2)  # gives up soon when held
    try:
        with psycopg.connect(postgres_url, autocommit=True) as writer:
            with writer.transaction():
                writer.execute("SELECT apsis_fence(%s)", (held.epoch,))
                wait_for(lambda: lease.current() is None, 5, "the lease to expire")
                # Past the deadline, but the checked write is still open: held.
                assert rival.acquire("b", "https://b", ttl=30) is None
            taken = rival.acquire("b", "https://b", ttl=30)
            assert taken is not None and taken.epoch == held.epoch + 1
    finally:
        rival.close()


# Change notifications.


def test_standbys_hear_of_every_committed_write(store: PostgresStore, postgres_url: str) -> None:
    async def follow() -> list[list[str]]:
        heard: list[list[str]] = []
        async with RunChanges(postgres_url) as changes:
            store.write(Changes(runs={"r1": _run(1), "r12": _run(12)}))
            store.write(Changes(output=[Chunk("r7", 0, b"x")], log=[LogEntry("r3", 1.0, "m")]))
            with pytest.raises(Unavailable):  # refused: no notification
                store.write(Changes(runs={"r4": _twin(4), "r5": _twin(5)}))
            many = {f"r{n}": _run(n) for n in range(1000, 3000)}
            store.write(Changes(runs=many))
            async with asyncio.timeout(10):
                async for run_ids in changes:
                    heard.append(run_ids)
                    if sum(map(len, heard)) >= 4 + 2000:
                        break
        return heard

    heard = run_async(follow)
    assert heard[:2] == [["r1", "r12"], ["r3", "r7"]]
    assert [r for batch in heard[2:] for r in batch] == [f"r{n}" for n in range(1000, 3000)]
    assert len(heard) > 3  # a big write is told in several notifications


# The config.


@pytest.mark.parametrize(
    ("section", "url"),
    [
        (None, None),
        ({"url": "postgresql://apsis@db:5432/apsis"}, "postgresql://apsis@db:5432/apsis"),
        ({"url": "postgres://db/apsis?sslmode=require"}, "postgres://db/apsis?sslmode=require"),
    ],
)
def test_the_config_names_the_store(section: dict[str, str] | None, url: str | None) -> None:
    config = parse_config({} if section is None else {"store": section}, Path("/srv"))
    assert config.store_url == url


@pytest.mark.parametrize("section", [{"url": "mysql://db/apsis"}, {"uri": "postgresql://db"}])
def test_the_config_refuses_another_store(section: dict[str, str]) -> None:
    with pytest.raises(Invalid, match=r"store\.ur"):
        parse_config({"store": section}, Path("/srv"))
