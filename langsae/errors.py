"""The one exception type a user should see: a bad input, stated in one line."""


class UserError(Exception):
    """A problem with the user's input or environment, reported as one line, exit code 2."""
