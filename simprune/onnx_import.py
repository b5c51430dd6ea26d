"""ONNX models as input: checked before anything else, converted to a torch module, pruned like a zoo model.

An ``.onnx`` file is untrusted protobuf. :func:`check_onnx` reads it with size limits and refuses what could
reach outside the file or exhaust memory: external-data references, non-standard operator domains (custom ops,
model-local functions), opsets outside :data:`MIN_OPSET`..:data:`MAX_OPSET`, oversized graphs, tensors whose
declared size is not backed by their bytes. The checked model is converted with ``onnx2torch`` into a
``torch.fx.GraphModule`` of ordinary ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.Linear`` layers, which
Torch-Pruning's dependency graph traces like any other model. Nothing is ever unpickled.

A checked file is registered as the architecture ``onnx/<sha256 prefix>`` (:func:`register_onnx`), so the job
pipeline, ``plan.json`` and :func:`simprune.plan.load_pruned` rebuild the dense model from the original file.

Example::

    info = inspect_onnx("model.onnx")          # the dry run: groups, FLOPs, unsupported operators
    net = load_onnx("model.onnx").module        # the converted dense model
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from simprune.errors import InputError, UnsafeInputError

MAX_ONNX_BYTES = 1 << 30
"""Largest accepted .onnx file (everything is embedded: no external data)."""
MAX_NODES = 50_000
"""Most nodes, counting those of subgraphs."""
MAX_TENSOR_ELEMENTS = 1 << 28
"""Most elements one initializer or constant may declare."""
MAX_TOTAL_ELEMENTS = 1 << 29
"""Most elements all initializers and constants may declare together."""
MIN_OPSET, MAX_OPSET = 9, onnx.defs.onnx_opset_version()
"""Accepted versions of the default ONNX operator set."""
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
FIDELITY_ATOL = 1e-3
"""Largest accepted |converted - onnxruntime| relative to the output's scale, at 0% pruning."""
PREFIX = "onnx/"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULT_SPATIAL = 224
"""Spatial size used for an input whose height/width are dynamic."""


class UnsupportedModelError(InputError):
    """The model uses operators that cannot be converted or pruned; ``operators`` names them."""

    def __init__(self, message: str, operators: list[str] | None = None):
        super().__init__(message)
        self.operators = list(operators or [])


@dataclass
class OnnxModel:
    """A checked and converted ONNX model."""

    module: nn.Module
    sha256: str
    path: Path
    input_size: tuple[int, ...]
    num_classes: int | None
    opset: int
    operators: dict[str, int] = field(default_factory=dict)
    fidelity_max_abs_diff: float | None = None

    @property
    def arch(self) -> str:
        return PREFIX + self.sha256[:16]


# ---------------------------------------------------------------------------------------------- checking


def _read(path: Path, max_bytes: int) -> tuple[onnx.ModelProto, str]:
    """Parse ``path`` (size-checked, external data never loaded); the proto and the file's sha256."""
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise InputError(f"ONNX file not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path.name} is empty")
    if size > max_bytes:
        raise UnsafeInputError(f"{path.name} is {size} bytes; the limit for an ONNX model is {max_bytes}")
    data = path.read_bytes()
    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{path.name} is not a readable ONNX model (truncated or corrupt protobuf: {exc})") from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise InputError(f"{path.name} is not an ONNX model (no graph; truncated or another file type)")
    return proto, hashlib.sha256(data).hexdigest()


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in ``graph``: initializers, sparse initializers and constant attributes."""
    yield from graph.initializer
    for sp in graph.sparse_initializer:
        yield sp.values
        yield sp.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == onnx.AttributeProto.SPARSE_TENSOR:
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices


def _stored_elements(t: onnx.TensorProto, itemsize: int) -> int:
    """How many elements the tensor's bytes actually hold."""
    if t.HasField("raw_data") or t.raw_data:
        return len(t.raw_data) // max(itemsize, 1)
    return max(len(t.float_data), len(t.int32_data), len(t.int64_data), len(t.double_data),
               len(t.uint64_data), len(t.string_data))


def _check_tensor(t: onnx.TensorProto, name: str) -> int:
    """Refuse external data and sizes not backed by bytes; the tensor's element count."""
    if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
        where = next((e.value for e in t.external_data if e.key == "location"), "?")
        raise UnsafeInputError(f"{name}: tensor '{t.name}' references external data ({where!r}); external data is "
                               "not accepted: save the model with all weights embedded "
                               "(onnx.save(model, path, save_as_external_data=False))")
    if any(d < 0 for d in t.dims):
        raise InputError(f"{name}: tensor '{t.name}' has a negative dimension {list(t.dims)}")
    n = int(np.prod([int(d) for d in t.dims], dtype=object)) if t.dims else 1
    if n > MAX_TENSOR_ELEMENTS:
        raise UnsafeInputError(f"{name}: tensor '{t.name}' declares {n} elements; the limit is {MAX_TENSOR_ELEMENTS}")
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        raise InputError(f"{name}: tensor '{t.name}' has an unknown data type {t.data_type}") from None
    stored = _stored_elements(t, itemsize)
    if stored != n and not (n > 0 and t.data_type == onnx.TensorProto.STRING):
        raise UnsafeInputError(f"{name}: tensor '{t.name}' declares shape {list(t.dims)} ({n} elements) but stores "
                               f"{stored}; refusing a model whose sizes are not backed by its bytes")
    return n


def _opset(proto: onnx.ModelProto, name: str) -> int:
    """The default-domain opset; refuses non-standard domains and versions out of range."""
    versions: dict[str, int] = {}
    for op in proto.opset_import:
        if op.domain not in STANDARD_DOMAINS:
            raise UnsafeInputError(f"{name}: operator domain '{op.domain}' is not a standard ONNX domain "
                                   f"(accepted: {', '.join(repr(d) for d in STANDARD_DOMAINS)})")
        versions[op.domain or "ai.onnx"] = op.version
    opset = versions.get("ai.onnx")
    if opset is None:
        raise InputError(f"{name}: the model imports no default ONNX opset")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(f"{name}: opset {opset} is outside the supported range {MIN_OPSET}..{MAX_OPSET}")
    if proto.functions:
        raise UnsafeInputError(f"{name}: model-local functions ({', '.join(f.name for f in proto.functions)}) "
                               "are not accepted; export with standard operators only")
    return opset


def check_onnx(path: str | Path, *, max_bytes: int = MAX_ONNX_BYTES) -> tuple[onnx.ModelProto, str, int]:
    """Parse and check an untrusted ``.onnx`` file; ``(proto, sha256, opset)``.

    Raises :class:`UnsafeInputError` for external data, custom domains, oversized or unbacked tensors and
    :class:`InputError` for anything unreadable (truncated protobuf, invalid graph, opset out of range).
    """
    path = Path(path)
    proto, sha = _read(path, max_bytes)
    opset = _opset(proto, path.name)
    nodes, total = 0, 0
    for g in _graphs(proto.graph):
        nodes += len(g.node)
        if nodes > MAX_NODES:
            raise UnsafeInputError(f"{path.name}: more than {MAX_NODES} nodes; the graph is too large")
        for node in g.node:
            if node.domain not in STANDARD_DOMAINS:
                raise UnsafeInputError(f"{path.name}: node '{node.name}' uses operator {node.domain}::{node.op_type} "
                                       "from a non-standard domain (custom operators are not accepted)")
        for t in _tensors(g):
            total += _check_tensor(t, path.name)
            if total > MAX_TOTAL_ELEMENTS:
                raise UnsafeInputError(f"{path.name}: the tensors declare more than {MAX_TOTAL_ELEMENTS} elements")
    try:
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise InputError(f"{path.name} is not a valid ONNX model: {str(exc).splitlines()[0]}") from None
    return proto, sha, opset


# -------------------------------------------------------------------------------------------- converting


def _inline_identities(proto: onnx.ModelProto) -> None:
    """Rewire ``Identity(initializer)`` nodes (emitted by torch's exporter for shared weights) to the initializer:
    onnx2torch reads a Conv/Gemm bias only from an initializer."""
    g = proto.graph
    inits = {i.name for i in g.initializer}
    outputs = {o.name for o in g.output}
    alias: dict[str, str] = {}
    kept = []
    for node in g.node:
        inputs = [alias.get(i, i) for i in node.input]
        if (node.op_type == "Identity" and node.domain in ("", "ai.onnx") and inputs and inputs[0] in inits
                and node.output[0] not in outputs):
            alias[node.output[0]] = inputs[0]
            continue
        del node.input[:]
        node.input.extend(inputs)
        kept.append(node)
    del g.node[:]
    g.node.extend(kept)


class _ThresholdedRelu(nn.Module):
    """ONNX ThresholdedRelu: ``x if x > alpha else 0``."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > self.alpha, x, torch.zeros_like(x))


_EXTRA_REGISTERED = False


def _register_converters() -> None:
    """Converters for CNN activations onnx2torch lacks (Mish, ThresholdedRelu); registered once."""
    global _EXTRA_REGISTERED
    from onnx2torch.node_converters.registry import add_converter
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    if _EXTRA_REGISTERED:
        return
    _EXTRA_REGISTERED = True

    @add_converter(operation_type="Mish", version=18)
    def _mish(node: Any, graph: Any) -> Any:
        return OperationConverterResult(torch_module=nn.Mish(), onnx_mapping=onnx_mapping_from_node(node))

    @add_converter(operation_type="ThresholdedRelu", version=10)
    def _thresholded_relu(node: Any, graph: Any) -> Any:
        module = _ThresholdedRelu(float(node.attributes.get("alpha", 1.0)))
        return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


def unsupported_operators(proto: onnx.ModelProto) -> list[str]:
    """Operators of the main graph the converter has no implementation for (``Op`` or ``domain::Op``)."""
    from onnx2torch.node_converters.registry import get_converter

    _register_converters()
    versions = {op.domain: op.version for op in proto.opset_import}
    missing: set[str] = set()
    for node in proto.graph.node:
        version = versions.get(node.domain, versions.get("", 0))
        try:
            get_converter(domain=node.domain, operation_type=node.op_type, version=version)
        except NotImplementedError:
            missing.add(f"{node.domain}::{node.op_type}" if node.domain else node.op_type)
    return sorted(missing)


def _shape(proto: onnx.ModelProto, name: str) -> tuple[int, ...]:
    """The (C, H, W) or (C, L) input size from the single graph input; dynamic spatial dims get a default."""
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise InputError(f"{name}: expected exactly one model input, found {len(inputs)}")
    tt = inputs[0].type.tensor_type
    if tt.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
        raise InputError(f"{name}: the model input must be a float tensor")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]
    if len(dims) not in (3, 4):
        raise InputError(f"{name}: the model input must be (N, C, H, W) or (N, C, L); it has rank {len(dims)}")
    if dims[1] is None:
        raise InputError(f"{name}: the input's channel dimension must be static")
    return tuple(d or DEFAULT_SPATIAL for d in dims[1:])


def _channel_constants_as_parameters(module: nn.Module) -> int:
    """Turn per-channel constant initializers (shape ``(1, C, 1, 1)``, ``(C, 1, 1)``, ``(1, C, 1)``: a ConvNeXt
    layer scale, a folded affine) into parameters, so that Torch-Pruning's dependency graph sees them and prunes
    them with their channels; as buffers they keep their full width and the pruned model breaks. Returns how many."""
    holder = getattr(module, "initializers", None)
    if not isinstance(holder, nn.Module):
        return 0
    count = 0
    for key, buf in list(holder.named_buffers(recurse=False)):
        dims = [i for i, d in enumerate(buf.shape) if d > 1]
        if not buf.is_floating_point() or len(dims) != 1 or dims[0] == buf.ndim - 1:
            continue
        delattr(holder, key)
        holder.register_parameter(key, nn.Parameter(buf.detach().clone()))
        count += 1
    return count


def _fold_constant_modules(module: nn.Module) -> int:
    """Read ``Constant`` nodes' values as attributes instead of calling a module that returns them: a leaf module
    with a 0-dim output (a Pad value) is not a layer, and per-layer hooks (feature capture, compensation) assume
    layer outputs have a batch dimension. Returns how many were folded."""
    from onnx2torch.node_converters.constant import OnnxConstant

    graph = getattr(module, "graph", None)
    if graph is None:
        return 0
    folded = 0
    for node in list(graph.nodes):
        if node.op != "call_module" or not isinstance(module.get_submodule(node.target), OnnxConstant):
            continue
        with graph.inserting_before(node):
            value = graph.get_attr(f"{node.target}.value")
        node.replace_all_uses_with(value)
        graph.erase_node(node)
        folded += 1
    if folded:
        module.recompile()
    return folded


def _convert(proto: onnx.ModelProto, name: str) -> nn.Module:
    from onnx2torch import convert

    missing = unsupported_operators(proto)
    if missing:
        raise UnsupportedModelError(f"{name} cannot be converted: unsupported operators {', '.join(missing)}", missing)
    try:
        module = convert(proto)
    except (NotImplementedError, KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise InputError(f"{name} could not be converted to a torch module: {exc}") from None
    _fold_constant_modules(module)
    _channel_constants_as_parameters(module)
    return module.float().eval()


def fidelity(proto: onnx.ModelProto, module: nn.Module, example: torch.Tensor) -> float:
    """Largest |converted - onnxruntime| on ``example``, relative to the output's scale (0% pruning)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: example.numpy().astype(np.float32)}
    ref = torch.from_numpy(np.asarray(sess.run(None, feed)[0]))
    with torch.no_grad():
        out = module(example)
    out = out[0] if isinstance(out, tuple | list) else out
    return float((out.float() - ref.float()).abs().max() / max(float(ref.abs().max()), 1.0))


_LOCK = threading.Lock()
_SOURCES: dict[str, OnnxModel] = {}
"""Converted models by ``arch`` name (the most recent few), for rebuilding the dense model in this process."""
_KEEP = 4


def load_onnx(path: str | Path, *, max_bytes: int = MAX_ONNX_BYTES, check_fidelity: bool = True) -> OnnxModel:
    """Check ``path``, convert it, verify the conversion against onnxruntime, and register it as an architecture."""
    path = Path(path)
    proto, sha, opset = check_onnx(path, max_bytes=max_bytes)
    input_size = _shape(proto, path.name)
    operators = dict(Counter(n.op_type for n in proto.graph.node))
    _inline_identities(proto)
    module = _convert(proto, path.name)
    example = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            out = module(example)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise InputError(f"{path.name}: the converted model fails on input {tuple(example.shape)}: {exc}") from None
    out = out[0] if isinstance(out, tuple | list) else out
    diff = fidelity(proto, module, example) if check_fidelity else None
    if diff is not None and diff > FIDELITY_ATOL:
        raise InputError(f"{path.name}: the converted model differs from onnxruntime by {diff:.3g} (relative); "
                         "it cannot be pruned faithfully")
    num_classes = int(out.shape[-1]) if out.ndim == 2 else None
    model = OnnxModel(module=module, sha256=sha, path=path.resolve(), input_size=input_size,
                      num_classes=num_classes, opset=opset, operators=operators, fidelity_max_abs_diff=diff)
    with _LOCK:
        _SOURCES.pop(model.arch, None)
        _SOURCES[model.arch] = model
        while len(_SOURCES) > _KEEP:
            _SOURCES.pop(next(iter(_SOURCES)))
    return model


def register_onnx(path: str | Path, **kwargs: Any) -> Any:
    """Load ``path`` (see :func:`load_onnx`) and return its :class:`~simprune.zoo.ArchInfo` (``onnx/<sha>``)."""
    from simprune.zoo import get_arch

    return get_arch(load_onnx(path, **kwargs).arch)


def source_for(arch: str) -> OnnxModel | None:
    """The converted model registered as ``arch`` in this process, if any."""
    with _LOCK:
        return _SOURCES.get(arch)


def arch_info(arch: str) -> Any:
    """The :class:`~simprune.zoo.ArchInfo` of a registered ONNX model (``KeyError`` when unknown here)."""
    from simprune.zoo.registry import ArchInfo

    src = source_for(arch)
    if src is None:
        raise KeyError(f"'{arch}' names an ONNX model not loaded in this process; load the file with "
                       "simprune.onnx_import.load_onnx(path) (or pass it as the weights)")
    channels = src.input_size[0]
    mean = IMAGENET_MEAN if channels == 3 else (0.5,) * channels
    std = IMAGENET_STD if channels == 3 else (0.5,) * channels

    def builder(num_classes: int | None = None, in_channels: int | None = None) -> nn.Module:
        if num_classes not in (None, src.num_classes) or in_channels not in (None, channels):
            raise InputError(f"{arch}: an ONNX model's classes ({src.num_classes}) and input channels ({channels}) "
                             "come from the file and cannot be changed")
        return copy.deepcopy(src.module)

    return ArchInfo(name=arch, builder=builder, input_size=src.input_size, mean=mean, std=std,
                    num_classes=src.num_classes or 0, in_channels=channels, family="onnx",
                    description=f"ONNX model {src.path.name} (sha256 {src.sha256[:16]})", tags=("onnx",),
                    verified=True)


# ------------------------------------------------------------------------------------------------ dry run


def dry_run(module: nn.Module, input_size: tuple[int, ...]) -> dict[str, Any]:
    """What pruning would do: prunable groups (count, channels), groups kept whole and why, FLOPs, params."""
    from simprune.flops import count_model
    from simprune.pruning.groups import default_ignored, discover_groups

    example = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(0))
    model = copy.deepcopy(module).eval()
    counts = count_model(model, example)
    _, specs, skipped = discover_groups(model, example)
    classifier = [{"layer": n, "reason": "classifier: its outputs are the model's classes"}
                  for n in default_ignored(model)]
    return {
        "prunable_groups": len(specs),
        "prunable_channels": int(sum(s.n_channels for s in specs)),
        "groups": [{"layer": s.name, "channels": s.n_channels, "members": len(s.members)} for s in specs],
        "kept_whole": classifier + skipped,
        "flops": int(counts.get("flops", 0)),
        "params": int(counts.get("params", sum(p.numel() for p in model.parameters()))),
    }


def inspect_onnx(path: str | Path, *, max_bytes: int = MAX_ONNX_BYTES) -> dict[str, Any]:
    """Check, convert and dry-run an uploaded ONNX file; a JSON-able summary for the model record.

    Raises :class:`InputError` (:class:`UnsafeInputError` for refused files) and :class:`UnsupportedModelError`
    (with ``operators``) when the model cannot be pruned at all.
    """
    path = Path(path)
    model = load_onnx(path, max_bytes=max_bytes)
    summary = dry_run(model.module, model.input_size)
    if summary["prunable_groups"] == 0:
        ops = sorted(model.operators)
        raise UnsupportedModelError(f"{path.name} has no prunable channel group (operators: {', '.join(ops)})", ops)
    return {
        "format": "onnx", "arch": model.arch, "sha256": model.sha256, "opset": model.opset,
        "input_size": list(model.input_size), "num_classes": model.num_classes, "operators": model.operators,
        "unsupported_operators": [], "fidelity_max_abs_diff": model.fidelity_max_abs_diff, **summary,
    }
