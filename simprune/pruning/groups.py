"""Prunable channel groups, discovered with Torch-Pruning's dependency graph.

A group is the set of coupled channels rooted at one producing layer (a conv or linear). simprune adds
what Torch-Pruning leaves to the caller:

* groups it must not touch: the classifier and user-ignored layers, layers a model declares frozen through
  ``model.simprune_frozen_layers()`` (or ``simprune_untraced_layers()``: not even traced), and any group whose
  channels pass through a channel-padding op
  (``F.pad`` on the channel dimension, as in the option-A shortcut of CIFAR ResNets): Torch-Pruning treats
  the pad as element-wise and would couple mismatched channels, producing a broken model. Those residual
  streams are kept whole; every other group (the blocks' inner channels) stays prunable;
* Torch-Pruning gaps, kept whole instead of crashing: a reshape/concat/split whose channel mapping
  Torch-Pruning cannot infer (the channel shuffle of ShuffleNet, the radix split of ResNeSt, DPN's dual
  path) is recorded on the graph (:func:`build_graph`) and the groups through it are skipped; a group whose
  channels drag other channels of the same root along (a Ghost module's cheap depthwise branch concatenated
  to its primary conv: channel ``i`` couples with ``i + n/2``) is pruned in equal chunks with the same
  positions kept (``ch_groups``), or kept whole when the coupling is irregular (a slice after the concat);
* the layer that consumes the channels (for data-driven criteria and compensation), the BatchNorm right
  after the root, depthwise convs pruned along, and the channel chunking imposed by grouped convs;
* an exact, cheap FLOPs model: the MACs of every conv/linear as a function of the kept count per group,
  so that a FLOPs target is met by search without pruning copies of the model.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.dependency.group import Group as _TPGroup

from simprune.methods.base import Consumer

PRUNABLE_ROOTS = (nn.Conv2d, nn.Conv1d, nn.Linear)

TRACE_BUDGET = 5000
"""Dependencies one group's trace may collect before it is abandoned and the group kept whole. The largest
legitimate group of the zoo sweep has about 200 (DenseNet-201); ReXNet's partial-channel residual adds make
Torch-Pruning's trace loop (20,000 dependencies and still growing, quadratic time: 15 minutes for one model)."""


class _TraceBudgetExceeded(RuntimeError):
    pass


_TRACE = threading.local()
_TP_ADD_DEP = _TPGroup.add_dep


def _budgeted_add_dep(self: Any, dep: Any, idxs: Any) -> Any:
    """Torch-Pruning's ``Group.add_dep``, counting the dependencies of a trace started by :func:`_all_groups`."""
    budget = getattr(_TRACE, "budget", None)
    if budget is not None:
        n = self.__dict__.get("_simprune_deps", 0) + 1
        self._simprune_deps = n
        if n > budget:
            raise _TraceBudgetExceeded(n)
    return _TP_ADD_DEP(self, dep, idxs)


if not getattr(_TPGroup.add_dep, "_simprune", False):  # once per process; inactive outside _all_groups
    _budgeted_add_dep._simprune = True  # type: ignore[attr-defined]
    _TPGroup.add_dep = _budgeted_add_dep


class ChannelMultiple(int):
    """A channel multiple (a ``round_to``) that applies only to groups of at least ``min_channels`` channels.

    The engine's CPU default is one (:func:`simprune.pruning.phases.default_round_to`): on narrow layers a step
    costs accuracy (ResNet-56 at 50% FLOPs: its 64-channel groups rounded to 8, -0.2 points over 3 seeds; its
    16-64-channel groups to 16, -3 points on one; BENCHMARKS.md session 21) where it saves little time. An
    explicit ``round_to`` is a plain int and applies to every group. It compares, prints and serialises as the
    int it is."""

    min_channels: int

    def __new__(cls, multiple: int, min_channels: int) -> ChannelMultiple:
        obj = super().__new__(cls, multiple)
        obj.min_channels = int(min_channels)
        return obj

    def __reduce__(self) -> tuple[type, tuple[int, int]]:
        return (ChannelMultiple, (int(self), self.min_channels))


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
    out_index: dict[str, list[int]] = field(default_factory=dict)
    """Module -> the group channel of each of its output channels, where that is not the identity (convs
    concatenated into the group: each holds a slice of the group's channels)."""

    def step(self, round_to: int | None) -> int:
        """The channel step of this group's kept counts: its chunking times ``round_to``, unless ``round_to`` is
        a :class:`ChannelMultiple` the group is too narrow for."""
        multiple = round_to or 1
        if self.n_channels < getattr(round_to, "min_channels", 0):
            multiple = 1
        return self.ch_groups * multiple

    def min_keep(self, round_to: int | None) -> int:
        return max(self.step(round_to), self.ch_groups)


def module_keep(spec: GroupSpec, module: str, keep: list[int]) -> list[int]:
    """The output channels of ``module`` kept when ``spec`` keeps the group channels ``keep``."""
    index = spec.out_index.get(module)
    if index is None:
        return keep
    kept = set(keep)
    return [local for local, channel in enumerate(index) if channel in kept]


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
    """Layers whose output channels the model itself declares unprunable (``simprune_frozen_layers()``, and
    the ``simprune_untraced_layers()`` of :func:`untraced_layers`)."""
    names: list[str] = []
    for hook in ("simprune_frozen_layers", "simprune_untraced_layers"):
        fn = getattr(model, hook, None)
        names += list(fn()) if callable(fn) else []
    return names


def untraced_layers(model: nn.Module) -> list[str]:
    """Frozen layers whose channel groups are not even traced: the model's ``simprune_untraced_layers()``
    (a windowed transformer's token stream, whose reshapes make Torch-Pruning's index mapping run out of
    memory)."""
    fn = getattr(model, "simprune_untraced_layers", None)
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


_HITS = "_simprune_blocked_hits"
"""Attribute of a graph: why each traversal since the last look was stopped at a node it cannot map."""


class _Blocked:
    """Index mapping put on the edges of a node whose channel mapping Torch-Pruning failed to infer: the group
    traversal stops there (no indices pass) and the hit is recorded on the graph, so the group is kept whole."""

    def __init__(self, graph: Any, why: str) -> None:
        self.graph, self.why = graph, why

    def __call__(self, idxs: Any) -> list[Any]:
        self.graph.__dict__.setdefault(_HITS, []).append(self.why)
        return []


def _block(graph: Any, node: Any, why: str) -> None:
    """Stop every traversal into or out of ``node`` (see :class:`_Blocked`)."""
    neighbours = list(node.inputs) + list(node.outputs)
    deps = list(node.dependencies) + [d for n in neighbours for d in n.dependencies if d.target is node]
    blocked = _Blocked(graph, f"{getattr(node, 'name', 'an op')}: {why}")
    for dep in deps:
        dep.index_mapping[0] = blocked


def _broken_split(node: Any) -> bool:
    """A split mapping Torch-Pruning built with a truncated offset list (a chunk whose outputs it miscounts); it
    would raise IndexError while groups are collected."""
    deps = list(node.dependencies) + [d for n in node.outputs for d in n.dependencies if d.target is node]
    return any(type(m).__name__ == "_SplitIndexMapping" and len(m.offset) != 2 for d in deps for m in d.index_mapping)


def _tolerant(update: Any) -> Any:
    """Wrap one of Torch-Pruning's per-op index-mapping updaters: where it crashes (ZeroDivisionError on a channel
    shuffle's reshape, TypeError on a concat of unknown sizes) or builds a broken split mapping, the node is
    blocked instead (:func:`_block`)."""
    if getattr(update, "_simprune_tolerant", False):
        return update

    @functools.wraps(update)
    def wrapper(graph: Any, node: Any) -> None:
        try:
            update(graph, node)
        except (ZeroDivisionError, TypeError, IndexError, ValueError) as exc:
            _block(graph, node, f"{type(exc).__name__} in Torch-Pruning's {update.__name__}")
            return
        if _broken_split(node):
            _block(graph, node, "a split with more outputs than sizes")

    wrapper._simprune_tolerant = True  # type: ignore[attr-defined]
    return wrapper


def _install_tolerant_index_mapping() -> None:
    from torch_pruning.dependency import index_mapping

    for name in dir(index_mapping):
        if name.startswith("update_") and name.endswith("_index_mapping") and name != "update_index_mapping":
            setattr(index_mapping, name, _tolerant(getattr(index_mapping, name)))


_install_tolerant_index_mapping()


def build_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph for ``model`` traced on ``example`` (nodes whose channel mapping it cannot
    infer are blocked; :func:`discover_groups` keeps the groups that reach them whole)."""
    was_training = model.training
    model.eval()
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example[:1])
    finally:
        model.train(was_training)


def _blocked_reason(dg: tp.DependencyGraph) -> str | None:
    """Why the group just collected was stopped at a blocked node (None when it was not); resets the record."""
    hits = dg.__dict__.setdefault(_HITS, [])
    why = hits[0] if hits else None
    hits.clear()
    return None if why is None else f"reaches {why}: Torch-Pruning cannot map its channels; kept whole"


def _out_fn(module: nn.Module) -> Any:
    return tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels


def _root_closure(dg: tp.DependencyGraph, root: nn.Module, i: int) -> list[int]:
    """The root's own channels that removing channel ``i`` removes (``[i]`` unless the group loops back)."""
    group = dg.get_pruning_group(root, _out_fn(root), [i])
    idxs = {int(j) for item in group
            if item.dep.target.module is root and dg.is_out_channel_pruning_fn(item.dep.handler) for j in item.idxs}
    return sorted(idxs | {i})


def _self_coupling(dg: tp.DependencyGraph, group: tp.Group, root: nn.Module, n: int) -> int | None:
    """Chunks of a group whose channels couple with channels of the same root (1: none; None: irregular).

    Probed only for groups through a concat (where a branch computed from the root can rejoin it)."""
    if not any(item.dep.target.type == tp.ops.OPTYPE.CONCAT for item in group):
        return 1
    try:
        first = _root_closure(dg, root, 0)
    except (IndexError, ValueError, TypeError, ZeroDivisionError):  # Torch-Pruning cannot trace a single channel
        return None
    c = len(first)
    if c == 1:
        return 1
    if n % c or first != [j * (n // c) for j in range(c)]:
        return None
    return c if _root_closure(dg, root, n - 1) == [(j + 1) * (n // c) - 1 for j in range(c)] else None


def _passes_channel_pad(group: tp.Group) -> bool:
    for dep, _ in group:
        for node in (dep.source, dep.target):
            if "ConstantPadNd" in str(node.module) or "ConstantPadNd" in str(getattr(node, "grad_fn", "")):
                return True
    return False


def _passes_channel_slice(group: Any) -> bool:
    """Whether the group's channels go through a slice that cuts the channel dimension (``x[:, 0:c]``): the
    bounds are constants in the model's code, so pruning those channels breaks its forward (ReXNet's partial
    residual add)."""
    for item in group:
        for node in (item.dep.source, item.dep.target):
            op = node.module
            if not isinstance(op, tp.ops._SliceOp):  # noqa: SLF001 (Torch-Pruning's traced slice node)
                continue
            sizes = getattr(op.grad_fn, "_saved_self_sym_sizes", None)
            if not sizes:
                continue
            dim = op.dim % len(sizes)
            if dim in _channel_dims(len(sizes)) and (op.start > 0 or op.end < int(sizes[dim])):
                return True
    return False


def _channel_dims(rank: int) -> set[int]:
    """The dimensions that hold channels in a tensor of this rank (NCHW; NCL or tokens-last; NC)."""
    return {1} if rank == 4 else {1, rank - 1}


def _passes_channel_split(group: Any) -> bool:
    """Whether the group's channels go through ``torch.split`` / ``chunk`` / ``unbind`` on the channel
    dimension: the split sizes are fixed in the model's code (CSPNet's halves, MixNet's kernel groups, Res2Net's
    scales, SKNet's paths), and Torch-Pruning prunes across the pieces without keeping them consistent."""
    for item in group:
        for node in (item.dep.source, item.dep.target):
            if not isinstance(node.module, tp.ops._SplitOp | tp.ops._UnbindOp):  # noqa: SLF001
                continue
            fn = getattr(node, "grad_fn", None)
            sizes, dim = getattr(fn, "_saved_self_sym_sizes", None), getattr(fn, "_saved_dim", None)
            if sizes and dim is not None and dim % len(sizes) in _channel_dims(len(sizes)):
                return True
    return False


def _group_members(dg: tp.DependencyGraph, group: Any, n: int) -> tuple[list[str], list[str],
                                                                         list[tuple[str, str, float]], int,
                                                                         dict[str, list[int]]]:
    """Modules whose output / input channels the group prunes, its FLOPs effects, its channel chunking, and
    where an output module's channels sit in the group's (only where that is not the identity)."""
    out_mods: list[str] = []
    in_mods: list[str] = []
    effects: list[tuple[str, str, float]] = []
    out_index: dict[str, list[int]] = {}
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
            root_idxs = list(getattr(item, "root_idxs", None) or idxs)
            if is_out and (len(idxs) != n or [int(i) for i in idxs] != root_idxs):
                out_index[mname] = [int(r) for _, r in sorted(zip(idxs, root_idxs, strict=True))]
            if isinstance(mod, nn.Conv2d | nn.Conv1d) and mod.groups > 1 and not is_depthwise(mod):
                ch_groups = max(ch_groups, mod.groups)
        if isinstance(mod, nn.GroupNorm):
            ch_groups = max(ch_groups, mod.num_groups)
    return out_mods, in_mods, effects, ch_groups, out_index


def _skip_reason(group: Any, out_mods: list[str], frozen: set[str], ignored: set[str], n: int,
                 ch_groups: int) -> str | None:
    """Why the group cannot be pruned, or None."""
    if any(m in frozen for m in out_mods):
        return "declared frozen by the model (simprune_frozen_layers)"
    if any(m in ignored for m in out_mods):
        return "couples with an ignored layer"
    if _passes_channel_pad(group):
        return "passes through a channel-padding op (option-A shortcut); residual stream kept whole"
    if _passes_channel_slice(group):
        return "passes through a fixed channel slice (x[:, a:b]) in the model's code; kept whole"
    if _passes_channel_split(group):
        return "passes through a channel split (torch.split / chunk) with sizes fixed in the model's code; kept whole"
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


def _all_groups(dg: tp.DependencyGraph, ignored_mods: list[nn.Module], skipped: list[dict[str, str]]) -> Iterator[Any]:
    """Torch-Pruning's ``get_all_groups`` (each prunable root's out-channel group, roots already covered and
    groups touching an ignored layer's outputs left out), with each trace bounded by :data:`TRACE_BUDGET`: a root
    whose trace does not close is recorded in ``skipped`` instead of hanging the job."""
    ignored = {id(m) for m in [*ignored_mods, *dg.IGNORED_LAYERS_IN_TRACING]}
    visited: set[int] = set()
    for m in list(dg.module2node):
        if id(m) in ignored or id(m) in visited or not isinstance(m, PRUNABLE_ROOTS):
            continue
        pruner = dg.get_pruner_of_module(m)
        if pruner is None or pruner.get_out_channels(m) is None:
            continue
        _TRACE.budget = TRACE_BUDGET
        try:
            group = dg.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
        except _TraceBudgetExceeded:
            _blocked_reason(dg)  # forget what the abandoned trace recorded
            skipped.append({"layer": _module_name(dg, m) or str(m), "reason": (
                f"Torch-Pruning's channel trace did not close within {TRACE_BUDGET} dependencies (a loop through "
                "partial-channel adds or reshapes); kept whole")})
            continue
        finally:
            _TRACE.budget = None
        prunable = True
        for item in group:
            if dg.is_out_channel_pruning_fn(item.dep.handler):
                visited.add(id(item.dep.target.module))
                prunable = prunable and id(item.dep.target.module) not in ignored
        if prunable:
            yield group
        else:
            _blocked_reason(dg)  # the next group must not inherit this one's record


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
    untraced = [n for n in untraced_layers(model) if n in modules and n not in ignored]
    ignored_mods = [modules[n] for n in (*ignored, *untraced) if n in modules]

    specs: list[GroupSpec] = []
    skipped: list[dict[str, str]] = []
    _blocked_reason(dg)
    for group in _all_groups(dg, ignored_mods, skipped):
        blocked = _blocked_reason(dg)  # read first: the traversal that collected this group recorded it
        root = group[0].dep.target.module
        name = _module_name(dg, root)
        if name is None:
            continue
        n = root.out_channels if hasattr(root, "out_channels") else root.out_features
        out_mods, in_mods, effects, ch_groups, out_index = _group_members(dg, group, n)
        reason = _skip_reason(group, out_mods, frozen, ignored, n, ch_groups) or blocked
        if not reason:
            chunks = _self_coupling(dg, group, root, n)
            if chunks is None:
                reason = ("its channels are coupled with other channels of the same layer in an irregular pattern "
                          "(a branch computed from it is concatenated back and sliced, as in a Ghost module)")
            else:
                ch_groups = math.lcm(ch_groups, chunks)
                reason = "too few channels" if n <= ch_groups else None
        if reason:
            skipped.append({"layer": name, "reason": reason})
            continue
        spec = GroupSpec(name=name, root=root, n_channels=n, ch_groups=ch_groups, effects=effects,
                         members=sorted(set(out_mods + in_mods)), out_index=out_index)
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
    skipped += [{"layer": n, "reason": "declared frozen by the model, not traced (simprune_untraced_layers)"}
                for n in sorted(untraced, key=lambda x: order.get(x, 1 << 30))
                if isinstance(modules[n], PRUNABLE_ROOTS)]
    return dg, specs, skipped


class FlopsModel:
    """Exact conv/linear MACs of the pruned model as a function of the kept count of each group."""

    def __init__(self, per_layer: list[dict[str, Any]], modules: dict[str, nn.Module], specs: list[GroupSpec]):
        self.rows = [r for r in per_layer if r["flops"] > 0 or r["type"] == "Linear"]
        self.modules = modules
        self.specs = specs

    @functools.cached_property
    def base(self) -> int:
        """MACs per sample with every group whole (the model this FLOPs model was built from)."""
        return self.flops({})

    @functools.cached_property
    def group_names(self) -> frozenset[str]:
        """The names of the groups this model prices."""
        return frozenset(s.name for s in self.specs)

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
