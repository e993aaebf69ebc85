"""User-facing errors: one exception type, printed as one short line by every entry point.

A `UserError` means the input or the config is wrong, not the code: its message names the file,
field or value at fault and says how to fix it. Entry points print it without a traceback and exit
with status 2, the convention for usage errors.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """Bad input or configuration; the message says what and how to fix it."""


def exit_on_user_error(fn: Callable[..., T]) -> Callable[..., T]:
    """Wrap a Hydra task function so a `UserError` ends the program with a short message.

    Hydra catches `Exception` and prints a stack trace; `SystemExit` passes through it.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return wrapper
