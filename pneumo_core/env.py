"""Numbers a deployment sets through the environment (limits, sign-in backoff), all read one way: a value
that is not a number, or is out of range, gives the default, so a typo in a setting cannot stop the server."""

from __future__ import annotations

import os
from typing import Callable


def env_number(name: str, default: float, *, cast: Callable[[str], float] = float, allow_zero: bool = True) -> float:
    """``$name`` parsed by ``cast`` (``int`` refuses "2.5"); ``default`` when unset, unparsable, negative, or
    zero without ``allow_zero``."""
    try:
        value = cast(os.environ.get(name, default))
    except ValueError:
        return default
    return value if (value >= 0 if allow_zero else value > 0) else default
