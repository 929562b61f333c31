"""Disk-backed outbox (SQLite) for telemetry and reports, resent until the hub acks them.

Every message gets a per-kind sequence number that survives restarts, so the hub can drop
duplicates (it stores ``(device, seq)`` once and acks again): resent until acked, stored once.
The backlog is bounded by rows (``max_rows``) and by payload bytes (``max_bytes``, 50 MiB by
default: a week offline at one telemetry window per 10 s does not fit, so the oldest *telemetry*
goes first; reports only once no telemetry is left) and counts what it dropped. It reports its
own size, bytes, oldest age and dropped count (sent inside each telemetry window).

Power loss: ``synchronous=FULL``, so a sequence number handed out is on disk before the message
that carries it is published (with ``NORMAL`` a power cut could roll the counter back and the
next message would reuse a number the hub already stored, and be dropped as a replay). A
database that does not pass ``quick_check`` at open (torn by a card that lied about a write) is
moved aside as ``<name>.corrupt`` and a new one starts with its sequence numbers at the current
time in milliseconds, above anything the old one handed out (the hub keeps seqs as BIGINT).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_BYTES = 50 * 2**20
KINDS = ("report", "telemetry")
BACKOFF_MAX = 16  # an unacked message's wait between sends doubles up to this many times resend_after


def resend_wait(resend_after: float, sends: int) -> float:
    """Seconds after its last send an unacked message is sent again: at once if never sent, then
    ``resend_after``, doubling with each send after that up to :data:`BACKOFF_MAX` times it (15,
    30, 60, 120, 240 s at the agent's default). A fixed interval sent every device's whole
    backlog to a hub that had fallen behind again and again for as long as it stayed behind, each
    copy one more message for it to parse, find stored and ack (docs/scale.md, 2026-12-06)."""
    if sends <= 0:
        return 0.0
    return resend_after * min(BACKOFF_MAX, 1 << (sends - 1))


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
  kind TEXT NOT NULL, seq INTEGER NOT NULL, created REAL NOT NULL, payload BLOB NOT NULL,
  sent_at REAL, attempts INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (kind, seq));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_kind_created ON outbox (kind, created);
CREATE INDEX IF NOT EXISTS outbox_created ON outbox (created);
"""


class Backlog:
    def __init__(self, path: Path, max_rows: int = 5000, max_bytes: int = MAX_BYTES) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            self._db = self._start_over(exc)
        (self._rows, self._bytes) = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox"
        ).fetchone()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            (check,) = db.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _start_over(self, exc: Exception) -> sqlite3.Connection:
        aside = self.path.with_name(f"{self.path.name}.corrupt")
        self.path.replace(aside)
        for suffix in ("-wal", "-shm"):
            self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
        db = self._open()
        floor = int(time.time() * 1000)
        for kind in KINDS:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"seq:{kind}", floor))
        log.error(
            "backlog %s is corrupt (%s): moved to %s; unsent messages in it are lost, sequence numbers go on from %d",
            self.path,
            exc,
            aside.name,
            floor,
        )
        return db

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
            old = self._db.execute("SELECT LENGTH(payload) FROM outbox WHERE kind=? AND seq=?", (kind, seq)).fetchone()
            self._db.execute(
                "INSERT OR REPLACE INTO outbox (kind, seq, created, payload) VALUES (?,?,?,?)",
                (kind, seq, now, payload),
            )
            rows = self._rows + (0 if old else 1)
            size = self._bytes + len(payload) - (int(old[0]) if old else 0)
            dropped = 0
            for victim in KINDS[::-1]:  # telemetry first: reports carry install outcomes
                while rows > self.max_rows or size > self.max_bytes:
                    batch = self._db.execute(
                        "SELECT rowid, LENGTH(payload) FROM outbox WHERE kind=? ORDER BY created LIMIT ?",
                        (victim, max(1, min(500, rows - self.max_rows))),
                    ).fetchall()
                    if not batch:
                        break
                    gone = []
                    for rowid, n in batch:  # drop only as many as the bounds need
                        if rows <= self.max_rows and size <= self.max_bytes:
                            break
                        gone.append((rowid,))
                        rows, size, dropped = rows - 1, size - int(n), dropped + 1
                    self._db.executemany("DELETE FROM outbox WHERE rowid=?", gone)
            if dropped:
                self._db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('dropped', ?)", (self._meta("dropped") + dropped,)
                )
            self._db.execute("COMMIT")
            self._rows, self._bytes = rows, size

    def due(self, now: float, resend_after: float, limit: int = 100) -> list[tuple[str, int, bytes]]:
        """Rows never sent, or whose :func:`resend_wait` since their last send has passed (all of
        them with ``resend_after`` 0: a new connection): reports first (an install outcome is
        never stuck behind telemetry a byte budget holds back), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, seq, payload FROM outbox WHERE sent_at IS NULL "
                "OR sent_at < ? - ? * MIN(?, 1 << MAX(attempts - 1, 0)) "
                "ORDER BY kind = 'telemetry', created LIMIT ?",
                (now, resend_after, BACKOFF_MAX, limit),
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
            removed, freed = 0, 0
            for s in seqs:
                row = self._db.execute(
                    "SELECT LENGTH(payload) FROM outbox WHERE kind=? AND seq=?", (kind, s)
                ).fetchone()
                if row is None:
                    continue
                self._db.execute("DELETE FROM outbox WHERE kind=? AND seq=?", (kind, s))
                removed, freed = removed + 1, freed + int(row[0])
            self._db.execute("COMMIT")
            self._rows, self._bytes = self._rows - removed, self._bytes - freed
            return removed

    def stats(self, now: float) -> dict[str, Any]:
        with self._lock:
            (oldest,) = self._db.execute("SELECT MIN(created) FROM outbox").fetchone()
            dropped = self._meta("dropped")
            n, size = self._rows, self._bytes
        return {
            "size": int(n),
            "bytes": int(size),
            "oldest_age_s": round(now - oldest, 1) if oldest is not None else 0.0,
            "dropped": dropped,
        }

    def close(self) -> None:
        with self._lock:
            self._db.close()
