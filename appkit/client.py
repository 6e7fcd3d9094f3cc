"""Who a request comes from, as one key for the per-client limits (sign-in backoff, the film rate limit).

The key is the connection's address (``st.context.ip_address``; an IPv6 address by its /64, which one
household or host usually holds whole). Streamlit gives no address for a connection from this machine
itself (a browser on the server, or a reverse proxy running on it): those clients all share the key
``local``. Behind a reverse proxy, set ``PNEUMO_TRUSTED_PROXY=1`` and the key is the last address in
``X-Forwarded-For`` (the one the proxy added), but only when nothing can reach the app except through
that proxy: anyone else can write the header. Without a connection at all (AppTest), the key is the
session's.

The key is held in memory only; what is written to disk is a keyed hash of it (``pneumo_core.ops.throttle``).
"""

from __future__ import annotations

import ipaddress
import os
import secrets

import streamlit as st

SESSION_KEY = "_client_session"     # session: a random id, the key when there is no connection to name


def _address_key(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return "ip:" + address.strip()[:64]
    if ip.version == 6:
        if ip.ipv4_mapped:
            return "ip:" + str(ip.ipv4_mapped)
        return "ip:" + str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return "ip:" + str(ip)


def client_key() -> str:
    """This session's client, as a key for per-client limits (see the module's docstring)."""
    if os.environ.get("PNEUMO_TRUSTED_PROXY") == "1":
        hops = [h for h in (st.context.headers.get("X-Forwarded-For") or "").split(",") if h.strip()]
        if hops:
            return _address_key(hops[-1])
    address = st.context.ip_address
    if isinstance(address, str) and address:     # AppTest gives a mock here, not None
        return _address_key(address)
    if len(st.context.headers):          # a real connection, from this machine
        return "local"
    if SESSION_KEY not in st.session_state:
        st.session_state[SESSION_KEY] = secrets.token_hex(8)
    return "session:" + st.session_state[SESSION_KEY]
