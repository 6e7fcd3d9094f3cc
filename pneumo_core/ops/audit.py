"""The audit log: who did what with which model, in SQLite (WAL), one atomic transaction per event.

Each event holds the time (UTC), the role and account that acted, the session, the action, the model
version, the input's sha256, the result, the probability, the operating point and its threshold, and a
short detail from the app's own vocabulary. Never a file name, a DICOM header value or anything else
that could name, identify or date a patient: the sha256 lets an auditor match a film they hold without
the log holding it.

Events are chained: each row stores a keyed hash (HMAC-SHA256) of the previous row's hash and its own
fields. The key is derived from this server's integrity key (``integrity.py``: a file outside the database
and outside ``weights/``), so ``verify_chain`` (``python -m pneumo_core audit verify``) detects a row that was
edited, inserted or deleted even when every later hash was recomputed, unless whoever did it could also
read the key file. Not detected by the chain alone: removing the newest rows (the remaining chain is
intact; compare the count and the head hash that ``audit verify`` prints with a copy kept elsewhere), or
replacing the key file together with the whole log. The chain is extended inside ``BEGIN IMMEDIATE``, so
concurrent writers (many app sessions, the CLI) serialise.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import math
import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any, Iterator, Sequence

from pneumo_core.errors import AuditError, IntegrityKeyError
from pneumo_core.files import CHECKOUT, utc_now
from pneumo_core.ops import db
from pneumo_core.ops.csvcell import LINE_END, safe_cell
from pneumo_core.ops.integrity import derived_key, key_path

COLUMNS = ("id", "time", "role", "actor", "session", "action", "model_version", "input_sha256", "result",
           "probability", "operating_point", "threshold", "detail", "prev_hash", "hash")
_HASHED = COLUMNS[1:13]          # the fields the chain covers
GENESIS = "0" * 64
MAX_DETAIL = 300
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    role TEXT NOT NULL,
    actor TEXT NOT NULL,
    session TEXT NOT NULL,
    action TEXT NOT NULL,
    model_version TEXT,
    input_sha256 TEXT CHECK (input_sha256 IS NULL OR length(input_sha256) = 64),
    result TEXT NOT NULL,
    probability REAL,
    operating_point TEXT,
    threshold REAL,
    detail TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS events_time ON events (time);
CREATE INDEX IF NOT EXISTS events_action ON events (action);
"""



def audit_path() -> Path:
    """``$PNEUMO_AUDIT_DB`` or ``var/audit.sqlite3`` beside the package."""
    return Path(os.environ.get("PNEUMO_AUDIT_DB") or CHECKOUT / "var" / "audit.sqlite3")


def _connect(path: Path | None) -> sqlite3.Connection:
    path = Path(path) if path else audit_path()
    try:
        conn = db.connect(path, SCHEMA, wal=True)
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        return conn
    except (sqlite3.Error, OSError) as exc:
        raise AuditError(f"The audit log {path.name} cannot be opened ({type(exc).__name__}: {exc}).") from None


def _row_hash(key: bytes, prev_hash: str, fields: Sequence[Any]) -> str:
    payload = json.dumps([prev_hash, *fields], separators=(",", ":"), ensure_ascii=True, default=str)
    return hmac.new(key, payload.encode("ascii"), hashlib.sha256).hexdigest()


def _chain_key(*, create: bool) -> bytes | None:
    try:
        return derived_key("audit", create=create)
    except IntegrityKeyError as exc:
        raise AuditError(f"The audit log's key is unavailable: {exc}") from None


def _clean_sha(value: str | None) -> str | None:
    if value is None:
        return None
    value = str(value).lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError("input_sha256 must be a sha256 hex digest")
    return value


def _clean_float(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def event(action: str, *, role: str, result: str, actor: str | None = None, session: str = "-",
          model_version: str | None = None, input_sha256: str | None = None, probability: float | None = None,
          operating_point: str | None = None, threshold: float | None = None, detail: str | None = None) -> list:
    """One event's chained fields, validated (a malformed sha256 raises ValueError)."""
    return [utc_now("milliseconds"), str(role), str(actor or role), str(session), str(action), model_version,
            _clean_sha(input_sha256), str(result), _clean_float(probability), operating_point,
            _clean_float(threshold), (str(detail)[:MAX_DETAIL] if detail else None)]


def record_many(items: Sequence[list], path: str | Path | None = None) -> list[int]:
    """Append ``event(...)`` rows in one atomic transaction (all or none); returns their ids."""
    if not items:
        return []
    key = _chain_key(create=True)
    try:
        with closing(_connect(path)) as conn, db.immediate(conn):
            last = conn.execute("SELECT hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
            prev = last[0] if last else GENESIS
            ids = []
            for fields in items:
                digest = _row_hash(key, prev, fields)
                cur = conn.execute(f"INSERT INTO events ({', '.join(COLUMNS[1:])}) VALUES "
                                   f"({', '.join('?' * (len(COLUMNS) - 1))})", [*fields, prev, digest])
                ids.append(int(cur.lastrowid))
                prev = digest
            return ids
    except sqlite3.Error as exc:
        raise AuditError(f"The audit log could not be written ({type(exc).__name__}: {exc}).") from None


def record(action: str, *, path: str | Path | None = None, **fields: Any) -> int:
    """Append one event atomically (see ``event`` for the fields); returns its id. AuditError when the log
    cannot be written."""
    return record_many([event(action, **fields)], path)[0]


def writable(path: str | Path | None = None) -> str | None:
    """None when the log can be written now, else why not (admin actions are refused without a log)."""
    try:
        with closing(_connect(path)) as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        return None
    except (AuditError, sqlite3.Error) as exc:
        return str(exc)


def events(*, path: str | Path | None = None, limit: int | None = None, actions: Sequence[str] | None = None,
           since: str | None = None, until: str | None = None, newest_first: bool = True) -> list[dict[str, Any]]:
    """Events as dicts (chain columns included), filtered by action and ISO time bounds."""
    where, args = [], []
    if actions:
        where.append(f"action IN ({', '.join('?' * len(actions))})")
        args.extend(actions)
    if since:
        where.append("time >= ?")
        args.append(since)
    if until:
        where.append("time < ?")
        args.append(until)
    sql = f"SELECT {', '.join(COLUMNS)} FROM events" + (f" WHERE {' AND '.join(where)}" if where else "")
    sql += f" ORDER BY id {'DESC' if newest_first else 'ASC'}" + (" LIMIT ?" if limit else "")
    if limit:
        args.append(int(limit))
    try:
        with closing(_connect(path)) as conn:
            return [dict(zip(COLUMNS, row)) for row in conn.execute(sql, args)]
    except sqlite3.Error as exc:
        raise AuditError(f"The audit log could not be read ({type(exc).__name__}: {exc}).") from None


def actions(path: str | Path | None = None) -> list[str]:
    """The distinct actions in the log, sorted (for the page's filter)."""
    try:
        with closing(_connect(path)) as conn:
            return [row[0] for row in conn.execute("SELECT DISTINCT action FROM events ORDER BY action")]
    except sqlite3.Error as exc:
        raise AuditError(f"The audit log could not be read ({type(exc).__name__}: {exc}).") from None


def _iter_rows(path: str | Path | None) -> Iterator[tuple]:
    with closing(_connect(path)) as conn:
        yield from conn.execute(f"SELECT {', '.join(COLUMNS)} FROM events ORDER BY id ASC")


def verify_chain(path: str | Path | None = None) -> tuple[int, int | None]:
    """(events checked, id of the first event whose chain breaks or None). Detects edits, insertions and
    deletions, also when later hashes were recomputed without the key (see the module's docstring)."""
    n, broken, _ = chain_status(path)
    return n, broken


def chain_status(path: str | Path | None = None) -> tuple[int, int | None, str]:
    """``verify_chain``'s answer and the hash of the last event it verified (``GENESIS`` for an empty log):
    the head to keep elsewhere, since removing the newest events leaves an intact, shorter chain."""
    prev, n = GENESIS, 0
    key = _chain_key(create=False)
    try:
        for row in _iter_rows(path):
            rec = dict(zip(COLUMNS, row))
            if key is None:
                raise AuditError(f"The audit log cannot be verified: this server's key file ({key_path()}) "
                                 f"is missing, and the log was written with a key.")
            if (rec["prev_hash"] != prev
                    or not hmac.compare_digest(_row_hash(key, prev, [rec[c] for c in _HASHED]), rec["hash"])):
                return n, rec["id"], prev
            prev, n = rec["hash"], n + 1
    except sqlite3.Error as exc:
        raise AuditError(f"The audit log could not be read ({type(exc).__name__}: {exc}).") from None
    return n, None, prev


def to_csv(rows: Sequence[dict[str, Any]]) -> bytes:
    """CSV bytes (UTF-8, a header row) of ``events()`` rows; text that starts like a spreadsheet formula (an
    account name from the identity provider, say) is prefixed with ``'`` (``safe_cell``)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator=LINE_END)
    writer.writeheader()
    writer.writerows({k: safe_cell(v) for k, v in row.items()} for row in rows)
    return buf.getvalue().encode("utf-8")
