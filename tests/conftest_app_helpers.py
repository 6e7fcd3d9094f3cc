"""AppTest helpers for roles: set the local admin password (in the test's own secrets file) and sign in
through the sidebar form, as a person would."""

from __future__ import annotations

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from appkit.auth_ui import PASSWORD_KEY
from pneumo_core.ops.auth import set_admin_password

ADMIN_PASSWORD = "correct horse battery staple"
_MENU: list[str] = []


@pytest.fixture(autouse=True)
def record_menu(monkeypatch):
    """Autouse where imported: records the page titles that app.py's ``st.navigation`` shows in the menu. AppTest
    only knows the registered pages, and a viewer's admin pages are registered too (hidden), so that a direct URL
    reaches their "for administrators" page."""
    real = st.navigation

    def navigation(pages, **kwargs):
        if kwargs.get("position", "sidebar") != "hidden":        # not the frame's own rerun (appkit/frame.py)
            _MENU[:] = [p.title for p in pages if p.visibility == "visible"]
        return real(pages, **kwargs)

    monkeypatch.setattr(st, "navigation", navigation)
    _MENU.clear()
    yield
    _MENU.clear()


def menu_titles() -> list[str]:
    """The titles in the navigation menu of the app's last run (needs ``record_menu``)."""
    return list(_MENU)


def set_password(password: str = ADMIN_PASSWORD) -> None:
    set_admin_password(password)          # PNEUMO_SECRETS points into the test's temporary folder (conftest)


def sign_in(at: AppTest, password: str = ADMIN_PASSWORD) -> AppTest:
    """Type the password into the sidebar form and submit it."""
    box = next(t for t in at.text_input if t.key == PASSWORD_KEY)
    box.input(password)
    next(b for b in at.button if b.label == "Sign in").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at
