"""The error types of the training package: a problem with the user's input, reported as one line,
and Ctrl-C with what the run folder holds."""

__all__ = ['TrainError', 'TrainInterrupted']


class TrainError(Exception):
    """A problem with the user's input: reported as one line, without a stack trace."""


class TrainInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says which checkpoint holds the last complete epoch, if any."""
