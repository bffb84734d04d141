"""The user-error base class and the "did you mean" helper shared by every command.

A :class:`UserError` is bad input or a condition the user must fix: every CLI's ``main`` catches
this one class, prints its message as one line and exits with status 2. Internal errors stay
ordinary exceptions with tracebacks.
"""
from __future__ import annotations

import difflib
import sys
from typing import Callable, Iterable

SUGGESTION_CUTOFF = 0.5


class UserError(Exception):
    """Input the user must change; the message names the flag, key or file and is shown as is."""


class ConfigError(UserError, ValueError):
    """An invalid setting (flag, config key, driver setting)."""


def closest(name: str, valid: Iterable[str], cutoff: float = SUGGESTION_CUTOFF) -> str | None:
    """The valid name closest to ``name``, or None when nothing is close enough."""
    matches = difflib.get_close_matches(name, list(valid), n=1, cutoff=cutoff)
    return matches[0] if matches else None


def suggest(name: str, valid: Iterable[str], cutoff: float = SUGGESTION_CUTOFF) -> str:
    """`` (did you mean 'x'?)`` for the closest valid name, or an empty string."""
    match = closest(name, valid, cutoff)
    return f" (did you mean '{match}'?)" if match else ""


def exit_status(command: Callable[[], str]) -> int:
    """Run a command-line action and print what it returns: 0, or 2 with a :class:`UserError` as one line."""
    try:
        print(command(), end="")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
