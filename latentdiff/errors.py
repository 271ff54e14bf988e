"""User-facing errors: each carries a one-line message naming the cause; the CLI prints it and exits 2."""


class LatentDiffError(Exception):
    """A problem with the user's input (path, file, flag, config): shown as one line, no traceback."""
