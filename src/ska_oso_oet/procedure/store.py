"""Persistence of procedure history in sqlite, so that it survives a restart of the service.

Each procedure is one row holding its summary as JSON, whether it is still active, and the
identity of its worker process (pid and start time) so that a later service can tell an
orphaned worker from an unrelated process that reused the pid.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS procedures (
    id INTEGER PRIMARY KEY,
    summary TEXT NOT NULL,
    active INTEGER NOT NULL,
    pid INTEGER,
    pid_started REAL
)
"""


@dataclass(frozen=True)
class StoredProcedure:
    summary: dict[str, Any]
    active: bool
    pid: int | None
    pid_started: float | None


class ProcedureStore:
    """A small sqlite table; ``path=None`` keeps it in memory (no persistence)."""

    def __init__(self, path: Path | None):
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(path) if path is not None else ":memory:",
            check_same_thread=False,
            isolation_level=None,
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

    def load(self) -> list[StoredProcedure]:
        with self._lock:
            rows = self._db.execute(
                "SELECT summary, active, pid, pid_started FROM procedures ORDER BY id"
            ).fetchall()
        return [StoredProcedure(json.loads(s), bool(a), p, t) for s, a, p, t in rows]

    def save(
        self,
        summary: dict[str, Any],
        active: bool,
        pid: int | None = None,
        pid_started: float | None = None,
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO procedures (id, summary, active, pid, pid_started)"
                " VALUES (?, ?, ?, ?, ?)",
                (summary["id"], json.dumps(summary), int(active), pid, pid_started),
            )

    def delete(self, procedure_ids: Iterable[int]) -> None:
        with self._lock:
            self._db.executemany(
                "DELETE FROM procedures WHERE id = ?", [(i,) for i in procedure_ids]
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
