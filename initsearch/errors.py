"""The one exception type that means "the user asked for something we cannot do"."""


class UsageError(Exception):
    """Bad input: the message names the problem and the fix, in one line.

    The CLI prints it as ``initsearch: error: <message>`` and exits with code 2, without a
    traceback. Everything that can raise it runs before anything is written to a store.
    """
