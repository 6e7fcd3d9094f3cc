"""Roles, the local admin password, and OIDC role mapping. No Streamlit here (``appkit.auth_ui`` uses it).

Two roles. *Viewers* predict, triage and see metrics; *admins* also retrain, promote, roll back and read
the audit log.

- Local default: one admin password, stored only as an argon2id hash (salted, with its parameters) under
  ``[pneumo] admin_password_hash`` in ``.streamlit/secrets.toml``, set with
  ``python -m pneumo_core set-admin-password``. Anyone who opens the app is a viewer; the password makes
  a session admin. Without a hash there is no admin in the app (the CLI still works on the server).
  Wrong passwords slow down the client that typed them (``throttle.py``), not everyone.
- OIDC: when ``secrets.toml`` has an ``[auth]`` section (Streamlit's ``st.login`` settings), everyone signs
  in with the identity provider; an account is admin when its e-mail is in ``[pneumo] admin_emails`` and
  the provider does not say the address is unverified. The local password is then not offered.

The secrets file is read on every check (a password set while the app runs takes effect at once) and is
written atomically with mode 0600, keeping whatever else it holds (comments, the ``[auth]`` section).
"""

from __future__ import annotations

import getpass
import os
import sys
import tomllib
from pathlib import Path
from typing import Any, Mapping

import tomlkit
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from pneumo_core.errors import AuthError
from pneumo_core.files import CHECKOUT, atomic_write_bytes

VIEWER, ADMIN = "viewer", "admin"
SECTION = "pneumo"
HASH_KEY = "admin_password_hash"
ADMIN_EMAILS_KEY = "admin_emails"
MIN_PASSWORD_CHARS = 12



def secrets_path() -> Path:
    """``$PNEUMO_SECRETS`` or ``.streamlit/secrets.toml`` beside app.py (where ``streamlit run`` reads it)."""
    return Path(os.environ.get("PNEUMO_SECRETS") or CHECKOUT / ".streamlit" / "secrets.toml")


def read_secrets(path: str | Path | None = None) -> dict[str, Any]:
    """The secrets file as a dict ({} when there is none); AuthError when it is not valid TOML."""
    path = Path(path) if path else secrets_path()
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AuthError(f"The secrets file {path.name} cannot be read ({type(exc).__name__}: {exc}).") from None


def _hasher():
    return PasswordHasher()   # argon2id, RFC 9106 low-memory profile, random 16-byte salt per hash


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise AuthError(f"The password is too short: use at least {MIN_PASSWORD_CHARS} characters.")
    if password.strip() != password:
        raise AuthError("The password starts or ends with white space; leave it out.")
    if len(set(password)) < 4:
        raise AuthError("The password repeats too few characters; choose a less guessable one.")


def hash_password(password: str) -> str:
    check_password_strength(password)
    return _hasher().hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    """True when ``password`` matches; False on a mismatch; AuthError when the stored hash is not argon2."""
    try:
        return _hasher().verify(stored_hash, password)
    except VerifyMismatchError:
        return False
    except (InvalidHashError, VerificationError):
        raise AuthError("The stored admin password hash is not a valid argon2 hash; set the password again "
                        "with `python -m pneumo_core set-admin-password`.") from None


def admin_password_hash(secrets: Mapping[str, Any]) -> str | None:
    value = (secrets.get(SECTION) or {}).get(HASH_KEY)
    return value if isinstance(value, str) and value else None


def set_admin_password(password: str, path: str | Path | None = None) -> Path:
    """Hash ``password`` and store the hash in the secrets file (created if needed), atomically, mode 0600."""
    path = Path(path) if path else secrets_path()
    stored = hash_password(password)
    try:
        doc = tomlkit.parse(path.read_text(encoding="utf-8")) if path.exists() else tomlkit.document()
    except (OSError, ValueError) as exc:       # tomlkit's parse errors are ValueErrors
        raise AuthError(f"The secrets file {path.name} cannot be read ({type(exc).__name__}); "
                        f"fix or move it, then try again.") from None
    if SECTION not in doc:
        doc[SECTION] = tomlkit.table()
    doc[SECTION][HASH_KEY] = stored
    atomic_write_bytes(path, tomlkit.dumps(doc).encode("utf-8"), mode=0o600)
    return path


# --------------------------------------------------------------------------- OIDC

def oidc_configured(secrets: Mapping[str, Any]) -> bool:
    """Streamlit's ``st.login`` is usable: an ``[auth]`` section with a client, at the top or per provider."""
    auth = secrets.get("auth")
    if not isinstance(auth, Mapping):
        return False
    needed = ("client_id", "server_metadata_url")
    if all(auth.get(k) for k in needed):
        return True
    return any(isinstance(v, Mapping) and all(v.get(k) for k in needed) for v in auth.values())


def oidc_provider(secrets: Mapping[str, Any]) -> str | None:
    """The provider name to pass to ``st.login`` (None: the unnamed top-level one)."""
    auth = secrets.get("auth") or {}
    if auth.get("client_id"):
        return None
    return next((k for k, v in auth.items() if isinstance(v, Mapping) and v.get("client_id")), None)


def admin_emails(secrets: Mapping[str, Any]) -> frozenset[str]:
    value = (secrets.get(SECTION) or {}).get(ADMIN_EMAILS_KEY) or []
    if isinstance(value, str):
        value = [value]
    return frozenset(str(v).strip().lower() for v in value if str(v).strip())


def role_for_user(user: Mapping[str, Any], admins: frozenset[str]) -> str | None:
    """The role of a signed-in OIDC account (None when not signed in)."""
    if not user.get("is_logged_in"):
        return None
    email = str(user.get("email") or "").strip().lower()
    if email and email in admins and user.get("email_verified", True) is not False:
        return ADMIN
    return VIEWER


def read_new_password(stdin: bool = False) -> str:
    """The password typed twice (hidden), or one line from stdin (for scripts)."""
    if stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("New admin password: ")
    if getpass.getpass("Repeat it: ") != first:
        raise AuthError("The two passwords differ; nothing was changed.")
    return first
