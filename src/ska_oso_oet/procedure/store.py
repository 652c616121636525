"""Persistence of procedure (and activity) history in sqlite, so that it survives a restart.

Each record is one row: its summary as JSON plus an ``extra`` JSON object. For procedures the
extra holds the identity of the worker process (pid and start time), so that a later service
can tell an orphaned worker from an unrelated process that reused the pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import EngineUnavailable

LOGGER = logging.getLogger(__name__)


class JsonTable:
    """One sqlite table of ``id -> (summary, extra)``; ``path=None`` keeps it in memory.

    With an ``owner``, the table holds the database's :class:`StoreLock` (written with the
    owner's name) from opening until :meth:`close`: one live engine per database file."""

    def __init__(self, path: Path | None, table: str, owner: str | None = None):
        if not re.fullmatch(r"[a-z_]+", table):
            raise ValueError(f"bad table name {table!r}")
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._table = table
        self._lock = threading.Lock()
        self._owner_lock: StoreLock | None = None
        if path is not None and owner is not None:
            self._owner_lock = StoreLock(path)
            self._owner_lock.write_owner(owner)
        try:
            self._db = sqlite3.connect(
                str(path) if path is not None else ":memory:",
                check_same_thread=False,
                isolation_level=None,
                timeout=30,
            )
        except BaseException:
            self._release_owner_lock()
            raise
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            f"CREATE TABLE IF NOT EXISTS {table} "
            "(id INTEGER PRIMARY KEY, summary TEXT NOT NULL, extra TEXT NOT NULL DEFAULT '{}')"
        )

    def load_rows(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Every row that decodes; a row that does not is logged and skipped (one bad row
        must never keep the engine from starting)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, summary, extra FROM {self._table} ORDER BY id"
            ).fetchall()
        decoded = []
        for record_id, summary, extra in rows:
            try:
                item = json.loads(summary), json.loads(extra or "{}")
                if not isinstance(item[0], dict) or not isinstance(item[1], dict):
                    raise ValueError("not a JSON object")
            except (TypeError, ValueError) as exc:
                LOGGER.error("skipping malformed %s row %s: %s", self._table, record_id, exc)
                continue
            decoded.append(item)
        return decoded

    def load(self) -> list[dict[str, Any]]:
        return [summary for summary, _ in self.load_rows()]

    def save(
        self, record_id: int, summary: dict[str, Any], extra: dict[str, Any] | None = None
    ) -> None:
        with self._lock:
            self._db.execute(
                f"INSERT OR REPLACE INTO {self._table} (id, summary, extra) VALUES (?, ?, ?)",
                (record_id, json.dumps(summary), json.dumps(extra or {})),
            )

    def delete(self, record_ids: Iterable[int]) -> None:
        with self._lock:
            self._db.executemany(
                f"DELETE FROM {self._table} WHERE id = ?", [(i,) for i in record_ids]
            )

    def close(self) -> None:
        try:
            with self._lock:
                self._db.close()
        finally:
            self._release_owner_lock()

    def _release_owner_lock(self) -> None:
        if self._owner_lock is not None:
            self._owner_lock.release()
            self._owner_lock = None


@dataclass(frozen=True)
class StoredProcedure:
    summary: dict[str, Any]
    pid: int | None
    pid_started: float | None


class StoreLock:
    """Exclusive use of a state database by one live engine: ``<database>.lock``, flocked.

    Two devices writing one file would overwrite each other's rows and, at restart, mark each
    other's active procedures FAILED. The kernel drops the lock when its holder dies, so a
    crashed device never leaves it stale."""

    def __init__(self, database: Path):
        self.path = Path(str(database) + ".lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise EngineUnavailable(
                f"the state database {database} is already used by another live OET device "
                f"({holder}); give each device its own StateDatabase (OET_STATE_DATABASE)"
            ) from None
        self._fd: int | None = fd

    def write_owner(self, owner: str) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{owner}, pid {os.getpid()}".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


class ProcedureStore:
    """Procedure summaries with the identity of their worker process."""

    def __init__(self, path: Path | None, owner: str = "an OET device"):
        self._table = JsonTable(path, "procedures", owner)

    def load(self) -> list[StoredProcedure]:
        return [
            StoredProcedure(summary, extra.get("pid"), extra.get("pid_started"))
            for summary, extra in self._table.load_rows()
        ]

    def save(
        self, summary: dict[str, Any], pid: int | None = None, pid_started: float | None = None
    ) -> None:
        self._table.save(summary["id"], summary, {"pid": pid, "pid_started": pid_started})

    def delete(self, procedure_ids: Iterable[int]) -> None:
        self._table.delete(procedure_ids)

    def close(self) -> None:
        self._table.close()
