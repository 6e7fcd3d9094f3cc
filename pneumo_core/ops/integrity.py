"""This server's integrity key, and the seals it puts on model cards.

A model's weights, guard and film-type files are each checked against a sha256 in its card. The card
itself (threshold, temperature, operating points) needs a check that someone who can write ``weights/``
cannot redo: a keyed hash (HMAC-SHA256) under a key kept outside ``weights/`` and outside the audit log.

The key is 32 random bytes in ``$PNEUMO_KEY_FILE`` (default ``~/.config/pneumo/integrity.key``, mode 0600),
made the first time something is sealed. The audit log keys its hash chain with a key derived from it.

A card is accepted when its seal verifies under this key, or, for the version shipped with this code,
when it is byte-for-byte the card that was shipped (``SHIPPED_CARDS``: its sha256, pinned here, so a fresh
clone runs the shipped model without any key). Anything else (an edited card, a card sealed on another
server, one made before cards were sealed) is refused with a message that says which and what to do.

Not protected: someone who can read the key file (the server's own account, or root) can seal anything.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any, Mapping

from pneumo_core.errors import IntegrityKeyError, ModelLoadError

SEAL_FIELD = "seal"
SEAL_ALG = "hmac-sha256"
KEY_BYTES = 32
# Version -> sha256 of its canonical card (``card_digest``). One entry: the version in weights/ shipped with
# this code. Replace it when the shipped version is replaced (tests/test_shipped_model.py checks it).
SHIPPED_CARDS = {
    "20261202-073540": "ec3b4f10e9d830755b78e4ede03c11d4394a3d9dd51394f75918863087ebd648",
}



def key_path() -> Path:
    """``$PNEUMO_KEY_FILE``, else ``$XDG_CONFIG_HOME/pneumo/integrity.key`` (``~/.config`` by default)."""
    if os.environ.get("PNEUMO_KEY_FILE"):
        return Path(os.environ["PNEUMO_KEY_FILE"])
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "pneumo" / "integrity.key"


def _read_key(path: Path) -> bytes:
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise IntegrityKeyError(f"The integrity key {path} cannot be read ({type(exc).__name__}).") from None
    if len(key) != KEY_BYTES:
        raise IntegrityKeyError(f"The integrity key {path} is not {KEY_BYTES} bytes of hex: was it edited?")
    return key


def server_key(*, create: bool = False) -> bytes | None:
    """This server's key; None when there is none and ``create`` is false. Made atomically (a temporary file
    linked into place, so two processes never see a half-written key and only one key wins)."""
    path = key_path()
    if path.exists():
        return _read_key(path)
    if not create:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(KEY_BYTES) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)              # fails if another process made the key first: use theirs
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise IntegrityKeyError(f"The integrity key cannot be made at {path} ({type(exc).__name__}: {exc}); "
                        f"set PNEUMO_KEY_FILE to a writable place outside weights/.") from None
    return _read_key(path)


def derived_key(purpose: str, *, create: bool = False) -> bytes | None:
    """A key for one purpose (``"card"``, ``"audit"``), so a MAC made for one can never pass for the other."""
    key = server_key(create=create)
    return None if key is None else hmac.new(key, f"pneumo {purpose} v1".encode(), hashlib.sha256).digest()


def key_id(key: bytes) -> str:
    """A short public name for a key (which key sealed a card), never the key itself."""
    return hashlib.sha256(b"pneumo key id" + key).hexdigest()[:16]


# --------------------------------------------------------------------------- card seals

def canonical(card: Mapping[str, Any]) -> bytes:
    """The card without its seal, as one canonical JSON text: what the seal and the pins cover."""
    body = {k: v for k, v in card.items() if k != SEAL_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def card_digest(card: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(card)).hexdigest()


def sealed(card: Mapping[str, Any]) -> dict[str, Any]:
    """The card (plain JSON types only: see ``model.write_card``) with a seal under this server's key (the
    key is made when there is none yet)."""
    key = derived_key("card", create=True)
    body = {k: v for k, v in card.items() if k != SEAL_FIELD}
    mac = hmac.new(key, canonical(body), hashlib.sha256).hexdigest()
    return {**body, SEAL_FIELD: {"alg": SEAL_ALG, "key_id": key_id(key), "mac": mac}}


def check_card(card: Mapping[str, Any], name: str) -> None:
    """Accept an unchanged card (see the module's docstring) or raise ModelLoadError saying why not."""
    seal = card.get(SEAL_FIELD)
    key = derived_key("card")
    if isinstance(seal, dict) and key is not None and seal.get("alg") == SEAL_ALG:
        expected = hmac.new(key, canonical(card), hashlib.sha256).hexdigest()
        if hmac.compare_digest(str(seal.get("mac", "")), expected):
            return
    pinned = SHIPPED_CARDS.get(str(card.get("version", "")))
    if pinned and hmac.compare_digest(card_digest(card), pinned):
        return
    refuse = "Refusing to use it."
    trust = "If you know the card is right, seal it on this server: python -m pneumo_core models seal <folder>."
    if pinned:
        why = f"The card of the shipped model {name} differs from the card shipped with this code: it was edited."
    elif not isinstance(seal, dict):
        why = (f"The card of model {name} carries no seal (it was made before cards were sealed, or elsewhere), "
               f"so a change to its threshold or calibration could not be detected.")
    elif key is None or seal.get("key_id") != key_id(key):
        why = (f"The card of model {name} was sealed with another key (on another server, or this server's "
               f"key file {key_path()} was replaced or is missing).")
    else:
        why = f"The card of model {name} was changed after the version was made (its seal does not match)."
        trust = ""
    raise ModelLoadError(" ".join(part for part in (why, refuse, trust) if part))
