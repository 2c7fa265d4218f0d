"""The state file: rate usage survives restarts and kills; bad files never stop the agent."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.ratebudget import DEFAULT_LIMITS, MARGIN_SECONDS, RateBudget
from agent.statefile import (
    PRUNE_EVERY_SECONDS,
    RETENTION_SECONDS,
    StateFile,
    StateFileError,
    StateFileInUse,
)


def rows_in(path: Path, table: str = "rate_calls") -> int:
    with sqlite3.connect(path) as conn:
        count: int = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        return count


# -- restarts ----------------------------------------------------------------------------------


async def test_restart_keeps_the_days_count(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "state.db"
    clock = FakeClock()
    with StateFile(path, clock) as store:
        budget = RateBudget(DEFAULT_LIMITS, 0.1, clock, store, owner="solo")
        for _ in range(7):
            await budget.acquire("msp")
            await clock.advance(1800)  # spread over three and a half hours
    await clock.advance(60)

    with StateFile(path, clock) as store:
        again = RateBudget(DEFAULT_LIMITS, 0.1, clock, store, owner="solo")
        calls = again.calls("msp")
    assert calls["1d"] == 7
    assert calls["1h"] == 1  # the last call, 1860 s ago; the one before is 3660 s old
    assert again.credentials() == ["msp"]


async def test_restart_does_not_burst_past_the_minute_allowance(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    clock = FakeClock(start=1_700_000_000.4)
    limits = {"1m": 100}
    with StateFile(path, clock) as store:
        budget = RateBudget(limits, 0.1, clock, store, owner="solo")
        for _ in range(10):  # the whole minute allowance
            await budget.acquire("msp")
    await clock.advance(5)

    with StateFile(path, clock) as store:
        again = RateBudget(limits, 0.1, clock, store, owner="solo")
        waiter = asyncio.create_task(again.acquire("msp"))
        await clock.advance(60 + MARGIN_SECONDS - 5 - 0.01)
        assert not waiter.done(), "the restarted agent remembers the minute is used up"
        await clock.advance(1.0 + 0.6)  # + the per-second rounding of the file + one bucket
        assert waiter.done()


KILLED_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from agent.clock import SystemClock
    from agent.ratebudget import RateBudget
    from agent.statefile import StateFile

    async def main() -> None:
        store = StateFile(sys.argv[1])
        limits = {"1s": 10_000_000, "1d": 100_000_000}
        budget = RateBudget(limits, 1.0, SystemClock(), store, owner="killed")
        made = 0
        while True:
            await budget.acquire("msp")
            made += 1
            print(made, flush=True)

    asyncio.run(main())
    """
)


def test_sigkill_while_recording_loses_no_admitted_call(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert child.stdout is not None
    seen = 0
    for line in child.stdout:
        seen = int(line)
        if seen >= 300:
            break
    child.send_signal(signal.SIGKILL)
    # Read the rest through the same buffered reader: communicate() would read the pipe's fd
    # directly and miss lines the loop above had already buffered.
    rest = child.stdout.read()
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    printed = max([seen, *(int(n) for n in rest.split())])

    with StateFile(path) as store:
        persisted = sum(n for _, _, n in store.load_calls("killed", since=0))
    # every call reported as admitted is on disk; at most the one being printed is extra
    assert printed <= persisted <= printed + 1


# -- bad files ---------------------------------------------------------------------------------


def test_corrupt_file_is_set_aside_with_a_warning_and_a_fresh_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    garbage = b"this is not sqlite\x00\xff" * 500
    path.write_bytes(garbage)
    caplog.set_level(logging.WARNING, logger="agent.statefile")

    with StateFile(path, FakeClock()) as store:
        store.record_call("solo", "msp", 1_700_000_000.0)
        assert store.load_calls("solo", since=0) == [("msp", 1_700_000_000, 1)]
        assert not store.in_memory
        (aside,) = store.set_aside

    assert aside.name == "state.db.corrupt-20231114T221320Z"
    assert aside.read_bytes() == garbage
    warning = next(r.getMessage() for r in caplog.records if "unusable" in r.getMessage())
    assert str(path) in warning
    assert "not a database" in warning


def test_locked_file_is_set_aside_after_the_busy_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    with StateFile(path) as store:
        store.record_call("solo", "msp", 1_700_000_000.0)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    caplog.set_level(logging.WARNING, logger="agent.statefile")
    try:
        started = time.monotonic()
        with StateFile(path, FakeClock(), busy_timeout=0.2) as store:
            waited = time.monotonic() - started
            assert store.load_calls("solo", since=0) == [], "a fresh file"
            store.record_call("solo", "msp", 1_700_000_100.0)
            assert store.load_calls("solo", since=0) == [("msp", 1_700_000_100, 1)]
            (aside,) = store.set_aside
    finally:
        holder.close()
    assert waited >= 0.2, "the busy timeout is honoured before giving up"
    warning = next(r.getMessage() for r in caplog.records if "unusable" in r.getMessage())
    assert str(path) in warning
    assert "locked" in warning
    assert rows_in(aside) == 1, "the old ledger is kept aside, intact"


def test_missing_file_warns_and_its_directory_is_created(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "a" / "b" / "state.db"
    caplog.set_level(logging.WARNING, logger="agent.statefile")
    with StateFile(path) as store:
        assert store.path == str(path)
    assert path.exists()
    assert any(
        str(path) in r.getMessage() and "does not exist" in r.getMessage() for r in caplog.records
    )


def test_unusable_location_falls_back_to_memory_instead_of_crashing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with StateFile(blocker / "state.db") as store:
        assert store.in_memory
        store.record_call("solo", "msp", 10.0)
        assert store.load_calls("solo", since=0) == [("msp", 10, 1)]
    assert any("nothing will survive a restart" in r.getMessage() for r in caplog.records)


class BrokenConnection:
    """Stands in for a connection whose file turned out to be corrupt at run time."""

    def __init__(self, real: sqlite3.Connection) -> None:
        self.real = real

    def execute(self, *args: Any) -> Any:
        raise sqlite3.DatabaseError("database disk image is malformed")

    def close(self) -> None:
        self.real.close()


def test_corruption_found_at_run_time_starts_a_fresh_file_with_every_table(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    with StateFile(path, FakeClock()) as store:
        store.ensure_schema("CREATE TABLE IF NOT EXISTS evidence (k TEXT PRIMARY KEY, v TEXT)")
        store._conn = BrokenConnection(store._conn)  # type: ignore[assignment]
        with pytest.raises(StateFileError, match="malformed"):
            store.execute("SELECT 1")
        assert len(store.set_aside) == 1
        store.execute("INSERT INTO evidence VALUES ('a', 'b')")
        store.record_call("solo", "msp", 1.0)
        assert store.execute("SELECT k, v FROM evidence") == [("a", "b")]


# -- sharing and bounds ------------------------------------------------------------------------


async def test_two_owners_share_one_file_without_mixing_counts(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    clock = FakeClock()
    with StateFile(path, clock) as first, StateFile(path, clock) as second:
        shard0 = RateBudget(DEFAULT_LIMITS, 0.05, clock, first, owner="shard-0-of-2")
        shard1 = RateBudget(DEFAULT_LIMITS, 0.05, clock, second, owner="shard-1-of-2")
        for _ in range(3):
            await shard0.acquire("msp")
            await clock.advance(2)
        for _ in range(5):
            await shard1.acquire("msp")
            await clock.advance(2)

    with StateFile(path, clock) as store:
        assert (
            RateBudget(DEFAULT_LIMITS, 0.05, clock, store, "shard-0-of-2").calls("msp")["1d"] == 3
        )
        assert (
            RateBudget(DEFAULT_LIMITS, 0.05, clock, store, "shard-1-of-2").calls("msp")["1d"] == 5
        )


def test_rate_table_stays_bounded_over_days_of_calls(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    clock = FakeClock()
    start = clock.time()
    with StateFile(path, clock) as store:
        for i in range(0, int(2.5 * 86400), 10):  # a call every 10 s for two and a half days
            store.record_call("solo", "msp", start + i + 0.5)
    rows = rows_in(path)
    assert rows >= 86400 / 10, "keeps at least the last day"
    assert rows <= (RETENTION_SECONDS + PRUNE_EVERY_SECONDS) / 10 + 1


def test_calls_in_one_second_share_a_row_and_round_up(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with StateFile(path) as store:
        for ts in (100.2, 100.7, 101.0):
            store.record_call("solo", "msp", ts)
        assert store.load_calls("solo", since=0) == [("msp", 101, 3)]
        assert store.load_calls("solo", since=101) == []


def test_a_failing_write_is_logged_once_and_never_raised_from_record_call(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    holder = sqlite3.connect(path, isolation_level=None)
    with StateFile(path, FakeClock(), busy_timeout=0.05) as store:
        holder.execute("BEGIN EXCLUSIVE")  # another process hogs the write lock
        caplog.set_level(logging.WARNING, logger="agent.statefile")
        try:
            for ts in range(5):
                store.record_call("solo", "msp", float(ts))
            with pytest.raises(StateFileError, match="locked"):
                store.execute("INSERT INTO rate_calls VALUES ('solo', 'msp', 9, 1)")
        finally:
            holder.close()
        assert not store.set_aside, "a busy file is not corrupt: it stays in place"
        store.ensure_schema("CREATE TABLE IF NOT EXISTS later (k TEXT)")
        assert store.execute("SELECT count(*) FROM later") == [(0,)]
    logged = [r.getMessage() for r in caplog.records if "not persisted" in r.getMessage()]
    assert len(logged) == 1
    assert str(path) in logged[0]


def test_a_failed_transaction_leaves_nothing_behind(tmp_path: Path) -> None:
    with StateFile(tmp_path / "state.db") as store:
        store.ensure_schema("CREATE TABLE IF NOT EXISTS evidence (k TEXT PRIMARY KEY, v TEXT)")
        with pytest.raises(RuntimeError), store.transaction() as conn:
            conn.execute("INSERT INTO evidence VALUES ('a', 'b')")
            raise RuntimeError("boom")
        with store.transaction() as conn:
            conn.execute("INSERT INTO evidence VALUES ('c', 'd')")
            conn.execute("INSERT INTO evidence VALUES ('e', 'f')")
        assert store.execute("SELECT k FROM evidence ORDER BY k") == [("c",), ("e",)]


def test_the_file_is_in_wal_mode_with_normal_sync(tmp_path: Path) -> None:
    with StateFile(tmp_path / "state.db") as store:
        assert store.execute("PRAGMA journal_mode") == [("wal",)]
        assert store.execute("PRAGMA synchronous") == [(1,)]  # NORMAL
        assert store.execute("PRAGMA user_version") == [(1,)]


# -- lost, replaced or shared while running ------------------------------------------------------


def unlink_with_companions(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def calls_a_minute_apart(budget: RateBudget, clock: FakeClock, calls: int) -> None:
    for _ in range(calls):
        await asyncio.wait_for(budget.acquire("msp"), 1)
        await clock.advance(61)


async def test_a_file_deleted_under_the_running_agent_is_recreated_with_every_call_of_the_day(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    clock = FakeClock()
    caplog.set_level(logging.WARNING, logger="agent.statefile")
    with StateFile(path, clock) as store:
        budget = RateBudget(DEFAULT_LIMITS, 0.1, clock, store, owner="solo")
        await calls_a_minute_apart(budget, clock, 24)
        unlink_with_companions(path)
        await calls_a_minute_apart(budget, clock, 43)
        assert store.recreated == 1
    with StateFile(path, clock) as store:
        again = RateBudget(DEFAULT_LIMITS, 0.1, clock, store, owner="solo")
        assert again.calls("msp")["1d"] == 67, "the restart sees every call, none twice"
        assert again.exact_calls("msp")["1h"] == budget.exact_calls("msp")["1h"]
    warnings = [r.getMessage() for r in caplog.records if "while the agent ran" in r.getMessage()]
    assert len(warnings) == 1
    assert str(path) in warnings[0] and "deleted" in warnings[0]
    assert "(24 calls of the last day)" in warnings[0], "what memory held was written back"


async def test_a_deleted_file_is_noticed_by_the_periodic_check_before_any_write(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    clock = FakeClock()
    with StateFile(path, clock) as store:
        budget = RateBudget(DEFAULT_LIMITS, 0.1, clock, store, owner="solo")
        await calls_a_minute_apart(budget, clock, 5)
        unlink_with_companions(path)
        assert store.verify(), "recreated"
        assert not store.verify(), "once"
        assert path.exists()
    assert rows_in(path) == 5


async def test_a_file_replaced_by_an_old_copy_is_rewritten_without_counting_twice(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    clock = FakeClock()
    with StateFile(path, clock) as store:
        other = RateBudget(DEFAULT_LIMITS, 0.1, clock, store, owner="shard-1-of-2")
        await other.acquire("msp")
        budget = RateBudget(DEFAULT_LIMITS, 0.1, clock, store, owner="shard-0-of-2")
        await calls_a_minute_apart(budget, clock, 10)
        store.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        backup = tmp_path / "backup.db"
        backup.write_bytes(path.read_bytes())  # a backup with our first 10 calls
        await calls_a_minute_apart(budget, clock, 5)
        backup.replace(path)  # a restore under the running agent
        await calls_a_minute_apart(budget, clock, 5)
        assert store.recreated == 1
    with StateFile(path, clock) as store:
        again = RateBudget(DEFAULT_LIMITS, 0.1, clock, store, owner="shard-0-of-2")
        assert again.calls("msp")["1d"] == 20, "our rows are what we made, not the backup's too"
        kept = RateBudget(DEFAULT_LIMITS, 0.1, clock, store, owner="shard-1-of-2")
        assert kept.calls("msp")["1d"] == 1, "the other owner's rows are left alone"


async def test_a_file_corrupted_at_run_time_is_written_back_too(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    clock = FakeClock()
    with StateFile(path, clock) as store:
        budget = RateBudget(DEFAULT_LIMITS, 0.1, clock, store, owner="solo")
        await calls_a_minute_apart(budget, clock, 3)
        store._conn = BrokenConnection(store._conn)  # type: ignore[assignment]
        await calls_a_minute_apart(budget, clock, 2)
        assert len(store.set_aside) == 1
    with StateFile(path, clock) as store:
        assert RateBudget(DEFAULT_LIMITS, 0.1, clock, store, owner="solo").calls("msp")["1d"] == 5


def test_a_second_agent_for_the_same_owner_is_refused_naming_the_file_and_the_process(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    with StateFile(path) as first, StateFile(path) as second:
        first.lock("")
        with pytest.raises(StateFileInUse) as refused:
            second.lock("")
        assert refused.value.pid == os.getpid()
        assert str(path) in str(refused.value) and f"process {os.getpid()}" in str(refused.value)
        second.lock("shard-1-of-2")  # shards share the file under their own owners
        first.lock("shard-0-of-2")
    with StateFile(path) as again:
        again.lock("")  # the lock went with the first agent


def test_a_lock_held_by_another_process_names_that_process(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from agent.statefile import StateFile\n"
            "s = StateFile(sys.argv[1]); s.lock('shard-0-of-2'); print('locked', flush=True)\n"
            "sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with StateFile(path) as store, pytest.raises(StateFileInUse) as refused:
            store.lock("shard-0-of-2")
        assert refused.value.pid == holder.pid
        assert "owner 'shard-0-of-2'" in str(refused.value)
    finally:
        holder.communicate("", timeout=30)
    with StateFile(path) as store:
        store.lock("shard-0-of-2")


def test_a_state_file_in_memory_takes_no_lock(tmp_path: Path) -> None:
    with StateFile(":memory:") as first, StateFile(":memory:") as second:
        first.lock("")
        second.lock("")


# -- bad files at start ------------------------------------------------------------------------


def test_a_truncated_file_is_set_aside_and_the_agent_starts_fresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    with StateFile(path) as store:
        for ts in range(2000):
            store.record_call("solo", f"cred-{ts % 50}", 1_700_000_000.0 + ts)
        store.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    caplog.set_level(logging.WARNING, logger="agent.statefile")
    with StateFile(path, FakeClock()) as store:
        assert not store.in_memory
        assert store.load_calls("solo", since=0) == []
        store.record_call("solo", "msp", 1_700_000_000.0)
        (aside,) = store.set_aside
    assert aside.read_bytes() == whole[: len(whole) // 2]
    assert any("unusable" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)


def test_an_empty_file_is_a_fresh_ledger(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"")
    with StateFile(path) as store:
        assert store.load_calls("solo", since=0) == []
        assert not store.set_aside
