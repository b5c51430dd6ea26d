"""Pruning criteria, one module per method, registered by name (see :mod:`simprune.criteria.base`)."""

from simprune.criteria import _load_builtin  # noqa: F401
from simprune.criteria.base import (
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
