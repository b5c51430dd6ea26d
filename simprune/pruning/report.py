"""Rows of a pruning report shared by every path that prunes (``prune()``, the job pipeline, DCFF, SSC)."""

from __future__ import annotations

from typing import Any


def per_layer_rows(before_counts: dict[str, Any], after_counts: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per layer of ``after_counts`` (a :func:`simprune.flops.count_model` result): ``name``,
    ``type``, ``channels_before``/``after``, ``in_channels_before``/``after``, ``flops_before``/``after``.

    A layer missing from ``before_counts`` reports its after values as before values.
    """
    before_by = {r["name"]: r for r in before_counts["per_layer"]}
    rows = []
    for r in after_counts["per_layer"]:
        b = before_by.get(r["name"], r)
        rows.append({
            "name": r["name"], "type": r["type"],
            "channels_before": b["out_channels"], "channels_after": r["out_channels"],
            "in_channels_before": b["in_channels"], "in_channels_after": r["in_channels"],
            "flops_before": b["flops"], "flops_after": r["flops"],
        })
    return rows
