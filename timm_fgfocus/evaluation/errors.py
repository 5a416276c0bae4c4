"""The evaluation's one error type."""

__all__ = ['EvaluationError']


class EvaluationError(ValueError):
    """Evaluation cannot go on for a reason the user can act on; the message is one line naming the
    file, folder or setting."""
