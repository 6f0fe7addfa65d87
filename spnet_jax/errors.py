"""The one exception type for mistakes a user can fix (a wrong flag, file, field or value).

Commands (cli.run) print a UserError's message alone, without a traceback, and exit with
status 2; anything else is a bug and keeps its traceback. A subclass of ValueError, so code
that catches ValueError keeps working.
"""

USER_ERROR_EXIT_CODE = 2


class UserError(ValueError):
  """Bad input: the message says what is wrong (naming the file, field or value) and what to do."""
