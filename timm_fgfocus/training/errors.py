"""The error type of the training package: a problem with the user's input, reported as one line."""

__all__ = ['TrainError']


class TrainError(Exception):
    """A problem with the user's input: reported as one line, without a stack trace."""
