"""Prunable channel groups, discovered with Torch-Pruning's dependency graph.

A group is the set of coupled channels rooted at one producing layer (a conv or linear). simprune adds
what Torch-Pruning leaves to the caller:

* groups it must not touch: the classifier and user-ignored layers, layers a model declares frozen through
  ``model.simprune_frozen_layers()``, and any group whose channels pass through a channel-padding op
  (``F.pad`` on the channel dimension, as in the option-A shortcut of CIFAR ResNets): Torch-Pruning treats
  the pad as element-wise and would couple mismatched channels, producing a broken model. Those residual
  streams are kept whole; every other group (the blocks' inner channels) stays prunable;
* the layer that consumes the channels (for data-driven criteria and compensation), the BatchNorm right
  after the root, depthwise convs pruned along, and the channel chunking imposed by grouped convs;
* an exact, cheap FLOPs model: the MACs of every conv/linear as a function of the kept count per group,
  so that a FLOPs target is met by search without pruning copies of the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from simprune.methods.base import Consumer

PRUNABLE_ROOTS = (nn.Conv2d, nn.Conv1d, nn.Linear)


@dataclass
class GroupSpec:
    """Static description of one prunable group (no tensors beyond module references)."""

    name: str
    root: nn.Module
    n_channels: int
    ch_groups: int = 1
    bn: nn.BatchNorm2d | None = None
    bn_name: str | None = None
    consumers: list[Consumer] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    feature_point: str = "root"  # "consumer:<name>" | "bn:<name>" | "root"
    consumer_bns: dict[str, nn.Module] = field(default_factory=dict)
    """For each consumer, the BatchNorm that directly normalises its output (where a bias can be folded)."""
    # (module name, "out"|"in", channels removed per channel of this group) for the FLOPs model
    effects: list[tuple[str, str, float]] = field(default_factory=list)

    def min_keep(self, round_to: int | None) -> int:
        step = self.ch_groups * (round_to or 1)
        return max(step, self.ch_groups)


def is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d | nn.Conv1d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def default_ignored(model: nn.Module) -> list[str]:
    """The classifier: the last Linear (or last conv when there is no Linear) in definition order."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        return [linears[-1]]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return convs[-1:]


def frozen_layers(model: nn.Module) -> list[str]:
    """Layers whose output channels the model itself declares unprunable."""
    fn = getattr(model, "simprune_frozen_layers", None)
    return list(fn()) if callable(fn) else []


def _module_name(dg: tp.DependencyGraph, module: Any) -> str | None:
    return dg._module2name.get(module)  # noqa: SLF001 (Torch-Pruning keeps the name map private)


def _execution_order(model: nn.Module, example: torch.Tensor) -> tuple[dict[str, int], dict[str, str]]:
    """Forward order of leaf modules, and for each conv/linear the BatchNorm that directly consumes its output."""
    order: dict[str, int] = {}
    producer: dict[int, str] = {}
    follow_bn: dict[str, str] = {}
    hooks = []

    def hook(name: str):
        def fn(mod: nn.Module, inp: Any, out: Any) -> None:
            order.setdefault(name, len(order))
            if isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d) and inp and isinstance(inp[0], torch.Tensor):
                src = producer.get(id(inp[0]))
                if src is not None:
                    follow_bn.setdefault(src, name)
            if isinstance(out, torch.Tensor):
                producer[id(out)] = name

        return fn

    for name, mod in model.named_modules():
        if len(list(mod.children())) == 0:
            hooks.append(mod.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return order, follow_bn


def build_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph for ``model`` traced on ``example``."""
    was_training = model.training
    model.eval()
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example[:1])
    finally:
        model.train(was_training)


def _passes_channel_pad(group: tp.Group) -> bool:
    for dep, _ in group:
        for node in (dep.source, dep.target):
            if "ConstantPadNd" in str(node.module) or "ConstantPadNd" in str(getattr(node, "grad_fn", "")):
                return True
    return False


def _group_members(dg: tp.DependencyGraph, group: Any, n: int) -> tuple[list[str], list[str],
                                                                         list[tuple[str, str, float]], int]:
    """Modules whose output / input channels the group prunes, its FLOPs effects, and its channel chunking."""
    out_mods: list[str] = []
    in_mods: list[str] = []
    effects: list[tuple[str, str, float]] = []
    ch_groups = 1
    for item in group:
        dep, idxs = item.dep, item.idxs
        mod = dep.target.module
        mname = _module_name(dg, mod)
        if mname is None or not isinstance(mod, nn.Module):
            continue
        is_out = dg.is_out_channel_pruning_fn(dep.handler)
        (out_mods if is_out else in_mods).append(mname)
        if isinstance(mod, PRUNABLE_ROOTS):
            effects.append((mname, "out" if is_out else "in", len(idxs) / n))
            if isinstance(mod, nn.Conv2d | nn.Conv1d) and mod.groups > 1 and not is_depthwise(mod):
                ch_groups = max(ch_groups, mod.groups)
        if isinstance(mod, nn.GroupNorm):
            ch_groups = max(ch_groups, mod.num_groups)
    return out_mods, in_mods, effects, ch_groups


def _skip_reason(group: Any, out_mods: list[str], frozen: set[str], ignored: set[str], n: int,
                 ch_groups: int) -> str | None:
    """Why the group cannot be pruned, or None."""
    if any(m in frozen for m in out_mods):
        return "declared frozen by the model (simprune_frozen_layers)"
    if any(m in ignored for m in out_mods):
        return "couples with an ignored layer"
    if _passes_channel_pad(group):
        return "passes through a channel-padding op (option-A shortcut); residual stream kept whole"
    if n <= ch_groups:
        return "too few channels"
    return None


def _consumers(modules: dict[str, nn.Module], in_mods: list[str], order: dict[str, int], n: int) -> list[Consumer]:
    """The layers reading exactly the group's channels (plain convs / linears), in execution order."""
    consumers = []
    for m in sorted(set(in_mods), key=lambda x: order.get(x, 1 << 30)):
        mod = modules[m]
        if not isinstance(mod, PRUNABLE_ROOTS) or is_depthwise(mod):
            continue
        width = mod.in_channels if hasattr(mod, "in_channels") else mod.in_features
        if width == n and getattr(mod, "groups", 1) == 1:
            consumers.append(Consumer(name=m, module=mod, offset=0))
    return consumers


def discover_groups(
    model: nn.Module,
    example: torch.Tensor,
    ignored_layers: list[str] | None = None,
    dg: tp.DependencyGraph | None = None,
) -> tuple[tp.DependencyGraph, list[GroupSpec], list[dict[str, str]]]:
    """All prunable groups of ``model`` in a deterministic order, the graph, and the groups skipped (with why)."""
    dg = dg or build_graph(model, example)
    modules = dict(model.named_modules())
    ignored = set(default_ignored(model) if ignored_layers is None else ignored_layers)
    frozen = set(frozen_layers(model))
    order, follow_bn = _execution_order(model, example)
    ignored_mods = [modules[n] for n in ignored if n in modules]

    specs: list[GroupSpec] = []
    skipped: list[dict[str, str]] = []
    for group in dg.get_all_groups(ignored_layers=ignored_mods, root_module_types=PRUNABLE_ROOTS):
        root = group[0].dep.target.module
        name = _module_name(dg, root)
        if name is None:
            continue
        n = root.out_channels if hasattr(root, "out_channels") else root.out_features
        out_mods, in_mods, effects, ch_groups = _group_members(dg, group, n)
        reason = _skip_reason(group, out_mods, frozen, ignored, n, ch_groups)
        if reason:
            skipped.append({"layer": name, "reason": reason})
            continue
        spec = GroupSpec(name=name, root=root, n_channels=n, ch_groups=ch_groups, effects=effects,
                         members=sorted(set(out_mods + in_mods)))
        bn_name = follow_bn.get(name)
        if bn_name and bn_name in out_mods:
            spec.bn, spec.bn_name = modules[bn_name], bn_name
        spec.depthwise = [m for m in out_mods if is_depthwise(modules[m]) and m != name]
        spec.consumers = consumers = _consumers(modules, in_mods, order, n)
        spec.consumer_bns = {c.name: modules[follow_bn[c.name]] for c in consumers if c.name in follow_bn}
        if consumers:
            spec.feature_point = f"consumer:{consumers[0].name}"
        elif spec.bn_name:
            spec.feature_point = f"bn:{spec.bn_name}"
        specs.append(spec)
    specs.sort(key=lambda s: order.get(s.name, 1 << 30))
    return dg, specs, skipped


class FlopsModel:
    """Exact conv/linear MACs of the pruned model as a function of the kept count of each group."""

    def __init__(self, per_layer: list[dict[str, Any]], modules: dict[str, nn.Module], specs: list[GroupSpec]):
        self.rows = [r for r in per_layer if r["flops"] > 0 or r["type"] == "Linear"]
        self.modules = modules
        self.specs = specs

    def flops(self, keep: dict[str, int]) -> int:
        """MACs per sample when group ``name`` keeps ``keep[name]`` channels (absent = all kept)."""
        removed_out: dict[str, float] = {}
        removed_in: dict[str, float] = {}
        for spec in self.specs:
            k = keep.get(spec.name, spec.n_channels)
            r = spec.n_channels - k
            if r <= 0:
                continue
            for mname, kind, mult in spec.effects:
                target = removed_out if kind == "out" else removed_in
                target[mname] = target.get(mname, 0.0) + r * mult
        total = 0.0
        for row in self.rows:
            name, f = row["name"], row["flops"]
            cin, cout = row["in_channels"], row["out_channels"]
            mod = self.modules.get(name)
            ro, ri = removed_out.get(name, 0.0), removed_in.get(name, 0.0)
            if mod is not None and is_depthwise(mod):
                r = max(ro, ri)
                total += f * (cout - r) / cout
            else:
                total += f * ((cout - ro) / cout) * ((cin - ri) / cin)
        return int(round(total))
