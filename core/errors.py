"""The one exception type a user is meant to read."""


class UserError(Exception):
    """Something the user can fix (bad input, missing or damaged file); the message says what to do.

    Command lines and the app print only the message, never a traceback.
    """
