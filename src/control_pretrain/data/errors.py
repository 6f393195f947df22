"""The one error type the data layer raises for bad input: its message names the file and what to do."""


class DatasetError(Exception):
    """A dataset file or folder that cannot be used; ``str(err)`` is a complete, user-facing paragraph."""
