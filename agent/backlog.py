"""Disk-backed outbox (SQLite) for telemetry and reports, resent until the hub acks them.

Every message gets a per-kind sequence number that survives restarts, so the hub can drop
duplicates. The backlog is bounded: past ``max_rows`` the oldest rows are dropped and counted.
It reports its own size, oldest age and dropped count (sent inside each telemetry window).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
  kind TEXT NOT NULL, seq INTEGER NOT NULL, created REAL NOT NULL, payload BLOB NOT NULL,
  sent_at REAL, attempts INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (kind, seq));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class Backlog:
    def __init__(self, path: Path, max_rows: int = 5000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self.max_rows = max_rows

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def next_seq(self, kind: str) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            n = self._meta(f"seq:{kind}") + 1
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"seq:{kind}", n))
            self._db.execute("COMMIT")
            return n

    def add(self, kind: str, seq: int, payload: bytes, now: float) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO outbox (kind, seq, created, payload) VALUES (?,?,?,?)",
                (kind, seq, now, payload),
            )
            (n,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
            if n > self.max_rows:
                extra = n - self.max_rows
                self._db.execute(
                    "DELETE FROM outbox WHERE rowid IN (SELECT rowid FROM outbox ORDER BY created LIMIT ?)", (extra,)
                )
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('dropped', ?)", (self._meta("dropped") + extra,))
            self._db.execute("COMMIT")

    def due(self, now: float, resend_after: float, limit: int = 100) -> list[tuple[str, int, bytes]]:
        """Rows never sent, or sent more than ``resend_after`` seconds ago, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, seq, payload FROM outbox WHERE sent_at IS NULL OR sent_at < ? ORDER BY created LIMIT ?",
                (now - resend_after, limit),
            ).fetchall()
        return [(k, int(s), bytes(p)) for k, s, p in rows]

    def mark_sent(self, items: Iterable[tuple[str, int]], now: float) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "UPDATE outbox SET sent_at=?, attempts=attempts+1 WHERE kind=? AND seq=?",
                [(now, k, s) for k, s in items],
            )
            self._db.execute("COMMIT")

    def ack(self, kind: str, seqs: Iterable[int]) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.executemany("DELETE FROM outbox WHERE kind=? AND seq=?", [(kind, s) for s in seqs])
            self._db.execute("COMMIT")
            return cur.rowcount

    def stats(self, now: float) -> dict[str, Any]:
        with self._lock:
            n, oldest = self._db.execute("SELECT COUNT(*), MIN(created) FROM outbox").fetchone()
            dropped = self._meta("dropped")
        return {
            "size": int(n),
            "oldest_age_s": round(now - oldest, 1) if oldest is not None else 0.0,
            "dropped": dropped,
        }

    def close(self) -> None:
        with self._lock:
            self._db.close()
