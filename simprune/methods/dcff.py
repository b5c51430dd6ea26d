"""DCFF: dynamic-coded filter fusion (Lin et al., arXiv 2107.06916; reference code github.com/lmbxmu/DCFF).

A training-time method, implemented as ``../shared/METHODS.md`` specifies. For a conv layer with C filters
and m = floor(C * (1 - r)) kept:

- D[j, k] = ||F_j - F_k||_2 between flattened filters;
- temperature T(e) = T_s + (T_e - T_s) * tanh(k e / 2) / tanh(k E / 2) (T_s = 1, T_e = 1e4, k = 1,
  e = current epoch, E = total epochs);
- p_j = softmax_k(-D[j, k] * T); KL[j, k] = mean_i p_j(i) log(p_j(i) / (p_k(i) + 1e-7));
  score_j = sum_k KL[j, k]; the m highest scores are kept. Computed with log-probabilities (log-softmax),
  so an underflowing probability contributes its limit (p log p -> 0) instead of NaN: the selection keeps
  working at large T, where a literal evaluation would fall back to the previous epoch's choice for good.
  At very large T every filter is equally distinct (tied scores); ties keep the previous epoch's filters;
- the compact layer's weight is P @ W (bias P @ b) with P (m x C) the kept filters' distributions,
  recomputed from detached weights at the start of every epoch; gradients reach all C filters.

With few epochs T stays small (one epoch: T = T_s = 1 throughout), so P blends many filters and a
pretrained network starts far from its checkpoint; short runs from a checkpoint should raise ``t_start``
(so that P is close to a row selector from the first epoch).

The network is physically compact while it trains: a :class:`FusedConv2d` holds the full (C-filter) weight
and emits m channels, and Torch-Pruning's dependency graph shrinks what consumes them (the following
BatchNorm to m, the next conv's or linear's input channels to m). Only layers whose output channels feed
nothing else that must stay aligned are eligible (inner channels of residual blocks, plain chains such as
VGG); layers named by a model's ``simprune_frozen_layers()`` are never touched. Afterwards the fused
weights are materialised into ordinary ``nn.Conv2d`` layers.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.utils.data import Dataset

from simprune.device import select_device
from simprune.errors import InputError
from simprune.finetune import FinetuneConfig, FinetuneProgressFn, FinetuneResult, finetune
from simprune.methods.base import Method, MethodResult, RunContext, option
from simprune.methods.registry import register_method
from simprune.pruning.groups import frozen_layers

T_START = 1.0
T_END = 1e4
T_K = 1.0
KL_EPS = 1e-7


def dcff_temperature(epoch: float, epochs: int, t_start: float = T_START, t_end: float = T_END,
                     k: float = T_K) -> float:
    """T(e) = T_s + (T_e - T_s) * tanh(k e / 2) / tanh(k E / 2)."""
    if epochs < 1:
        raise InputError("DCFF needs at least one epoch")
    return t_start + (t_end - t_start) * math.tanh(k * epoch / 2.0) / math.tanh(k * epochs / 2.0)


def dcff_log_distributions(weight: torch.Tensor, temperature: float) -> torch.Tensor:
    """Row j: log p_j = log_softmax_k(-||F_j - F_k||_2 * T), in float64 (C x C).

    Computed by subtracting the row maximum, so it stays finite where ``exp(-D * T)`` underflows (large T).
    """
    w = weight.detach().reshape(weight.shape[0], -1).double()
    dist = torch.cdist(w.unsqueeze(0), w.unsqueeze(0), compute_mode="donot_use_mm_for_euclid_dist")[0]
    return torch.log_softmax(-dist * temperature, dim=1)


def dcff_distributions(weight: torch.Tensor, temperature: float) -> torch.Tensor:
    """Row j: p_j = softmax_k(-||F_j - F_k||_2 * T), in float64 (C x C)."""
    return dcff_log_distributions(weight, temperature).exp()


def dcff_scores(weight: torch.Tensor, temperature: float) -> torch.Tensor:
    """score_j = sum_k mean_i p_j(i) log(p_j(i) / (p_k(i) + 1e-7)), float64, length C.

    Computed with log-probabilities as (sum_i p_j log p_j - sum_i p_j log(p_k + eps)) / C: where a
    probability underflows to zero its term is the formula's limit (``p log p -> 0``) instead of the
    ``0 * log 0 = NaN`` of a literal evaluation, so scores stay finite at any temperature.
    """
    logp = dcff_log_distributions(weight, temperature)
    p = logp.exp()
    c = p.shape[1]
    neg_entropy = (p * logp).sum(1)
    cross = p @ torch.log(p + KL_EPS).T  # cross[j, k] = sum_i p_j(i) log(p_k(i) + eps)
    kl = (neg_entropy[:, None] - cross) / c
    return kl.sum(1)


def _assign_rows(keep: torch.Tensor, prev_keep: torch.Tensor | None) -> torch.Tensor:
    """Order the kept set so filters kept before stay on their rows; new ones fill the freed rows."""
    new = sorted(int(i) for i in keep)
    if prev_keep is None or prev_keep.numel() != len(new):
        return torch.tensor(new, dtype=torch.long)
    prev = [int(i) for i in prev_keep]
    new_set, prev_set = set(new), set(prev)
    fresh = iter(i for i in new if i not in prev_set)
    rows = [i if i in new_set else next(fresh) for i in prev]
    return torch.tensor(rows, dtype=torch.long)


def dcff_select(
    weight: torch.Tensor, m: int, temperature: float, prev_keep: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept filter indices (length m) and the fusion matrix P (m x C, rows = the kept filters' p_j).

    Indices are ascending, or, with ``prev_keep``, ordered so that filters kept in the previous epoch keep
    their rows. Tied scores prefer the previously kept filters; if a score is not finite (non-finite
    weights) the previous choice is kept.
    ``P`` has ``weight``'s dtype and device.
    """
    c = weight.shape[0]
    if not 1 <= m <= c:
        raise InputError(f"DCFF needs 1 <= kept <= {c}, got {m}")
    scores = dcff_scores(weight, temperature).cpu()
    prev = None if prev_keep is None else prev_keep.detach().cpu().long()
    if torch.isfinite(scores).all():
        # Highest score first; scores equal to 1e-9 (at high T every filter is equally distinct) are
        # tied, and ties go to the previous epoch's filters, then to the lower index.
        was_kept = torch.zeros(c, dtype=torch.bool)
        if prev is not None:
            was_kept[prev] = True
        rounded = torch.round(scores * 1e9).tolist()
        order = sorted(range(c), key=lambda i: (-rounded[i], not bool(was_kept[i]), i))
        keep = torch.tensor(order[:m], dtype=torch.long)
    elif prev is not None:
        keep = prev
    else:
        keep = torch.sort(torch.nan_to_num(scores, nan=-math.inf), descending=True, stable=True).indices[:m]
    rows = _assign_rows(keep, prev)
    p = dcff_distributions(weight, temperature)[rows]
    return rows.to(weight.device), p.to(dtype=weight.dtype, device=weight.device)


class FusedConv2d(nn.Module):
    """A conv emitting m fused channels from its C full filters: weight ``P @ W``, bias ``P @ b``.

    ``weight`` (C, C_in, kh, kw) is trainable; ``fusion`` (m, C) and ``keep`` (m,) are buffers refreshed
    by :meth:`refresh` once per epoch from the detached weight.
    """

    def __init__(self, conv: nn.Conv2d, keep: torch.Tensor, fusion: torch.Tensor) -> None:
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros":
            raise InputError("DCFF fuses plain convolutions (groups=1, zero padding) only")
        self.weight = nn.Parameter(conv.weight.detach().clone())
        self.bias = nn.Parameter(conv.bias.detach().clone()) if conv.bias is not None else None
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.register_buffer("keep", keep.detach().clone().long())
        self.register_buffer("fusion", fusion.detach().clone().to(conv.weight.dtype))

    @property
    def kept(self) -> int:
        return int(self.fusion.shape[0])

    def fused_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The compact layer's (weight, bias): ``P @ W`` and ``P @ b``."""
        w = (self.fusion @ self.weight.flatten(1)).view(self.kept, *self.weight.shape[1:])
        b = self.fusion @ self.bias if self.bias is not None else None
        return w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.fused_weight()
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation)

    @torch.no_grad()
    def refresh(self, temperature: float) -> None:
        """Recompute the kept set and P at ``temperature`` from the detached weight."""
        keep, p = dcff_select(self.weight, self.kept, temperature, prev_keep=self.keep)
        self.keep.copy_(keep)
        self.fusion.copy_(p)

    @torch.no_grad()
    def to_conv(self) -> nn.Conv2d:
        """An ordinary ``nn.Conv2d`` computing exactly this layer's current output."""
        w, b = self.fused_weight()
        conv = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=self.stride, padding=self.padding,
                         dilation=self.dilation, bias=b is not None, device=w.device, dtype=w.dtype)
        conv.weight.copy_(w)
        if b is not None:
            conv.bias.copy_(b)
        return conv

    def extra_repr(self) -> str:
        c, cin, kh, kw = self.weight.shape
        return f"{cin}, {self.kept} (fused from {c}), kernel_size=({kh}, {kw}), stride={self.stride}"


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, module)


def _frozen(model: nn.Module) -> set[str]:
    return set(frozen_layers(model))


def _group_ok(dg: tp.DependencyGraph, group: Any, conv: nn.Module, frozen_mods: set[int]) -> bool:
    """True when pruning ``conv``'s outputs touches only norms, parameter-free ops and consumers' inputs."""
    for item in group:
        dep = item.dep
        mod = dep.target.module
        if dep.target.type == tp.ops.OPTYPE.PARAMETER:
            return False
        if not dg.is_out_channel_pruning_fn(dep.handler):
            continue  # input channels of a consumer (conv / linear / norm)
        if mod is conv:
            continue
        if id(mod) in frozen_mods:
            return False
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm)):
            if isinstance(mod, nn.GroupNorm):
                return False  # group count would break
            continue
        if any(True for _ in mod.parameters(recurse=False)):
            return False  # another parameterised layer's outputs are coupled (residual sum, depthwise, ...)
    return True


def dcff_eligible_layers(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Names of the convs DCFF can fuse in ``model`` (plain convs whose outputs are not coupled/frozen)."""
    dg, _ = _build_graph(model, example_input)
    frozen = _frozen(model)
    frozen_mods = {id(model.get_submodule(n)) for n in frozen}
    names = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Conv2d) or name in frozen or mod.groups != 1 or mod.padding_mode != "zeros":
            continue
        if mod.out_channels < 2:
            continue
        group = dg.get_pruning_group(mod, tp.prune_conv_out_channels, [0])
        if _group_ok(dg, group, mod, frozen_mods):
            names.append(name)
    return names


def _build_graph(model: nn.Module, example_input: torch.Tensor) -> tuple[tp.DependencyGraph, bool]:
    was_training = model.training
    model.eval()
    try:
        dg = tp.DependencyGraph().build_dependency(model, example_input, verbose=False)
    except Exception as exc:  # tracing failures surface as arbitrary errors
        raise InputError(f"could not trace the model for DCFF: {exc}") from exc
    finally:
        model.train(was_training)
    return dg, was_training


def dcff_layer_ratios(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    target_flops_reduction: float | None = None,
    pruning_ratio: float | None = None,
    round_to: int | None = None,
) -> tuple[float, dict[str, float], list[dict[str, str]]]:
    """One uniform ratio over the fusable convs, from a ratio or searched for a FLOPs target.

    Uses the engine's group discovery, exact FLOPs model and ratio search restricted to
    :func:`dcff_eligible_layers`. Returns ``(ratio, {layer: ratio giving its kept count}, skipped)`` where
    ``skipped`` lists the groups left whole, with the reason.
    """
    from simprune.flops import count_model
    from simprune.pruning.allocation import refine_to_target, search_ratio, uniform_keep
    from simprune.pruning.groups import FlopsModel, discover_groups

    if (target_flops_reduction is None) == (pruning_ratio is None):
        raise InputError("give exactly one of target_flops_reduction and pruning_ratio")
    before = count_model(model, example_input)
    _dg, all_specs, skipped = discover_groups(model, example_input)
    eligible = set(dcff_eligible_layers(model, example_input))
    specs = [s for s in all_specs if s.name in eligible and s.ch_groups == 1]
    if not specs:
        raise InputError("dcff found no convolution whose filters it can fuse in this model")
    skipped = skipped + [{"layer": s.name, "reason": "outputs coupled to other layers; dcff cannot fuse"}
                         for s in all_specs if s not in specs]
    flops_model = FlopsModel(before["per_layer"], dict(model.named_modules()), specs)

    def keep_for(r: float) -> dict[str, int]:
        return uniform_keep(specs, r, round_to)

    if target_flops_reduction is not None:
        ratio, keep = search_ratio(keep_for, flops_model, before["flops"], target_flops_reduction)
        keep = refine_to_target(keep, specs, flops_model, before["flops"], target_flops_reduction, round_to)
    else:
        ratio = float(pruning_ratio)  # type: ignore[arg-type]
        if not 0.0 <= ratio < 1.0:
            raise InputError("pruning_ratio must be in [0, 1)")
        keep = keep_for(ratio)
    ratios = {s.name: 1.0 - keep[s.name] / s.n_channels for s in specs if keep[s.name] < s.n_channels}
    if not ratios:
        raise InputError("the requested reduction removes no channel")
    return ratio, ratios, skipped


def prepare_dcff(
    model: nn.Module,
    example_input: torch.Tensor,
    ratios: dict[str, float],
    *,
    temperature: float = T_START,
) -> dict[str, FusedConv2d]:
    """Turn ``model`` (in place) into the compact training network: each named conv becomes a
    :class:`FusedConv2d` with floor(C * (1 - r)) outputs and its consumers shrink to match."""
    dg, _ = _build_graph(model, example_input)
    frozen = _frozen(model)
    frozen_mods = {id(model.get_submodule(n)) for n in frozen}
    plans: list[tuple[str, nn.Conv2d, int]] = []
    for name, r in ratios.items():
        try:
            conv = model.get_submodule(name)
        except AttributeError as exc:
            raise InputError(f"DCFF layer {name!r} is not in the model") from exc
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or name in frozen:
            raise InputError(f"DCFF cannot fuse layer {name!r} (plain, non-frozen Conv2d required)")
        if not 0.0 <= r < 1.0:
            raise InputError(f"pruning ratio for {name!r} must be in [0, 1), got {r}")
        m = max(1, math.floor(conv.out_channels * (1.0 - r) + 1e-9))  # r = 1 - m/C gives m back
        if m < conv.out_channels:
            plans.append((name, conv, m))
    for name, conv, _m in plans:
        group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, [0])
        if not _group_ok(dg, group, conv, frozen_mods):
            raise InputError(f"DCFF cannot fuse layer {name!r}: its output channels are coupled to other "
                             "layers (residual sum, depthwise conv or a frozen layer)")
    # Choose every layer's initial kept set on the original weights, then shrink the consumers. A target's
    # own output rows are never removed (it keeps all C filters); its input channels shrink when its
    # producer is also a target.
    choices = {}
    for name, conv, m in plans:
        keep, _ = dcff_select(conv.weight, m, temperature)
        choices[name] = keep
    for name, conv, _m in plans:
        keep = set(int(i) for i in choices[name])
        removed = [i for i in range(conv.out_channels) if i not in keep]
        group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, removed)
        for item in group:
            if item.dep.target.module is conv and dg.is_out_channel_pruning_fn(item.dep.handler):
                continue
            item.dep(item.idxs)
    fused: dict[str, FusedConv2d] = {}
    for name, conv, _m in plans:
        # The consumers kept the inputs of ``choices[name]`` in ascending order; P's rows follow it. The
        # weight's input channels may have shrunk meanwhile (its producer is a target too), so P is
        # recomputed on the weight the layer will train.
        keep = torch.sort(choices[name]).values
        p = dcff_distributions(conv.weight, temperature)[keep.cpu()].to(conv.weight)
        layer = FusedConv2d(conv, keep, p)
        _set_module(model, name, layer)
        fused[name] = layer
    return fused


def materialise_dcff(model: nn.Module) -> nn.Module:
    """Replace every :class:`FusedConv2d` in ``model`` (in place) by an equivalent ``nn.Conv2d``."""
    for name, mod in list(model.named_modules()):
        if isinstance(mod, FusedConv2d):
            _set_module(model, name, mod.to_conv())
    return model


def dcff_default_config(epochs: int = 300) -> FinetuneConfig:
    """The paper's CIFAR recipe: SGD momentum 0.9, lr 0.1 (x0.1 at 50% and 75%), wd 5e-4, batch 256."""
    return FinetuneConfig(epochs=epochs, lr=0.1, batch_size=256, optimizer="sgd", weight_decay=5e-4,
                          momentum=0.9, schedule="step", milestones=(0.5, 0.75), gamma=0.1, warmup_frac=0.0,
                          distill=False)


def dcff_train(
    model: nn.Module,
    train_ds: Dataset,
    *,
    pruning_ratio: float | None = None,
    per_layer_ratios: dict[str, float] | None = None,
    epochs: int | None = None,
    config: FinetuneConfig | None = None,
    layers: Sequence[str] | None = None,
    teacher: nn.Module | None = None,
    eval_ds: Dataset | None = None,
    device: torch.device | str | None = None,
    progress: FinetuneProgressFn | None = None,
    should_cancel: Callable[[], bool] | None = None,
    checkpoint_dir: str | Path | None = None,
    t_start: float = T_START,
    t_end: float = T_END,
    k: float = T_K,
    example_input: torch.Tensor | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a DCFF-compact copy of ``model`` and return it as a plain network plus a report.

    Ratios: ``per_layer_ratios`` (layer name -> ratio), or ``pruning_ratio`` applied to ``layers`` (default:
    every eligible conv, see :func:`dcff_eligible_layers`). ``config`` defaults to
    :func:`dcff_default_config`; ``epochs`` overrides its epoch count. The report has, per layer, the
    channel counts and kept indices of every epoch, the temperatures used and the training history.
    ``model`` itself is not modified; the result has standard Conv2d/BatchNorm layers of the compact sizes.
    """
    config = copy.deepcopy(config) if config is not None else dcff_default_config(epochs or 300)
    if epochs is not None:
        config.epochs = epochs
    config.validate()
    dev = select_device(device)
    if example_input is None:
        if len(train_ds) == 0:  # type: ignore[arg-type]
            raise InputError("training dataset is empty")
        example_input = train_ds[0][0].unsqueeze(0)
    net = copy.deepcopy(model).to(dev)
    example_input = example_input.to(dev)
    if per_layer_ratios is None:
        if pruning_ratio is None:
            raise InputError("DCFF needs pruning_ratio or per_layer_ratios")
        names = list(layers) if layers is not None else dcff_eligible_layers(net, example_input)
        if not names:
            raise InputError("DCFF found no layer it can fuse in this model")
        per_layer_ratios = {n: float(pruning_ratio) for n in names}
    fused = prepare_dcff(net, example_input, per_layer_ratios,
                         temperature=dcff_temperature(0, config.epochs, t_start, t_end, k))
    if not fused:
        raise InputError("the requested ratios keep every channel; nothing to fuse")

    history: dict[str, list[list[int]]] = {n: [] for n in fused}
    temperatures: list[float] = []
    if checkpoint_dir is not None and (Path(checkpoint_dir) / "state.json").is_file():
        try:
            extra = json.loads((Path(checkpoint_dir) / "state.json").read_text()).get("extra", {})
        except (OSError, ValueError):
            extra = {}
        for n, rows in extra.get("keep_per_epoch", {}).items():
            if n in history:
                history[n] = [list(map(int, r)) for r in rows]
        temperatures = [float(t) for t in extra.get("temperatures", [])]

    def on_epoch_start(epoch: int) -> None:
        t = dcff_temperature(epoch, config.epochs, t_start, t_end, k)
        del temperatures[epoch:]
        temperatures.append(t)
        for n, layer in fused.items():
            layer.refresh(t)
            del history[n][epoch:]
            history[n].append([int(i) for i in layer.keep])

    def extra() -> dict[str, Any]:
        return {"keep_per_epoch": history, "temperatures": temperatures}

    result: FinetuneResult = finetune(
        net, train_ds, config, teacher=teacher, eval_ds=eval_ds, device=dev, checkpoint_dir=checkpoint_dir,
        progress=progress, should_cancel=should_cancel, stage="dcff", on_epoch_start=on_epoch_start,
        checkpoint_extra=extra,
    )
    info: dict[str, Any] = {
        "layers": {
            n: {"channels": int(layer.weight.shape[0]), "kept": layer.kept,
                "keep_final": [int(i) for i in layer.keep], "keep_per_epoch": history[n]}
            for n, layer in fused.items()
        },
        "temperatures": temperatures,
        "final_temperature": temperatures[-1] if temperatures else None,
        "finetune": result.to_dict(),
    }
    materialise_dcff(net)
    net.eval()
    return net, info


@register_method
@dataclass
class DCFF(Method):
    """Dynamic-coded filter fusion as a job: uniform ratio over the fusable convs, trained from the checkpoint."""

    name = "dcff"
    summary = ("Dynamic-coded filter fusion (Lin et al. 2021): trains the compact network from the checkpoint; "
               "each kept filter is a temperature-softmax blend of the layer's filters, chosen by a KL "
               "criterion. Needs training data and epochs; uniform ratio over the fusable convs.")
    trains = True
    t_start: float = option(T_START, "initial temperature; raise it (e.g. 10-100) for short runs from a "
                                     "pretrained checkpoint", gt=0.0)
    t_end: float = option(T_END, "final temperature", gt=0.0)
    k: float = option(T_K, "steepness of the tanh temperature schedule", gt=0.0)

    def check_job(self, spec: Any) -> list[tuple[str, str]]:
        errors = []
        if spec.pruning_ratio == "auto":
            errors.append(("pruning_ratio", "dcff has no automatic kept count; give a ratio or a FLOPs target"))
        if spec.allocation not in (None, "uniform"):
            errors.append(("allocation", "dcff supports allocation 'uniform' only (one ratio over the fusable "
                                         "layers)"))
        return errors

    def run(self, ctx: RunContext) -> MethodResult:
        """Ratios meeting the target, then :func:`dcff_train`; the report and plan of the compact model."""
        import time

        from simprune.flops import count_model
        from simprune.pruning.report import per_layer_rows

        t0 = time.perf_counter()
        spec = ctx.spec
        train_ds, config, ckpt_dir = ctx.train_setup("dcff")
        dense = ctx.dense
        example = ctx.example.to(ctx.device)
        before = count_model(dense, example)
        ratio, ratios, skipped = dcff_layer_ratios(
            dense, example, target_flops_reduction=spec.target_flops_reduction,
            pruning_ratio=None if spec.pruning_ratio is None else float(spec.pruning_ratio), round_to=spec.round_to)
        setup_s = time.perf_counter() - t0
        ctx.progress(1.0)
        compact, info = dcff_train(
            dense, train_ds, per_layer_ratios=ratios, config=config, teacher=dense if config.distill else None,
            eval_ds=ctx.evals.dataset if ctx.evals is not None else None, device=ctx.device,
            progress=ctx.train_progress("train"), should_cancel=ctx.should_cancel, checkpoint_dir=ckpt_dir,
            example_input=example, t_start=self.t_start, t_end=self.t_end, k=self.k,
        )
        after = count_model(compact, example)
        layers = [{"layer": n, "channels_before": d["channels"], "keep": sorted(d["keep_final"])}
                  for n, d in info["layers"].items()]
        report = {
            "method": "dcff", "method_options": {"t_start": self.t_start, "t_end": self.t_end, "k": self.k},
            "allocation": "uniform", "pruning_ratio": ratio, "target_flops_reduction": spec.target_flops_reduction,
            "round_to": spec.round_to, "compensation": None,
            **_counts(before, after), "per_layer": per_layer_rows(before, after), "skipped_groups": skipped,
            "plan": {"layers": layers},
            "dcff": {"temperatures": info["temperatures"], "final_temperature": info["final_temperature"],
                     "layers": info["layers"]},
            "finetune": info["finetune"],
        }
        timings = {"prune": round(setup_s, 4), "train": round(time.perf_counter() - t0 - setup_s, 4)}
        return MethodResult(model=compact, report=report, plan=ctx.plan(report), timings=timings)


def _counts(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """FLOPs and parameters before/after and their reductions (report fields)."""
    return {"flops_before": before["flops"], "flops_after": after["flops"],
            "params_before": before["params"], "params_after": after["params"],
            "flops_reduction": 1.0 - after["flops"] / before["flops"],
            "params_reduction": 1.0 - after["params"] / before["params"]}
