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

A file deleted or replaced while the agent runs (a clean-up job, a restored backup, an operator)
would otherwise go on receiving writes through the open connection, to an unlinked inode no
restart will find. So the path's device and inode are compared with the file the connection
opened, at most every ``IDENTITY_CHECK_SECONDS`` on a write and whenever ``verify`` is called (the
agent calls it on a short period): when they differ the connection is reopened on the path (a
fresh file, or the one now there), every ``on_recreated`` callback writes back what it holds in
memory (the rate budget: this process's calls of the last day and its pauses), one warning is
logged and ``recreated`` counts it. A corrupt file set aside at run time is written back the same
way.

One running agent per file and owner: ``lock(owner)`` takes an exclusive ``flock`` on
``<state file>.lock`` (``<state file>.<owner>.lock`` for a shard's owner) and writes its PID in it;
a second agent for the same owner gets ``StateFileInUse`` naming the file and that PID. Shards
share one file under their own owners, so they do not exclude each other. The lock goes with the
process: a killed agent leaves no stale lock.

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
import fcntl
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
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
IDENTITY_CHECK_SECONDS = 1.0
"""A write checks at most this often that the path still names the file it writes to."""
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


class StateFileInUse(Exception):
    """Another running agent holds the state file for the same owner (exit code 2 at start)."""

    def __init__(self, path: str, owner: str, pid: int | None) -> None:
        holder = f"process {pid}" if pid is not None else "another process"
        whose = f" for owner {owner!r}" if owner else ""
        super().__init__(
            f"state file {path} is in use by {holder}{whose}: another agent with the same "
            "configuration is running; stop it, or give this one its own state_file (shards "
            "share one file under their own --shard)"
        )
        self.path = path
        self.owner = owner
        self.pid = pid


Recreated = Callable[[], int]
"""Called after the file was recreated: write back what is held in memory; returns the calls
written (for the warning)."""


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
        self.recreated = 0
        """How often the file was found deleted or replaced while running, and recreated."""
        self._callbacks: list[Recreated] = []
        self._locks: dict[str, _OwnerLock] = {}
        self._identity: tuple[int, int] | None = None
        self._next_identity_check = 0.0
        self._writing_back = False
        self._generation = 0
        """Counts every fresh start at run time (recreated, or set aside as corrupt)."""
        self._conn = self._open_or_recover()

    @property
    def in_memory(self) -> bool:
        """True when nothing is persisted (asked for, or the file could not be used)."""
        return self.path == MEMORY

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            for lock in self._locks.values():
                lock.release()
            self._locks.clear()

    # -- one agent per file and owner, and a file lost while running ---------------------------

    def lock(self, owner: str) -> None:
        """Hold the file for ``owner`` until ``close``; ``StateFileInUse`` if another process does.

        Never raises for anything else: a lock file that cannot be created (a read-only
        directory) is a warning, as every other state-file problem is.
        """
        if self.in_memory or owner in self._locks:
            return
        lock = _OwnerLock(_lock_path(self.path, owner))
        try:
            holder = lock.acquire()
        except OSError as exc:
            log.warning(
                "state file %s cannot be locked, not guarded against a second agent: %s",
                self.path,
                _describe(exc),
            )
            return
        if holder is not None:
            raise StateFileInUse(self.path, owner, holder or None)
        self._locks[owner] = lock

    def on_recreated(self, callback: Recreated) -> None:
        """Call ``callback`` whenever the file was recreated under the running agent."""
        self._callbacks.append(callback)

    def verify(self) -> bool:
        """Check now that the path still names the open file; recreate it if not (True)."""
        with self._lock:
            self._next_identity_check = self._clock.monotonic() + IDENTITY_CHECK_SECONDS
            for lock in self._locks.values():
                lock.keep()
            if self.in_memory or self._identity is None:
                return False
            found = _identity(self.path)
            if found == self._identity:
                return False
            what = (
                "deleted while the agent ran: recreated it"
                if found is None
                else "replaced by another file while the agent ran: writing to that one"
            )
            self._conn.close()
            self._conn = self._open_or_recover(quiet=True)
            self.recreated += 1
            written = self._write_back()
            log.warning(
                "state file %s was %s, with what this agent holds in memory written back "
                "(%d calls of the last day)",
                self.path,
                what,
                written,
            )
            return True

    def _verify_throttled(self) -> None:
        if self._writing_back or self._clock.monotonic() < self._next_identity_check:
            return
        self.verify()

    def _write_back(self) -> int:
        """Run every ``on_recreated`` callback once (not again from inside one)."""
        self._generation += 1
        if self._writing_back:
            return 0
        self._writing_back = True
        try:
            written = 0
            for callback in self._callbacks:
                with contextlib.suppress(StateFileError):
                    written += callback()
            return written
        finally:
            self._writing_back = False

    def __enter__(self) -> StateFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- rate-window usage ---------------------------------------------------------------------

    def record_call(self, owner: str, credential: str, ts: float, calls: int = 1) -> None:
        """Persist ``calls`` made at wall time ``ts``: one UPSERT, autocommitted. Never raises.

        Should the write find the file corrupt, the fresh file gets what memory held written back
        (which the caller has not added this call to yet) and then this call.
        """
        second = math.ceil(ts)
        generation = self._generation
        try:
            try:
                self.execute(_UPSERT_CALL, (owner, credential, second, calls))
            except StateFileError:
                if self._generation == generation:
                    raise
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
            self._verify_throttled()
            try:
                return list(self._conn.execute(sql, params).fetchall())
            except sqlite3.Error as exc:
                raise self._failed(exc) from exc

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Statements inside commit together (``BEGIN IMMEDIATE``: the write lock up front)."""
        with self._lock:
            self._verify_throttled()
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

    def _open_or_recover(self, quiet: bool = False) -> sqlite3.Connection:
        """Open the path (a fresh file when missing), recover a bad one; ``quiet``: the caller
        says why the file is missing."""
        if self._requested == MEMORY:
            return self._connect(MEMORY)
        path = Path(self._requested)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return self._fall_back_to_memory(f"cannot create directory {path.parent}: {exc}")
        if not path.exists() and not quiet:
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
        self._identity = None
        return self._connect(MEMORY)

    def _connect(self, target: str) -> sqlite3.Connection:
        """Open, configure and verify (any problem surfaces here as ``sqlite3.Error``), and
        note which file it is."""
        conn = self._configure(target)
        self._identity = None if target == MEMORY else _identity(target)
        return conn

    def _configure(self, target: str) -> sqlite3.Connection:
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
            self._write_back()
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


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file the path names now; None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _lock_path(path: str, owner: str) -> Path:
    return Path(f"{path}.{owner}.lock" if owner else f"{path}.lock")


class _OwnerLock:
    """An exclusive ``flock`` on a lock file that holds the PID of the process that has it.

    ``flock`` (not POSIX record locks) because SQLite's own POSIX locks on the state file would be
    dropped by closing any other descriptor of it; the lock file is a file of its own.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None

    def acquire(self) -> int | None:
        """Take the lock (None), or return the PID of the process holding it (0: unknown)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            return holder
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        self._identity = _identity(str(self.path))
        return None

    def keep(self) -> None:
        """Take the lock again if its file was deleted or replaced (say so if another has it)."""
        if self._fd is None or _identity(str(self.path)) == self._identity:
            return
        self.release()
        try:
            holder = self.acquire()
        except OSError as exc:
            log.warning("lock file %s lost and not recreated: %s", self.path, _describe(exc))
            return
        if holder is not None:
            log.error(
                "lock file %s was replaced and process %s now holds it: two agents may be "
                "spending the same budget",
                self.path,
                holder or "unknown",
            )

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def _read_pid(fd: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode("ascii", "replace").strip() or 0)
    return 0


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
