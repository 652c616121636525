"""Persistence of procedure (and activity) history in sqlite, so that it survives a restart.

Each record is one row: its summary as JSON plus an ``extra`` JSON object. For procedures the
extra holds the identity of the worker process (pid and start time), so that a later service
can tell an orphaned worker from an unrelated process that reused the pid.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class JsonTable:
    """One sqlite table of ``id -> (summary, extra)``; ``path=None`` keeps it in memory."""

    def __init__(self, path: Path | None, table: str):
        if not re.fullmatch(r"[a-z_]+", table):
            raise ValueError(f"bad table name {table!r}")
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._table = table
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(path) if path is not None else ":memory:",
            check_same_thread=False,
            isolation_level=None,
            timeout=30,
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            f"CREATE TABLE IF NOT EXISTS {table} "
            "(id INTEGER PRIMARY KEY, summary TEXT NOT NULL, extra TEXT NOT NULL DEFAULT '{}')"
        )

    def load_rows(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT summary, extra FROM {self._table} ORDER BY id"
            ).fetchall()
        return [(json.loads(summary), json.loads(extra)) for summary, extra in rows]

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
        with self._lock:
            self._db.close()


@dataclass(frozen=True)
class StoredProcedure:
    summary: dict[str, Any]
    pid: int | None
    pid_started: float | None


class ProcedureStore:
    """Procedure summaries with the identity of their worker process."""

    def __init__(self, path: Path | None):
        self._table = JsonTable(path, "procedures")

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
