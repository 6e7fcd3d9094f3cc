"""Who is using this session (viewer or admin), the sidebar sign-in, and audit events from the app.

The rules live in ``pneumo_core.ops.auth``; this module keeps the role in ``st.session_state`` (local
password) or reads it from ``st.user`` (OIDC), and checks it again at every admin page and every admin
action (a button's callback re-checks: a stale page or a hand-made request gets nothing).
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets as _secrets
import time
from typing import Any, Mapping

import streamlit as st

from pneumo_core.errors import AuditError, AuthError, ThrottleError
from pneumo_core.ops import audit
from pneumo_core.ops.auth import (
    ADMIN,
    VIEWER,
    admin_emails,
    admin_password_hash,
    oidc_configured,
    oidc_provider,
    read_secrets,
    role_for_user,
    verify_password,
)
from pneumo_core.ops.throttle import SignInThrottle

from . import client

ROLE_KEY = "_auth"                  # session: {"role", "actor", "hash_id", "seen"} after a local admin sign-in
SESSION_KEY = "_audit_session"      # session: a random id (not derived from anything about the user)
PASSWORD_KEY = "_admin_password"
ADMIN_IDLE_S = 30 * 60              # a local admin session falls back to viewer after this much inactivity
AUDIT_WARNED_KEY = "_audit_warned"
ENDED_KEY = "_auth_ended"           # session: why an admin session just ended (shown once in the sidebar)
log = logging.getLogger("pneumo.app")


@st.cache_resource
def _throttle() -> SignInThrottle:
    """One per server process (it holds the key that hashes client keys); the counts are in its file, so
    they hold across sessions and a reload, and the CLI can clear them."""
    return SignInThrottle()


def session_id() -> str:
    if SESSION_KEY not in st.session_state:
        st.session_state[SESSION_KEY] = _secrets.token_hex(8)
    return st.session_state[SESSION_KEY]


def _secrets_or_error() -> tuple[dict[str, Any], str | None]:
    try:
        return read_secrets(), None
    except AuthError as exc:
        return {}, str(exc)


def _hash_id(stored: str | None) -> str | None:
    return hashlib.sha256(stored.encode()).hexdigest()[:16] if stored else None


def current() -> tuple[str | None, str | None]:
    """(role, actor) of this session; role None means an OIDC sign-in is required first."""
    conf, _ = _secrets_or_error()
    if oidc_configured(conf):
        user = st.user.to_dict()
        role = role_for_user(user, admin_emails(conf))
        return role, (str(user.get("email") or user.get("sub") or "signed-in user") if role else None)
    state = st.session_state.get(ROLE_KEY)
    if state and state.get("role") == ADMIN:
        if not (why := _local_refusal(state, conf)):
            return ADMIN, state.get("actor", "local-admin")
        _end_admin(why)
    return VIEWER, VIEWER


def _local_refusal(state: dict[str, Any], conf: Mapping[str, Any]) -> str | None:
    """Why a local admin session no longer holds (the password changed since it signed in, or it idled),
    else None, and its idle clock restarts."""
    if state.get("hash_id") != _hash_id(admin_password_hash(conf)):
        return "password changed"
    now = time.monotonic()
    if now - state.get("seen", 0) > ADMIN_IDLE_S:
        return "idle timeout"
    state["seen"] = now
    return None


def _end_admin(reason: str) -> None:
    if state := st.session_state.pop(ROLE_KEY, None):
        state["ended"] = True           # a credential held by a download callable ends with it
        st.session_state[ENDED_KEY] = f"Your admin session ended ({reason}). Sign in again to continue."
        audit_event("sign_out", "succeeded", detail=reason, role=ADMIN, actor="local-admin")


# --------------------------------------------------------------------------- audit

def audit_event(action: str, result: str, *, role: str | None = None, actor: str | None = None,
                **fields: Any) -> bool:
    """Record an event for this session; False (and one toast per session) when the log cannot be written."""
    if role is None:
        role, actor = current()
    return _write([audit.event(action, role=role or "anonymous", actor=actor, session=session_id(), result=result,
                               **fields)])


def audit_events(action: str, items: list[dict[str, Any]]) -> bool:
    """Several events of one action in one transaction (a triage batch); same failure handling."""
    role, actor = current()
    return _write([audit.event(action, role=role or "anonymous", actor=actor, session=session_id(), **f)
                   for f in items])


def _write(rows: list[list]) -> bool:
    try:
        audit.record_many(rows)
        return True
    except AuditError as exc:
        log.error("audit log: %s", exc)
        if not st.session_state.get(AUDIT_WARNED_KEY):       # once per session, not on every rerun
            st.session_state[AUDIT_WARNED_KEY] = True
            st.toast(f"The audit log cannot be written: {exc} Tell your administrator.", icon=":material/error:")
        return False


def audit_once(key: tuple, action: str, result: str, **fields: Any) -> None:
    """``audit_event`` once per ``key`` in this session (reruns redraw results; they are not new events)."""
    done = st.session_state.setdefault("_audited", set())
    if key not in done and audit_event(action, result, **fields):
        done.add(key)


def require_admin_action(action: str) -> str | None:
    """None when this session may perform an admin action now, else why not (and the refusal is audited)."""
    role, _ = current()
    if role != ADMIN:
        audit_event(action, "denied", detail="not an admin")
        return "This action needs the admin role. Sign in as admin in the sidebar."
    if why := audit.writable():
        return f"Admin actions are refused while the audit log cannot be written. {why}"
    return None


def admin_credential() -> dict[str, Any] | None:
    """What makes this session admin now, for a check later outside the script (a download's data
    callable runs on a server thread, without ``st.session_state`` or ``st.user``); None: not admin."""
    if current()[0] != ADMIN:
        return None
    conf, _ = _secrets_or_error()
    if oidc_configured(conf):
        return {"oidc": st.user.to_dict()}
    return {"local": st.session_state[ROLE_KEY]}      # the same dict: signing out or a timeout marks it ended


def admin_refusal_now(credential: dict[str, Any] | None) -> str | None:
    """None when ``credential`` (from ``admin_credential``) still makes an admin at this moment, else why not:
    the password or the admin list changed, the session signed out or idled, or the secrets are unreadable.
    Needs no script context, so a download's data callable can call it when it runs."""
    if not credential:
        return "not an admin"
    conf, error = _secrets_or_error()
    if error:
        return "the admin settings cannot be read"
    if "oidc" in credential:
        if not oidc_configured(conf) or role_for_user(credential["oidc"], admin_emails(conf)) != ADMIN:
            return "no longer an admin"
        return None
    state = credential.get("local") or {}
    if oidc_configured(conf) or state.get("role") != ADMIN or state.get("ended"):
        return "admin session ended"
    return _local_refusal(state, conf)


def require_admin_page(name: str) -> None:
    """First lines of an admin page: anyone else gets a message and nothing more, also on a direct URL."""
    if current()[0] != ADMIN:
        audit_event("open_page", "denied", detail=name)
        st.error("**This page is for administrators.** Sign in as admin in the sidebar to use it.",
                 icon=":material/lock:")
        st.stop()


# --------------------------------------------------------------------------- sign-in UI

def signin_gate() -> str:
    """With OIDC configured, nobody goes further without signing in; returns the session's role. A secrets
    file that cannot be read stops everything (it may hold the sign-in settings: fail closed)."""
    conf, error = _secrets_or_error()
    if error:
        st.error(f"**The app cannot start: its settings are unreadable.** {error} Tell your administrator.",
                 icon=":material/lock:")
        st.stop()
    role, _ = current()
    if role is not None:
        return role
    st.title("Pneumonia decision support")
    st.info("Sign in with your hospital account to continue.", icon=":material/login:")
    st.button("Sign in", type="primary", icon=":material/login:", key="oidc_login",
              on_click=st.login, args=(oidc_provider(conf),) if oidc_provider(conf) else ())
    st.stop()


def _try_password() -> None:
    """Form callback: check the password (slowed per client), set the role, audit either way, forget the
    password."""
    password = st.session_state.get(PASSWORD_KEY) or ""
    st.session_state[PASSWORD_KEY] = ""
    conf, error = _secrets_or_error()
    stored = admin_password_hash(conf)
    who = client.client_key()
    try:
        wait = _throttle().attempt(who)          # counted as a failure until the password is right
    except ThrottleError as exc:                 # fail closed: no unthrottled guessing
        log.error("sign-in throttle: %s", exc)
        st.session_state["_auth_msg"] = f"Sign-in is unavailable: {exc} Tell your administrator."
        audit_event("sign_in", "error", role=VIEWER, actor=VIEWER, detail="throttle unavailable")
        return
    if wait > 0:
        st.session_state["_auth_msg"] = f"Too many failed attempts from here. Try again in {math.ceil(wait)} s."
        audit_event("sign_in", "throttled", role=VIEWER, actor=VIEWER)
        return
    try:
        ok = bool(stored) and bool(password) and verify_password(stored, password)
    except AuthError as exc:
        st.session_state["_auth_msg"] = str(exc)
        return
    if not ok:
        st.session_state["_auth_msg"] = "Wrong password." + _next_try(who)
        audit_event("sign_in", "denied", role=VIEWER, actor=VIEWER)
        return
    try:
        _throttle().succeeded(who)
    except ThrottleError as exc:                 # the sign-in stands; this client's count stays until it expires
        log.error("sign-in throttle: %s", exc)
    st.session_state[ROLE_KEY] = {"role": ADMIN, "actor": "local-admin", "hash_id": _hash_id(stored),
                                  "seen": time.monotonic()}
    st.session_state.pop("_auth_msg", None)
    audit_event("sign_in", "succeeded", role=ADMIN, actor="local-admin")


def _next_try(who: str) -> str:
    try:
        wait = _throttle().wait_s(who)
    except ThrottleError:
        return ""
    return f" Too many failed attempts from here: wait {math.ceil(wait)} s before the next try." if wait > 0 else ""


def _sign_out() -> None:
    if state := st.session_state.pop(ROLE_KEY, None):
        state["ended"] = True
        audit_event("sign_out", "succeeded", role=ADMIN, actor="local-admin")


def account_sidebar_ui() -> None:
    """The sidebar's account block: who is signed in, and the way in or out."""
    conf, error = _secrets_or_error()
    role, actor = current()
    with st.sidebar:
        st.markdown("#### Account")
        if error:
            st.error(error)
        if oidc_configured(conf):
            st.caption(f"Signed in as {actor} · {role}")
            st.button("Sign out", key="oidc_logout", icon=":material/logout:", on_click=st.logout)
            return
        if role == ADMIN:
            st.caption(f"Admin session (ends after {ADMIN_IDLE_S // 60} min without activity).")
            st.button("Sign out", key="admin_logout", icon=":material/logout:", on_click=_sign_out)
            return
        if ended := st.session_state.pop(ENDED_KEY, None):
            st.warning(ended, icon=":material/lock_clock:")
        st.caption("Viewer: predict, triage and metrics.")
        if not admin_password_hash(conf):
            st.caption("No admin password is set on this server (`python -m pneumo_core set-admin-password`).")
            return
        with st.expander("Admin sign-in"):
            with st.form("admin_signin", clear_on_submit=True, border=False):
                st.text_input("Admin password", type="password", key=PASSWORD_KEY, autocomplete="current-password")
                st.form_submit_button("Sign in", on_click=_try_password, icon=":material/key:")
            if msg := st.session_state.pop("_auth_msg", None):
                st.error(msg)
