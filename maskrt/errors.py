"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class MaskrtError(Exception):
    """Bad input or an unmet precondition, explained in one line for the user."""
