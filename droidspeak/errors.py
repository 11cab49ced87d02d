"""Errors a user can act on.

Every error that reaches the CLI or the HTTP API is a :class:`DroidspeakError`; its message is one
line that says what was wrong and, where there is one, what to do instead. Anything else that
escapes is a bug.
"""


class DroidspeakError(Exception):
    """A user-facing error with a one-line message."""


class UnknownModelError(DroidspeakError):
    """A model name that is neither registered nor a path to a model directory."""


class IncompatibleModelsError(DroidspeakError):
    """Two models that may not share caches (different family), or an adapter for another base."""


class WeightFileError(DroidspeakError):
    """A weight file that is missing, corrupt or truncated."""


class PlanError(DroidspeakError):
    """A recompute plan that cannot be parsed or does not fit the model."""
