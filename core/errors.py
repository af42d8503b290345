"""The one exception type a user is meant to read, and how command lines report it."""

import functools
import sys
from collections.abc import Callable


class UserError(Exception):
    """Something the user can fix (bad input, missing or damaged file); the message says what to do.

    Command lines and the app print only the message, never a traceback.
    """


def command_line(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap a command's ``main``: a UserError becomes one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            return main(argv) or 0
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2

    return run
