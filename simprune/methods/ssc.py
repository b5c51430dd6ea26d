"""SSC: structured sparse convolution (after Verma et al., WACV 2023, arXiv 2210.12818).

The paper's exact layer definition was not available (and its code repository is empty), so this module
implements the documented formulation of ``../shared/METHODS.md``, which has the stated property of
generalising depthwise, groupwise and pointwise convolution:

- filter ``i`` of a layer with ``C_in`` inputs and ``C_out`` filters applies a k x k kernel to a window of
  ``g`` consecutive input channels starting at ``s_i`` (cyclically, modulo ``C_in``), and a 1x1 kernel to
  the next ``p`` channels after that window (``s_i + g`` ... ``s_i + g + p - 1``, cyclically), disjoint
  from it (``g + p <= C_in``);
- the window start slides with the filter index: ``s_i = floor(i * C_in / C_out)`` (windows spread evenly),
  or ``(i * channel_stride) mod C_in``, or, with ``aligned=True``, ``g * floor(i * G / C_out)`` with
  ``G = C_in / g`` (the windows of a grouped convolution);
- the 1x1 kernel sits on the k x k kernel's centre tap (index ``(k - 1) // 2``), so the layer is exactly a
  dense convolution whose weight is multiplied by a fixed binary mask; that is how it trains.

Special cases: depthwise = ``g=1, p=0, C_out=C_in``; groupwise = ``aligned=True, p=0``; pointwise =
``g=0, p=C_in``. The layer is trained from initialisation (pruning at initialisation). :func:`export_ssc`
rewrites it into standard ops: a grouped conv (+ a 1x1 conv for the ``p`` part) where that is exact,
else a dense conv with the mask baked into its weight.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from simprune.errors import InputError
from simprune.finetune import FinetuneConfig, FinetuneResult, finetune
from simprune.methods.base import Method, MethodResult, RunContext, option
from simprune.methods.registry import register_method


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class SSConv2d(nn.Module):
    """Structured sparse convolution: per filter, a k x k kernel on ``g`` channels and a 1x1 kernel on ``p``.

    Stored as a dense ``weight`` (C_out, C_in, kh, kw) and a fixed binary ``mask`` buffer; the forward pass
    is ``conv2d(x, weight * mask)``, so masked weights get zero gradient.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        g: int = 1,
        p: int = 0,
        bias: bool = True,
        dilation: int | tuple[int, int] = 1,
        aligned: bool = False,
        channel_stride: int | None = None,
    ) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise InputError("SSConv2d needs at least one input and one output channel")
        if g < 0 or p < 0 or g + p < 1 or g + p > in_channels:
            raise InputError(f"SSConv2d needs g, p >= 0 and 1 <= g + p <= in_channels ({in_channels}); "
                             f"got g={g}, p={p}")
        if aligned:
            if g == 0 or in_channels % g or out_channels % (in_channels // g):
                raise InputError("aligned SSConv2d needs g > 0, in_channels % g == 0 and out_channels a "
                                 "multiple of in_channels / g")
            if channel_stride is not None:
                raise InputError("aligned and channel_stride are exclusive")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.g, self.p, self.aligned, self.channel_stride = g, p, aligned, channel_stride
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.register_buffer("mask", self._build_mask())
        self.reset_parameters()

    def window_start(self, i: int) -> int:
        """First input channel of filter ``i``'s k x k window."""
        cin, cout = self.in_channels, self.out_channels
        if self.aligned:
            groups = cin // self.g
            return self.g * (i * groups // cout)
        if self.channel_stride is not None:
            return (i * self.channel_stride) % cin
        return (i * cin // cout) % cin

    def windows(self, i: int) -> tuple[list[int], list[int]]:
        """Input channels of filter ``i``: (k x k window, 1x1 window)."""
        s, cin = self.window_start(i), self.in_channels
        return ([(s + j) % cin for j in range(self.g)], [(s + self.g + j) % cin for j in range(self.p)])

    @property
    def center(self) -> tuple[int, int]:
        return ((self.kernel_size[0] - 1) // 2, (self.kernel_size[1] - 1) // 2)

    def _build_mask(self) -> torch.Tensor:
        mask = torch.zeros(self.out_channels, self.in_channels, *self.kernel_size)
        ch, cw = self.center
        for i in range(self.out_channels):
            full, point = self.windows(i)
            if full:
                mask[i, full] = 1.0
            if point:
                mask[i, point, ch, cw] = 1.0
        return mask

    @property
    def fan_in(self) -> int:
        """Effective fan-in of one filter: ``g * kh * kw + p``."""
        return self.g * self.kernel_size[0] * self.kernel_size[1] + self.p

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Kaiming-normal init (ReLU gain) on the effective fan-in; masked entries set to zero."""
        self.weight.normal_(0.0, math.sqrt(2.0 / self.fan_in)).mul_(self.mask)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.fan_in)
            self.bias.uniform_(-bound, bound)

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.masked_weight(), self.bias, self.stride, self.padding, self.dilation)

    def effective_params(self) -> int:
        """Non-zero weights (plus bias): ``C_out * (g * kh * kw + p) (+ C_out)``."""
        return self.out_channels * self.fan_in + (self.out_channels if self.bias is not None else 0)

    def density(self) -> float:
        """Fraction of the dense weight that the mask keeps."""
        return self.fan_in / (self.in_channels * self.kernel_size[0] * self.kernel_size[1])

    def effective_macs(self, out_hw: tuple[int, int]) -> int:
        """Multiply-accumulates of one sample at output size ``out_hw`` (weights only, no bias)."""
        return self.out_channels * self.fan_in * out_hw[0] * out_hw[1]

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, g={self.g}, p={self.p}, "
                f"aligned={self.aligned}, bias={self.bias is not None}")


def _resolve(v: int | float, cin: int) -> int:
    """An int is a channel count; a float in (0, 1] a fraction of ``cin`` (rounded, at least 1 if > 0)."""
    if isinstance(v, bool):
        raise InputError("g and p must be numbers")
    if isinstance(v, float):
        if not 0.0 <= v <= 1.0:
            raise InputError(f"fractional g/p must be in [0, 1], got {v}")
        return 0 if v == 0.0 else max(1, round(v * cin))
    return int(v)


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, module)


def convert_to_ssc(
    model: nn.Module,
    g: int | float,
    p: int | float,
    layers: Sequence[str] | Callable[[str, nn.Conv2d], bool] | None = None,
    *,
    aligned: bool = False,
    channel_stride: int | None = None,
    reinit: bool = True,
    skip_stem: bool = True,
) -> nn.Module:
    """Replace (in place) eligible ``nn.Conv2d`` layers of ``model`` by :class:`SSConv2d` and return it.

    Eligible: ``groups == 1``, zero padding, room for ``g + p`` input channels (and, with ``aligned``, the
    grouped layout), and not the stem (the first conv) unless ``skip_stem=False``. ``layers`` names the
    layers to convert (an ineligible name is an error) or is a predicate ``(name, conv) -> bool``; None
    converts every eligible layer. ``g`` / ``p`` are channel counts (int) or fractions of C_in (float).
    ``reinit`` re-initialises the converted layers (pruning at initialisation); otherwise the dense weights
    are kept under the mask.
    """
    converted = 0
    for name, conv, gi, pi in ssc_conversions(model, g, p, layers, aligned=aligned, skip_stem=skip_stem):
        layer = SSConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, g=gi, p=pi, bias=conv.bias is not None, dilation=conv.dilation,
                         aligned=aligned, channel_stride=channel_stride)
        layer.to(device=conv.weight.device, dtype=conv.weight.dtype)
        if not reinit:
            with torch.no_grad():
                layer.weight.copy_(conv.weight * layer.mask)
                if conv.bias is not None:
                    layer.bias.copy_(conv.bias)
        _set_module(model, name, layer)
        converted += 1
    if converted == 0:
        raise InputError("no convolution of the model could be converted to SSC")
    return model


def ssc_conversions(
    model: nn.Module,
    g: int | float,
    p: int | float,
    layers: Sequence[str] | Callable[[str, nn.Conv2d], bool] | None = None,
    *,
    aligned: bool = False,
    skip_stem: bool = True,
) -> list[tuple[str, nn.Conv2d, int, int]]:
    """The convs :func:`convert_to_ssc` would convert, as ``(name, conv, g, p)`` with g/p resolved per layer.

    Raises :class:`InputError` for an explicitly named layer that cannot be converted.
    """
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    stem = convs[0][0] if convs else None
    explicit = set(layers) if layers is not None and not callable(layers) else None
    if explicit is not None:
        missing = explicit - {n for n, _ in convs}
        if missing:
            raise InputError(f"not Conv2d layers of the model: {sorted(missing)}")
    out = []
    for name, conv in convs:
        if explicit is not None and name not in explicit:
            continue
        if callable(layers) and not layers(name, conv):
            continue
        gi, pi = _resolve(g, conv.in_channels), _resolve(p, conv.in_channels)
        reason = None
        if conv.groups != 1:
            reason = "grouped/depthwise"
        elif conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            reason = "non-zero or string padding"
        elif skip_stem and name == stem:
            reason = "the stem"
        elif gi + pi > conv.in_channels or gi + pi < 1:
            reason = f"g + p = {gi + pi} does not fit {conv.in_channels} input channels"
        elif aligned and (gi == 0 or conv.in_channels % gi or conv.out_channels % (conv.in_channels // gi)):
            reason = "channel counts do not allow aligned windows"
        if reason is not None:
            if explicit is not None:
                raise InputError(f"cannot convert {name!r} to SSC: {reason}")
            continue
        out.append((name, conv, gi, pi))
    return out


class GroupedPlusPointwise(nn.Module):
    """``grouped(x) + pointwise(x)``: the exact standard-op form of an aligned SSC layer with ``p > 0``."""

    def __init__(self, grouped: nn.Conv2d, pointwise: nn.Conv2d) -> None:
        super().__init__()
        self.grouped, self.pointwise = grouped, pointwise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.grouped(x) + self.pointwise(x)


def _group_count(layer: SSConv2d) -> int | None:
    """G when the k x k windows are exactly those of ``groups=G`` (aligned, no wrap), else None."""
    g, cin, cout = layer.g, layer.in_channels, layer.out_channels
    if g == 0 or cin % g:
        return None
    groups = cin // g
    if cout % groups:
        return None
    per = cout // groups
    if all(layer.window_start(i) == g * (i // per) for i in range(cout)):
        return groups
    return None


def _pointwise_padding(layer: SSConv2d) -> tuple[int, int] | None:
    """Padding of a 1x1 conv reading exactly the centre tap, or None when no such 1x1 conv exists."""
    pads = []
    for k, pad, dil, c in zip(layer.kernel_size, layer.padding, layer.dilation, layer.center, strict=True):
        if k % 2 == 0 or pad - c * dil < 0:
            return None
        pads.append(pad - c * dil)
    return pads[0], pads[1]


@torch.no_grad()
def _export_layer(layer: SSConv2d) -> nn.Module:
    w, b = layer.masked_weight().detach(), layer.bias
    dd = {"device": w.device, "dtype": w.dtype}
    ch, cw = layer.center
    pw_pad = _pointwise_padding(layer)
    groups = _group_count(layer)

    def pointwise(bias: torch.Tensor | None) -> nn.Conv2d:
        assert pw_pad is not None
        conv = nn.Conv2d(layer.in_channels, layer.out_channels, 1, stride=layer.stride, padding=pw_pad,
                         bias=bias is not None, **dd)
        pw = torch.zeros(layer.out_channels, layer.in_channels, **dd)
        for i in range(layer.out_channels):
            _, point = layer.windows(i)
            if point:
                pw[i, point] = w[i, point, ch, cw]
        conv.weight.copy_(pw[:, :, None, None])
        if bias is not None:
            conv.bias.copy_(bias)
        return conv

    if groups is not None and (layer.p == 0 or pw_pad is not None):
        per_in = layer.g
        grouped = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                            padding=layer.padding, dilation=layer.dilation, groups=groups, bias=b is not None,
                            **dd)
        gw = torch.empty_like(grouped.weight)
        for i in range(layer.out_channels):
            s = layer.window_start(i)
            gw[i] = w[i, s:s + per_in]
        grouped.weight.copy_(gw)
        if b is not None:
            grouped.bias.copy_(b)
        if layer.p == 0:
            return grouped
        return GroupedPlusPointwise(grouped, pointwise(None))
    if layer.g == 0 and pw_pad is not None:
        return pointwise(b)
    dense = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                      padding=layer.padding, dilation=layer.dilation, bias=b is not None, **dd)
    dense.weight.copy_(w)
    if b is not None:
        dense.bias.copy_(b)
    return dense


def export_ssc(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every :class:`SSConv2d` rewritten into standard ops computing the same output.

    Aligned windows become a grouped ``nn.Conv2d`` (plus a 1x1 conv for the ``p`` part when the kernel is
    odd and the padding covers the centre tap); pure 1x1 parts (``g=0``) become a 1x1 conv; everything else
    a dense ``nn.Conv2d`` with the mask baked into the weight.
    """
    out = copy.deepcopy(model)
    if isinstance(out, SSConv2d):
        return _export_layer(out)
    for name, mod in list(out.named_modules()):
        if isinstance(mod, SSConv2d):
            _set_module(out, name, _export_layer(mod))
    return out


@torch.no_grad()
def ssc_stats(model: nn.Module, example_input: torch.Tensor) -> dict[str, Any]:
    """Per SSC layer and in total: density, dense vs effective parameters and MACs (one sample).

    ``example_input`` (batch of one, on the model's device) fixes the spatial sizes.
    """
    shapes: dict[str, tuple[int, int]] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, SSConv2d):
            hooks.append(mod.register_forward_hook(
                lambda _m, _i, o, n=name: shapes.__setitem__(n, (int(o.shape[-2]), int(o.shape[-1])))))
    was_training = model.training
    model.eval()
    try:
        model(example_input)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    layers: dict[str, dict[str, Any]] = {}
    tot = {"params_dense": 0, "params_effective": 0, "macs_dense": 0, "macs_effective": 0}
    for name, mod in model.named_modules():
        if not isinstance(mod, SSConv2d) or name not in shapes:
            continue
        hw = shapes[name]
        kk = mod.kernel_size[0] * mod.kernel_size[1]
        bias = mod.out_channels if mod.bias is not None else 0
        row = {
            "in_channels": mod.in_channels, "out_channels": mod.out_channels, "g": mod.g, "p": mod.p,
            "density": mod.density(),
            "params_dense": mod.out_channels * mod.in_channels * kk + bias,
            "params_effective": mod.effective_params(),
            "macs_dense": mod.out_channels * mod.in_channels * kk * hw[0] * hw[1],
            "macs_effective": mod.effective_macs(hw),
        }
        layers[name] = row
        for k in tot:
            tot[k] += row[k]
    total_params = sum(p.numel() for p in model.parameters())
    masked_out = tot["params_dense"] - tot["params_effective"]
    return {"layers": layers, **tot, "model_params_effective": total_params - masked_out}


def ssc_default_config(epochs: int = 1) -> FinetuneConfig:
    """Training from initialisation: SGD momentum 0.9, lr 0.1, cosine with 5% warm-up, wd 5e-4, batch 128."""
    return FinetuneConfig(epochs=epochs, lr=0.1, batch_size=128, optimizer="sgd", weight_decay=5e-4,
                          momentum=0.9, schedule="cosine", warmup_frac=0.05, distill=False)


def ssc_train(model: nn.Module, train_ds: Dataset, config: FinetuneConfig | None = None,
              **kwargs: Any) -> FinetuneResult:
    """Train an SSC model with :func:`simprune.finetune.finetune` (``config`` defaults to
    :func:`ssc_default_config`); keyword arguments are passed through (``eval_ds``, ``device``, ...)."""
    return finetune(model, train_ds, config or ssc_default_config(), **kwargs)


SSC_PLAN_FORMAT = "simprune-ssc/1"


def ssc_plan(
    model: nn.Module,
    *,
    arch: str | None,
    input_size: Sequence[int],
    num_classes: int | None = None,
    in_channels: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The ``plan.json`` of an SSC model: which convs were converted, with their resolved ``g``/``p``.

    :func:`load_ssc` replays it on the dense architecture, rewrites it with :func:`export_ssc` and loads the
    exported weights (``weights.safetensors`` of the standard-op model).
    """
    layers = [{"layer": n, "in_channels": m.in_channels, "out_channels": m.out_channels, "g": m.g, "p": m.p,
               "aligned": m.aligned, "channel_stride": m.channel_stride}
              for n, m in model.named_modules() if isinstance(m, SSConv2d)]
    return {"format": SSC_PLAN_FORMAT, "arch": arch, "options": {"num_classes": num_classes,
                                                                 "in_channels": in_channels},
            "input_size": list(input_size), "mean": list(mean) if mean else None,
            "std": list(std) if std else None, "method": "ssc", "weights": "exported", "layers": layers}


def load_ssc(plan: Any, weights: Any, model: nn.Module | None = None) -> nn.Module:
    """Rebuild the exported (standard-op) SSC model from ``plan`` (dict or path) and weights (path or dict).

    The dense architecture comes from the zoo by the plan's ``arch``, or pass a fresh dense ``model``.
    """
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    if not isinstance(plan, dict):
        plan = json.loads(Path(plan).read_text())
    if plan.get("format") != SSC_PLAN_FORMAT:
        raise InputError(f"not an SSC plan (format {plan.get('format')!r}, expected {SSC_PLAN_FORMAT!r})")
    if model is None:
        if not plan.get("arch"):
            raise InputError("the plan names no zoo architecture; pass the dense model to rebuild from")
        from simprune.zoo import build_model

        opts = plan.get("options") or {}
        model = build_model(plan["arch"], num_classes=opts.get("num_classes"), in_channels=opts.get("in_channels"))
    modules = dict(model.named_modules())
    for entry in plan["layers"]:
        conv = modules.get(entry["layer"])
        if not isinstance(conv, nn.Conv2d) or (conv.in_channels, conv.out_channels) != (
                entry["in_channels"], entry["out_channels"]):
            raise InputError(f"SSC plan layer {entry['layer']!r} does not match the model")
        convert_to_ssc(model, int(entry["g"]), int(entry["p"]), [entry["layer"]], aligned=bool(entry["aligned"]),
                       channel_stride=entry.get("channel_stride"), reinit=False, skip_stem=False)
    out = export_ssc(model)
    state = weights if isinstance(weights, dict) else load_file(str(weights))
    try:
        out.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(f"weights do not match the SSC plan: {exc}") from None
    return out.eval()


@register_method
@dataclass
class SSC(Method):
    """Structured sparse convolution as a job: convert, train, rewrite into standard ops."""

    name = "ssc"
    summary = ("Structured sparse convolution (Verma et al. 2023, documented formulation): each filter sees "
               "a k x k window of g input channels and a 1x1 window of p more; trained, then exported as "
               "grouped/pointwise or masked dense convs. g follows the FLOPs target or ratio unless given.")
    trains = True
    g: int | float | None = option(None, "k x k window: channel count (int) or fraction of C_in (float); default "
                                         "from the target", gt=0)
    p: int | float = option(0, "1x1 window: channel count (int) or fraction of C_in (float)", ge=0)
    aligned: bool = option(False, "grouped-conv windows (exact export)")
    channel_stride: int | None = option(None, "window start step per filter", ge=1)
    reinit: bool = option(False, "re-initialise converted layers (pruning at initialisation) instead of masking "
                                 "the weights")
    skip_stem: bool = option(True, "leave the first conv dense")

    def check_job(self, spec: Any) -> list[tuple[str, str]]:
        if self.g is None and spec.pruning_ratio == "auto":
            return [("pruning_ratio", "ssc has no automatic mode; give option g (and p), a ratio or a FLOPs target")]
        return []

    def _window(self, dense: nn.Module, spec: Any, before: dict[str, Any]) -> int | float:
        if self.g is not None:
            return self.g
        if spec.target_flops_reduction is not None:
            return ssc_fraction_for(dense, spec.target_flops_reduction, before, self.p, self.aligned, self.skip_stem)
        return max(1.0 - float(spec.pruning_ratio) - (self.p if isinstance(self.p, float) else 0.0), 1e-6)

    def run(self, ctx: RunContext) -> MethodResult:
        """Convert the convs to SSC (g, p from the options or the target), train, export to standard ops."""
        import time

        from simprune.flops import count_model

        t0 = time.perf_counter()
        train_ds, config, ckpt_dir = ctx.train_setup("ssc")
        example = ctx.example.to(ctx.device)
        before = count_model(ctx.dense, example)
        g = self._window(ctx.dense, ctx.spec, before)
        model = convert_to_ssc(copy.deepcopy(ctx.dense), g, self.p, aligned=self.aligned,
                               channel_stride=self.channel_stride, reinit=self.reinit, skip_stem=self.skip_stem)
        setup_s = time.perf_counter() - t0
        ctx.progress(1.0)
        result = finetune(
            model, train_ds, config, teacher=ctx.dense if config.distill else None,
            eval_ds=ctx.evals.dataset if ctx.evals is not None else None, device=ctx.device, checkpoint_dir=ckpt_dir,
            progress=ctx.train_progress("train"), should_cancel=ctx.should_cancel, stage="ssc",
        )
        report = self._report(ctx, model, example, before, g)
        report["finetune"] = result.to_dict()
        plan = ssc_plan(model, arch=ctx.arch, input_size=ctx.input_size, num_classes=ctx.num_classes,
                        in_channels=ctx.in_channels, mean=ctx.mean, std=ctx.std)
        timings = {"prune": round(setup_s, 4), "train": round(time.perf_counter() - t0 - setup_s, 4)}
        return MethodResult(model=export_ssc(model).eval(), report=report, plan=plan, timings=timings,
                            rebuild=lambda plan_path, weights_path: load_ssc(plan_path, weights_path))

    def _report(self, ctx: RunContext, model: nn.Module, example: torch.Tensor, before: dict[str, Any],
                g: int | float) -> dict[str, Any]:
        from simprune.flops import count_model
        from simprune.pruning.report import per_layer_rows

        spec = ctx.spec
        stats = ssc_stats(model, example)
        exp_counts = count_model(export_ssc(model).eval(), example)
        flops_after = before["flops"] - (stats["macs_dense"] - stats["macs_effective"])
        params_after = stats["model_params_effective"]
        per_layer = per_layer_rows(before, before)
        for row in per_layer:
            layer = stats["layers"].get(row["name"])
            if layer is not None:
                row["flops_after"] = layer["macs_effective"]
                row["density"] = layer["density"]
        options = {"g": g, "p": self.p, "aligned": self.aligned, "channel_stride": self.channel_stride,
                   "reinit": self.reinit, "skip_stem": self.skip_stem}
        return {
            "method": "ssc", "method_options": options, "allocation": None, "pruning_ratio": spec.pruning_ratio,
            "target_flops_reduction": spec.target_flops_reduction, "round_to": None, "compensation": None,
            "flops_before": before["flops"], "flops_after": flops_after,
            "params_before": before["params"], "params_after": params_after,
            "flops_reduction": 1.0 - flops_after / before["flops"],
            "params_reduction": 1.0 - params_after / before["params"],
            "flops_exported": exp_counts["flops"], "params_exported": exp_counts["params"],
            "per_layer": per_layer, "ssc": stats,
            "notes": ["flops_after/params_after count the SSC layers' effective (non-masked) weights; the export "
                      "uses grouped (+1x1) convs where exact, else dense convs with the mask baked in "
                      "(flops_exported/params_exported)"],
        }


def ssc_fraction_for(dense: nn.Module, target: float, flops: dict[str, Any], p: int | float, aligned: bool,
                     skip_stem: bool) -> float:
    """The k x k window fraction g whose effective FLOPs reduction is closest to ``target`` (bisection).

    A converted conv keeps ``(g * kh * kw + p) / (C_in * kh * kw)`` of its MACs (``flops`` = dense counts).
    """
    layer_flops = {r["name"]: r["flops"] for r in flops["per_layer"]}

    def reduction(frac: float) -> float:
        saved = 0.0
        for name, conv, gi, pi in ssc_conversions(dense, frac, p, aligned=aligned, skip_stem=skip_stem):
            kk = conv.kernel_size[0] * conv.kernel_size[1]
            saved += layer_flops.get(name, 0) * (1.0 - (gi * kk + pi) / (conv.in_channels * kk))
        return saved / flops["flops"]

    lo, hi = 1e-6, 1.0
    best = (hi, reduction(hi))
    for _ in range(30):
        mid = (lo + hi) / 2
        red = reduction(mid)
        if abs(red - target) < abs(best[1] - target):
            best = (mid, red)
        if red > target:
            lo = mid
        else:
            hi = mid
    red_lo = reduction(1e-6)
    if abs(red_lo - target) < abs(best[1] - target):
        best = (1e-6, red_lo)
    return best[0]
