"""Every method a job can name: the pruning criteria plus the training-time methods ``dcff`` and ``ssc``."""

from __future__ import annotations

from typing import Any

from simprune.dcff import T_END, T_K, T_START

TRAINING_METHODS: tuple[dict[str, Any], ...] = (
    {
        "name": "dcff",
        "summary": "Dynamic-coded filter fusion (Lin et al. 2021): trains the compact network from the checkpoint; "
                   "each kept filter is a temperature-softmax blend of the layer's filters, chosen by a KL "
                   "criterion. Needs training data and epochs; uniform ratio over the fusable convs.",
        "needs_data": False,
        "needs_training_data": True,
        "options": [
            {"name": "t_start", "type": "float", "default": T_START,
             "help": "initial temperature; raise it (e.g. 10-100) for short runs from a pretrained checkpoint"},
            {"name": "t_end", "type": "float", "default": T_END, "help": "final temperature"},
            {"name": "k", "type": "float", "default": T_K, "help": "steepness of the tanh temperature schedule"},
        ],
    },
    {
        "name": "ssc",
        "summary": "Structured sparse convolution (Verma et al. 2023, documented formulation): each filter sees "
                   "a k x k window of g input channels and a 1x1 window of p more; trained, then exported as "
                   "grouped/pointwise or masked dense convs. g follows the FLOPs target or ratio unless given.",
        "needs_data": False,
        "needs_training_data": True,
        "options": [
            {"name": "g", "type": "int|float", "default": None,
             "help": "k x k window: channel count (int) or fraction of C_in (float); default from the target"},
            {"name": "p", "type": "int|float", "default": 0, "help": "1x1 window: channel count or fraction"},
            {"name": "aligned", "type": "bool", "default": False, "help": "grouped-conv windows (exact export)"},
            {"name": "channel_stride", "type": "int", "default": None, "help": "window start step per filter"},
            {"name": "reinit", "type": "bool", "default": False,
             "help": "re-initialise converted layers (pruning at initialisation) instead of masking the weights"},
            {"name": "skip_stem", "type": "bool", "default": True, "help": "leave the first conv dense"},
        ],
    },
)


def list_methods() -> list[dict[str, Any]]:
    """The criteria (``needs_training_data: False``) followed by dcff and ssc, each a JSON-able dict:
    ``name``, ``summary``, ``needs_data`` (calibration data), ``needs_training_data``, ``options``."""
    from simprune.criteria import list_criteria

    out = [{**c, "needs_training_data": False} for c in list_criteria()]
    return out + [dict(m, options=[dict(o) for o in m["options"]]) for m in TRAINING_METHODS]
