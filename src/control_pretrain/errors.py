"""User errors: bad input that the user can fix. ``str(err)`` is a complete paragraph that names the file, key or
flag, what was expected and found, and what to do. Each entry script catches ``UserError`` once
(``cli.exit_on_user_error``) and exits with code 2 and no traceback; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Root of every error the user can fix."""


class DatasetError(UserError):
    """A dataset file or folder that cannot be used (missing, invalid, the wrong layout)."""


class CheckpointError(UserError):
    """A checkpoint or saved agent that cannot be read or does not fit the model it is loaded into."""


class EnvSpecError(UserError, ValueError):
    """An unknown dm_control domain or task; the message lists what exists."""


class CredentialsError(UserError):
    """Azure credentials that are missing, unparsable or refused."""


class ArgumentError(UserError):
    """Command-line options that contradict each other or name something that does not exist."""
