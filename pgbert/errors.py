"""User-facing errors: one line naming the problem and the fix, exit code 2."""


class PgbertError(Exception):
    """Bad input from the user. The CLI prints `error: <message>` and exits with code 2."""
