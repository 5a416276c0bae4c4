"""The package's error types for problems a user can act on, and the one way to shorten an error.

Each is reported by the command lines as one line on stderr, without a stack trace. Errors that
belong to one module stay beside it (``CheckpointError`` in :mod:`.checkpoint`, ``RecipeError`` in
:mod:`.recipes`, ``PredictError`` in :mod:`.predict`, ``HubUploadError`` in :mod:`.hub`, ...).
"""

__all__ = ['TrainError', 'TrainInterrupted', 'EvaluationError', 'first_line']


class TrainError(Exception):
    """A problem with the user's input to ``train_fg``: one line, naming the flag, file or value."""


class TrainInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says which checkpoint holds the last complete epoch, if any."""


class EvaluationError(ValueError):
    """Evaluation cannot go on for a reason the user can act on; one line naming the file, folder or setting."""


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first non-empty line of ``str(e)``, at most ``limit`` characters; the type name when empty."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[0].strip()[:limit] if lines else type(e).__name__
