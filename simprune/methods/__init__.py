"""Every method a job can name, one module per method, in one registry (:mod:`simprune.methods.registry`).

Selection criteria (``l1``, ``qsfm``, ...) implement the :class:`Criterion` contract of
:mod:`simprune.methods.base`; training methods (``dcff``, ``ssc``) implement :meth:`Method.run` themselves.
"""

from simprune.methods.base import (
    ChannelGroup,
    Consumer,
    Criterion,
    CriterionError,
    Method,
    MethodResult,
    RunContext,
    Selection,
    normalize_scores,
    option,
)
from simprune.methods.registry import (
    get_criterion,
    get_method,
    list_criteria,
    list_methods,
    load_methods,
    method_class,
    register_method,
)

__all__ = [
    "ChannelGroup",
    "Consumer",
    "Criterion",
    "CriterionError",
    "Method",
    "MethodResult",
    "RunContext",
    "Selection",
    "get_criterion",
    "get_method",
    "list_criteria",
    "list_methods",
    "load_methods",
    "method_class",
    "normalize_scores",
    "option",
    "register_method",
]
