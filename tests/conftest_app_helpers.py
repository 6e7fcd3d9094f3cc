"""AppTest helpers for roles: set the local admin password (in the test's own secrets file) and sign in
through the sidebar form, as a person would."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from appkit.auth_ui import PASSWORD_KEY
from pneumo_core.auth import set_admin_password

ADMIN_PASSWORD = "correct horse battery staple"


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
