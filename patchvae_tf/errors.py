"""The one exception type for mistakes a user can make (bad flags, missing data)."""


class UserError(Exception):
    """A problem the user caused and can fix; the CLI prints it as one line and exits 2."""
