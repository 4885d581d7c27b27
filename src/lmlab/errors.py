"""The user-error type, importable without torch (the CLI parser is built from it before any heavy import)."""


class LmlabError(Exception):
    """An error caused by the user's input (config, path, model name...).

    The CLI prints its message as one line and exits non-zero; the message should name the problem
    and, where possible, the fix.
    """
