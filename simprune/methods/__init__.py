"""Pruning criteria, one module per method, registered by name (see :mod:`simprune.methods.base`)."""

from simprune.methods import _load_builtin  # noqa: F401
from simprune.methods.base import (
    ChannelGroup,
    Consumer,
    Criterion,
    CriterionError,
    Selection,
    get_criterion,
    list_criteria,
    normalize_scores,
    register_criterion,
)

__all__ = [
    "ChannelGroup",
    "Consumer",
    "Criterion",
    "CriterionError",
    "Selection",
    "get_criterion",
    "list_criteria",
    "normalize_scores",
    "register_criterion",
]
