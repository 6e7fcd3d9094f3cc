"""Upload caps and the rate limit (no Streamlit here; ``films_ui`` applies them).

Caps keep one session from filling the server's memory (uploads live in memory); the rate limit keeps
one user from monopolising the model. It counts films per session and per client (``appkit.client``: the
connection's address), the latter kept server-wide so a page reload does not start a new quota. Clients
that share an address (behind a proxy without ``PNEUMO_TRUSTED_PROXY=1``) share the client quota. All can
be changed per deployment through the environment:

  PNEUMO_MAX_FILE_MB      largest single upload (default 64; Streamlit's own cap is server.maxUploadSize)
  PNEUMO_MAX_FILES        films per upload batch (default 250)
  PNEUMO_MAX_BATCH_MB     all films of one batch together (default 512)
  PNEUMO_RATE_FILMS       films a session may have analysed per window (default 300)
  PNEUMO_RATE_WINDOW_S    the window, seconds (default 600)
  PNEUMO_RATE_CLIENT_FILMS  films one client may have analysed per window, all its sessions together
                          (default: PNEUMO_RATE_FILMS)
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

from pneumo_core.env import env_number


def _env_int(name: str, default: int) -> int:
    return int(env_number(name, default, cast=int, allow_zero=False))


@dataclass(frozen=True)
class UploadLimits:
    max_file_bytes: int
    max_files: int
    max_batch_bytes: int
    rate_films: int
    rate_window_s: int
    rate_client_films: int | None = None         # None: rate_films

    @property
    def client_films(self) -> int:
        return self.rate_client_films or self.rate_films

    @classmethod
    def from_env(cls) -> "UploadLimits":
        return cls(max_file_bytes=_env_int("PNEUMO_MAX_FILE_MB", 64) * 2**20,
                   max_files=_env_int("PNEUMO_MAX_FILES", 250),
                   max_batch_bytes=_env_int("PNEUMO_MAX_BATCH_MB", 512) * 2**20,
                   rate_films=_env_int("PNEUMO_RATE_FILMS", 300),
                   rate_window_s=_env_int("PNEUMO_RATE_WINDOW_S", 600),
                   rate_client_films=_env_int("PNEUMO_RATE_CLIENT_FILMS", 0) or None)


@dataclass(frozen=True)
class Admission:
    """Which of a batch's files may be analysed (indices into the batch) and why the others may not."""

    accepted: tuple[int, ...]
    refused: dict[int, str]
    notices: tuple[str, ...]


def admit(sizes: Sequence[int], limits: UploadLimits) -> Admission:
    """Apply the size caps, in upload order: a file over the per-file cap is refused alone; files past the
    batch count or the batch total are refused with a notice saying how to proceed."""
    accepted: list[int] = []
    refused: dict[int, str] = {}
    notices: list[str] = []
    total = 0
    for i, size in enumerate(sizes):
        if size > limits.max_file_bytes:
            refused[i] = (f"The file is too large ({size / 2**20:,.1f} MB; this server accepts up to "
                          f"{limits.max_file_bytes / 2**20:,.0f} MB per file).")
        elif len(accepted) >= limits.max_files:
            refused[i] = f"Past this server's limit of {limits.max_files} films per batch: not analysed."
        elif total + size > limits.max_batch_bytes:
            refused[i] = (f"Past this server's limit of {limits.max_batch_bytes / 2**20:,.0f} MB per batch: "
                          f"not analysed.")
        else:
            accepted.append(i)
            total += size
    over = [i for i, why in refused.items() if why.startswith("Past")]
    if over:
        notices.append(f"{len(over)} film(s) exceed this server's batch limits ({limits.max_files} films, "
                       f"{limits.max_batch_bytes / 2**20:,.0f} MB) and were not analysed: upload them as a "
                       f"separate batch.")
    return Admission(tuple(accepted), refused, tuple(notices))


@dataclass
class RateLimiter:
    """Sliding window: at most ``limit`` films analysed per ``window_s`` seconds. Thread-safe; the clock is
    injectable for tests."""

    limit: int
    window_s: float
    clock: callable = time.monotonic
    _times: deque = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] >= self.window_s:
            self._times.popleft()

    def room(self) -> int:
        """How many films may be analysed now."""
        now = self.clock()
        with self._lock:
            self._trim(now)
            return max(0, self.limit - len(self._times))

    def take(self, n: int) -> int:
        """Reserve up to ``n`` films now; returns how many were granted."""
        now = self.clock()
        with self._lock:
            self._trim(now)
            granted = max(0, min(n, self.limit - len(self._times)))
            self._times.extend([now] * granted)
            return granted

    def retry_after(self) -> float:
        """Seconds until at least one more film may be analysed (0 when one may now)."""
        now = self.clock()
        with self._lock:
            self._trim(now)
            if len(self._times) < self.limit:
                return 0.0
            return max(0.0, self.window_s - (now - self._times[0]))


class ClientRates:
    """One ``RateLimiter`` per client key, shared by every session of the server (thread-safe). Keys are
    held in memory only; clients with nothing left in their window are forgotten when there are many."""

    def __init__(self, clock=time.monotonic, max_clients: int = 10_000) -> None:
        self.clock, self.max_clients = clock, max_clients
        self._by_client: dict[str, RateLimiter] = {}
        self._lock = threading.Lock()

    def get(self, client: str, limit: int, window_s: float) -> RateLimiter:
        with self._lock:
            limiter = self._by_client.get(client)
            if limiter is None or (limiter.limit, limiter.window_s) != (limit, window_s):
                if len(self._by_client) >= self.max_clients:
                    for key in [k for k, r in self._by_client.items() if r.room() == r.limit]:
                        del self._by_client[key]
                limiter = self._by_client[client] = RateLimiter(limit, window_s, clock=self.clock)
            return limiter
