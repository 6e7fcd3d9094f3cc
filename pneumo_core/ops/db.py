"""The server's small SQLite files (the audit log, the sign-in throttle), opened one way and changed in one
kind of transaction, so concurrent writers (many app sessions, the CLI) serialise."""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def connect(path: Path, schema: str, *, wal: bool = False) -> sqlite3.Connection:
    """Open (creating the folder and the tables) in autocommit mode: every change goes through ``immediate``.
    ``wal``: write-ahead log with full sync, for a log whose acknowledged rows must survive a power cut.
    Raises sqlite3.Error or OSError; callers say which file in their own error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None)   # explicit transactions only
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")       # an acknowledged event survives a power cut
    conn.executescript(schema)
    return conn


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` (the write lock taken at once, so a read-then-write cannot interleave with another
    writer's), ``COMMIT`` at the end, ``ROLLBACK`` on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
