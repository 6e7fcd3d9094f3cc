"""Sign-in backoff per client (no Streamlit here; ``appkit.auth_ui`` applies it).

A client may get the admin password wrong ``free_tries`` times; after that, each failure makes it wait
twice as long as the one before (``delay_s``, 2x, 4x, ... up to ``max_delay_s``) before its next attempt.
Failures from one client never slow another, so people guessing elsewhere cannot lock the real admin out.
A client's count ends with its right password, or ``forget_s`` after its last failure.

There is no server-wide ceiling: it would let anyone lock the admin out again. A guesser who comes from
many addresses is slowed only per address; the password's minimum length (12 characters) is what stands
against that.

The counts live in a small SQLite file, ``$PNEUMO_SIGNIN_DB`` or ``var/sign_in.sqlite3``, shared by every
session of the server (a page reload does not reset them) and reachable from a shell:
``python -m pneumo_core unlock-sign-in`` clears them. A client is stored only as an HMAC of its key under
a random key held in the server's memory, so the file holds no address (a restart forgets every count).
Every attempt is counted as a failure before the password is checked, in one transaction, so many
attempts at once from one client get no more tries than one after the other.

  PNEUMO_SIGNIN_FREE_TRIES   failures before the first wait (default 5)
  PNEUMO_SIGNIN_DELAY_S      the first wait, seconds (default 30)
  PNEUMO_SIGNIN_MAX_DELAY_S  the longest wait, seconds (default 900)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pneumo_core.env import env_number
from pneumo_core.errors import ThrottleError
from pneumo_core.files import CHECKOUT
from pneumo_core.ops import db

SCHEMA = "CREATE TABLE IF NOT EXISTS failures (client TEXT PRIMARY KEY, count INTEGER NOT NULL, last REAL NOT NULL)"



def throttle_path() -> Path:
    """``$PNEUMO_SIGNIN_DB`` or ``var/sign_in.sqlite3`` beside the package."""
    return Path(os.environ.get("PNEUMO_SIGNIN_DB") or CHECKOUT / "var" / "sign_in.sqlite3")


@dataclass(frozen=True)
class Backoff:
    free_tries: int = 5
    delay_s: float = 30.0
    max_delay_s: float = 900.0
    forget_s: float = 24 * 3600.0

    @classmethod
    def from_env(cls) -> "Backoff":
        return cls(free_tries=int(env_number("PNEUMO_SIGNIN_FREE_TRIES", 5)),
                   delay_s=env_number("PNEUMO_SIGNIN_DELAY_S", 30.0),
                   max_delay_s=env_number("PNEUMO_SIGNIN_MAX_DELAY_S", 900.0))

    def wait_after(self, failures: int) -> float:
        """Seconds a client waits after its ``failures``-th failure in a row."""
        if failures < self.free_tries:
            return 0.0
        return min(self.max_delay_s, self.delay_s * 2.0 ** min(failures - self.free_tries, 60))


def _connect(path: Path) -> sqlite3.Connection:
    try:
        return db.connect(path, SCHEMA)
    except (sqlite3.Error, OSError) as exc:
        raise ThrottleError(f"The sign-in throttle {path.name} cannot be opened ({type(exc).__name__}).") from None


class SignInThrottle:
    """Per-client backoff over the throttle file. ``backoff`` None: read from the environment at each call;
    the clock (wall time, shared with other processes) is injectable for tests."""

    def __init__(self, backoff: Backoff | None = None, *, path: str | Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.backoff, self.path, self.clock = backoff, path, clock
        self._key = secrets.token_bytes(32)

    def _id(self, client: str) -> str:
        return hmac.new(self._key, client.encode("utf-8"), hashlib.sha256).hexdigest()

    def _run(self, fn):
        path = Path(self.path) if self.path else throttle_path()
        try:
            with closing(_connect(path)) as conn, db.immediate(conn):
                return fn(conn)
        except sqlite3.Error as exc:
            raise ThrottleError(f"The sign-in throttle {path.name} cannot be written ({type(exc).__name__}).") \
                from None

    def attempt(self, client: str) -> float:
        """0 when ``client`` may try a password now (the try is counted as a failure until ``succeeded``),
        else the seconds it must wait first (a refused try is not counted)."""
        rule, now, key = self.backoff or Backoff.from_env(), self.clock(), self._id(client)

        def go(conn: sqlite3.Connection) -> float:
            conn.execute("DELETE FROM failures WHERE last < ?", (now - rule.forget_s,))
            row = conn.execute("SELECT count, last FROM failures WHERE client = ?", (key,)).fetchone()
            count, last = row or (0, now)
            wait = last + rule.wait_after(count) - now
            if wait > 0:
                return wait
            conn.execute("INSERT OR REPLACE INTO failures VALUES (?, ?, ?)", (key, count + 1, now))
            return 0.0

        return self._run(go)

    def wait_s(self, client: str) -> float:
        """Seconds before ``client`` may try again (0: now). Read only."""
        rule, now, key = self.backoff or Backoff.from_env(), self.clock(), self._id(client)

        def go(conn: sqlite3.Connection) -> float:
            row = conn.execute("SELECT count, last FROM failures WHERE client = ?", (key,)).fetchone()
            if not row or now - row[1] > rule.forget_s:
                return 0.0
            return max(0.0, row[1] + rule.wait_after(row[0]) - now)

        return self._run(go)

    def succeeded(self, client: str) -> None:
        key = self._id(client)
        self._run(lambda conn: conn.execute("DELETE FROM failures WHERE client = ?", (key,)))


def unlock(path: str | Path | None = None) -> int:
    """Forget every client's failures (``python -m pneumo_core unlock-sign-in``); returns how many clients
    had some. Takes effect at the server's next sign-in attempt."""
    return SignInThrottle(path=path)._run(lambda conn: conn.execute("DELETE FROM failures").rowcount)
