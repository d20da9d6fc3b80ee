"""The one exception type users see.

Every failure caused by input (a file, a parameter, a config) raises AdapterMergeError with a
message that names the file, module or parameter and what was expected. The CLI prints it as a
single line and exits with status 2; anything else is a bug.
"""


class AdapterMergeError(ValueError):
    """Bad input: the message is complete and fit to show a user as one line."""
