"""One exception type whose message is shown to the user as-is, without a stack trace."""


class DevstackError(Exception):
    """A problem the user can act on (missing tool, no network, port clash, failed server)."""
