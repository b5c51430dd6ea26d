"""Exceptions the engine raises on purpose. Callers map them to exit code 2 (CLI) or a 4xx (API)."""


class SimpruneError(Exception):
    """Base class for errors simprune raises deliberately."""


class InputError(SimpruneError, ValueError):
    """The caller's input is unusable (bad checkpoint, wrong architecture, bad dataset, bad option)."""


class UnsafeInputError(InputError):
    """The input was refused because loading it could execute code or exhaust resources."""


class ExportMismatchError(SimpruneError):
    """An exported model's outputs differ from the in-memory pruned model by more than the tolerance."""


class JobCancelled(SimpruneError):
    """Raised between stages/batches when the caller asked to cancel."""
