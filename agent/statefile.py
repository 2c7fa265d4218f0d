"""The SQLite state file: what must survive a restart (rate-window usage, 5XX support evidence).

Why SQLite in WAL mode: several shard processes may share one file, each writing under its own
``owner``; WAL lets them read while one writes, and ``busy_timeout`` makes a writer wait its (very
short) turn instead of failing. ``synchronous=NORMAL`` is enough with WAL: a commit is in the WAL
file as soon as the INSERT returns, so a killed process (SIGKILL, OOM) loses nothing; only a power
cut or kernel crash can lose the last commits since the previous checkpoint, and the file stays
consistent either way. ``FULL`` would fsync on every call we make, an fsync storm for no gain that
matters to a rate ledger.

Never crash over the state file. A missing, unreadable, locked (past the busy timeout) or corrupt
file is logged as a warning naming the path and the problem, moved aside as
``<name>.corrupt-<UTC timestamp>`` (with its ``-wal``/``-shm`` companions, so it can still be
inspected with the sqlite3 shell), and replaced by a fresh one. If even that fails the agent keeps
running on an in-memory database and says so.

Schema (``PRAGMA user_version`` = 1)::

    rate_calls(owner TEXT, credential TEXT, second INTEGER, calls INTEGER,
               PRIMARY KEY (owner, credential, second))

One row per (owner, credential, second) with ``second = ceil(call time)``: a call is written as
one UPSERT, and rounding *up* means a reloaded call leaves its windows no earlier than it should.
Rows older than ``RETENTION_SECONDS`` (a day plus an hour) are pruned, so the table holds at most
one row per second of the last day per owner and credential.

Adding a table (e.g. ``agent/evidence.py``): call ``store.ensure_schema(DDL)`` once with
``CREATE TABLE IF NOT EXISTS ...`` statements; the DDL is applied now and again after a fresh start.
Then use ``store.execute(sql, params)`` for single statements and ``with store.transaction() as
conn:`` for several statements that must commit together. Both raise ``StateFileError`` after
logging it (throttled: a broken disk must not flood the log); a corrupt file found at run time is
moved aside and recreated first.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.clock import Clock, SystemClock

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
RETENTION_SECONDS = 86400 + 3600
PRUNE_EVERY_SECONDS = 600.0
DEFAULT_BUSY_TIMEOUT = 5.0
WARN_EVERY_SECONDS = 300.0
MEMORY = ":memory:"

_RATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS rate_calls (
    owner TEXT NOT NULL,
    credential TEXT NOT NULL,
    second INTEGER NOT NULL,
    calls INTEGER NOT NULL,
    PRIMARY KEY (owner, credential, second)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rate_calls_by_second ON rate_calls (second);
"""

_UPSERT_CALL = """
INSERT INTO rate_calls (owner, credential, second, calls) VALUES (?, ?, ?, ?)
ON CONFLICT (owner, credential, second) DO UPDATE SET calls = calls + excluded.calls
"""


class StateFileError(Exception):
    """A state-file operation failed; the message names the path and the problem."""


class StateFile:
    """One connection to the state file, safe to share between the agent's parts.

    ``path`` may be ``":memory:"`` (tests, or no persistence wanted).
    """

    def __init__(
        self,
        path: Path | str,
        clock: Clock | None = None,
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self._busy_ms = max(0, int(busy_timeout * 1000))
        self._lock = threading.RLock()
        self._schemas: list[str] = [_RATE_SCHEMA]
        self._next_prune = 0.0
        self._next_warning = 0.0
        self._requested = str(path)
        self.path: str = self._requested
        self.set_aside: list[Path] = []
        self._conn = self._open_or_recover()

    @property
    def in_memory(self) -> bool:
        """True when nothing is persisted (asked for, or the file could not be used)."""
        return self.path == MEMORY

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> StateFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- rate-window usage ---------------------------------------------------------------------

    def record_call(self, owner: str, credential: str, ts: float, calls: int = 1) -> None:
        """Persist ``calls`` made at wall time ``ts``: one UPSERT, autocommitted. Never raises."""
        second = math.ceil(ts)
        try:
            self.execute(_UPSERT_CALL, (owner, credential, second, calls))
            if ts >= self._next_prune:
                self._next_prune = ts + PRUNE_EVERY_SECONDS
                self.prune_calls(ts - RETENTION_SECONDS)
        except StateFileError:
            pass  # logged by _failed; the in-memory ledger still holds the call

    def load_calls(self, owner: str, since: float) -> list[tuple[str, int, int]]:
        """``(credential, second, calls)`` of ``owner`` after ``since``, oldest first.

        Never raises: an unreadable ledger means starting from zero, which the warning says.
        """
        try:
            rows = self.execute(
                "SELECT credential, second, calls FROM rate_calls"
                " WHERE owner = ? AND second > ? ORDER BY second",
                (owner, math.floor(since)),
            )
        except StateFileError as exc:
            log.warning("rate usage not loaded, starting from zero: %s", exc)
            return []
        return [(str(c), int(s), int(n)) for c, s, n in rows]

    def prune_calls(self, before: float) -> int:
        """Drop rate rows older than ``before`` (all owners: a retired shard's rows go too)."""
        with self.transaction() as conn:
            cur = conn.execute("DELETE FROM rate_calls WHERE second < ?", (math.floor(before),))
            return cur.rowcount

    # -- generic helpers for other tables ------------------------------------------------------

    def ensure_schema(self, ddl: str) -> None:
        """Apply ``CREATE ... IF NOT EXISTS`` DDL now and after every fresh start.

        Never raises: on failure (logged) the DDL stays registered for the next fresh start, and
        statements on the missing table fail with ``StateFileError`` like any other.
        """
        with self._lock:
            if ddl not in self._schemas:
                self._schemas.append(ddl)
            with contextlib.suppress(StateFileError), self.transaction() as conn:
                for statement in _statements(ddl):
                    conn.execute(statement)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (autocommitted) and return all its rows."""
        with self._lock:
            try:
                return list(self._conn.execute(sql, params).fetchall())
            except sqlite3.Error as exc:
                raise self._failed(exc) from exc

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Statements inside commit together (``BEGIN IMMEDIATE``: the write lock up front)."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._failed(exc) from exc
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise self._failed(exc) from exc
            except BaseException:
                self._rollback()
                raise

    # -- opening and recovery ------------------------------------------------------------------

    def _open_or_recover(self) -> sqlite3.Connection:
        if self._requested == MEMORY:
            return self._connect(MEMORY)
        path = Path(self._requested)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return self._fall_back_to_memory(f"cannot create directory {path.parent}: {exc}")
        if not path.exists():
            log.warning(
                "state file %s does not exist: starting fresh (calls made before are unknown)",
                path,
            )
        try:
            return self._connect(str(path))
        except sqlite3.Error as exc:
            problem = _describe(exc)
        log.warning(
            "state file %s unusable (%s): moving it aside and starting fresh", path, problem
        )
        return self._start_fresh(path)

    def _start_fresh(self, path: Path) -> sqlite3.Connection:
        try:
            self.set_aside.append(self._move_aside(path))
            return self._connect(str(path))
        except (OSError, sqlite3.Error) as exc:
            return self._fall_back_to_memory(f"cannot recreate {path}: {_describe(exc)}")

    def _fall_back_to_memory(self, problem: str) -> sqlite3.Connection:
        log.error("state file unavailable, nothing will survive a restart: %s", problem)
        self.path = MEMORY
        return self._connect(MEMORY)

    def _connect(self, target: str) -> sqlite3.Connection:
        """Open, configure and verify: any problem surfaces here as ``sqlite3.Error``."""
        conn = sqlite3.connect(
            target, timeout=self._busy_ms / 1000, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            check = conn.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {check}")
            conn.execute("BEGIN IMMEDIATE")  # proves we can write, within the busy timeout
            for ddl in self._schemas:
                for statement in _statements(ddl):
                    conn.execute(statement)
            if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return conn

    def _move_aside(self, path: Path) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock.time()))
        aside = path.with_name(f"{path.name}.corrupt-{stamp}")
        n = 0
        while aside.exists():
            n += 1
            aside = path.with_name(f"{path.name}.corrupt-{stamp}.{n}")
        for suffix in ("-wal", "-shm", ""):  # companions first: the main file is the marker
            companion = Path(f"{path}{suffix}")
            if companion.exists():
                companion.replace(f"{aside}{suffix}")
        log.warning("state file %s moved aside to %s", path, aside)
        return aside

    def _failed(self, exc: sqlite3.Error) -> StateFileError:
        """Turn a run-time sqlite error into ``StateFileError``; recover a corrupt file first.

        ``OperationalError`` (locked past the busy timeout, disk full, I/O) is taken as transient.
        Any other ``DatabaseError`` means the file itself is bad: it is moved aside and recreated,
        so the next write lands in a healthy file.
        """
        error = StateFileError(f"state file {self.path}: {_describe(exc)}")
        corrupt = isinstance(exc, sqlite3.DatabaseError) and not isinstance(
            exc, sqlite3.OperationalError
        )
        if corrupt and not self.in_memory:
            log.warning("state file %s became unusable (%s): starting fresh", self.path, error)
            self._conn.close()
            self._conn = self._start_fresh(Path(self.path))
        else:
            self._warn_throttled(f"{error} (not persisted)")
        return error

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # no transaction open: nothing to undo
            self._conn.execute("ROLLBACK")

    def _warn_throttled(self, message: str) -> None:
        """Warn at most every few minutes: a broken disk must not flood the log per call."""
        now = self._clock.monotonic()
        if now >= self._next_warning:
            self._next_warning = now + WARN_EVERY_SECONDS
            log.warning("%s", message)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _statements(ddl: str) -> list[str]:
    """Split a DDL script so it runs inside our own transaction (``executescript`` would commit).

    ``sqlite3.complete_statement`` knows where a statement ends, triggers' inner ``;`` included.
    """
    statements: list[str] = []
    buffer = ""
    for piece in ddl.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \t\r\n;"):
                statements.append(buffer.strip())
            buffer = ""
    return statements
