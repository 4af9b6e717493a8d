"""The error type of the input pipeline."""


class DataError(ValueError):
    """A problem with the data or the data config.

    Every message is one line that names the problem and how to fix it.
    """
