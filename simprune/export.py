"""Verified exports of a pruned model: ``model.pt2``, ``model.onnx``, ``weights.safetensors``, ``plan.json``.

Every file is read back with the consumer's own tooling (``torch.export.load``, onnxruntime, safetensors)
and its outputs compared with the in-memory model on seeded random inputs. The pt2 and ONNX files need no
simprune code to run. Exports run on CPU in float32 on a copy of the model; the caller's model is untouched.

Example::

    records = export_all(model, torch.randn(1, 3, 32, 32), Path("out"))
    # [{"file": "model.pt2", "format": "pt2", "bytes": ..., "sha256": ..., "max_abs_diff": 1.2e-07, ...}, ...]
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simprune.errors import ExportMismatchError

log = logging.getLogger(__name__)

FORMATS = ("pt2", "onnx", "safetensors")
PT2_FILE = "model.pt2"
ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "weights.safetensors"
PLAN_FILE = "plan.json"
ONNX_INPUT = "input"
ONNX_OUTPUT = "logits"
MAX_BATCH = 1024
_ONNX_EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's hard limit is 2 GiB
_DYNAMIC_AXES = {ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}}

RebuildFn = Callable[[Path, Path], nn.Module]
ProgressFn = Callable[[str, float], None]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _flatten(out: Any) -> list[torch.Tensor]:
    """Tensors of a model output (tensor, sequence or mapping), in a stable order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _flatten(out[k])]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten(o)]
    return []


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest absolute difference between two outputs; ``inf`` when their structure or shapes differ.

    Positions where both sides are NaN count as equal; a NaN on one side only counts as ``inf``.
    """
    ta, tb = _flatten(a), _flatten(b)
    if len(ta) != len(tb) or not ta:
        return math.inf
    worst = 0.0
    for x, y in zip(ta, tb, strict=True):
        x = torch.as_tensor(x).detach().to("cpu", torch.float64)
        y = torch.as_tensor(y).detach().to("cpu", torch.float64)
        if x.shape != y.shape:
            return math.inf
        if x.numel() == 0:
            continue
        d = (x - y).abs()
        d = torch.where(torch.isnan(x) & torch.isnan(y), torch.zeros_like(d), d)
        d = torch.nan_to_num(d, nan=math.inf)
        worst = max(worst, float(d.max()))
    return worst


class _Checker:
    """Compares a loaded export with the reference model on seeded random inputs.

    Inputs are standard-normal, shaped like ``example`` with the batch replaced by ``batch`` (when
    given); the reference outputs are computed once per shape and reused across formats. A dynamic-batch
    export is checked on ``n`` inputs of batch 2 plus one of batch 1, since it was traced at batch 2 and
    a batch size baked into the graph would pass at 2 only. An export that raises counts as ``inf``.
    """

    def __init__(self, ref: nn.Module, example: torch.Tensor, n: int, seed: int) -> None:
        self.ref, self.example, self.n, self.seed = ref, example, n, seed
        self._cache: dict[tuple[int, ...], tuple[list[torch.Tensor], list[Any]]] = {}
        self.error: str | None = None

    def _cases(self, batch: int | None) -> tuple[list[torch.Tensor], list[Any]]:
        shape = list(self.example.shape)
        if batch is not None:
            shape[0] = batch
        key = tuple(shape)
        if key not in self._cache:
            g = torch.Generator().manual_seed(self.seed)
            xs = [torch.randn(shape, generator=g, dtype=torch.float32) for _ in range(self.n)]
            with torch.no_grad():
                self._cache[key] = (xs, [self.ref(x) for x in xs])
        return self._cache[key]

    def check(self, run: Callable[[torch.Tensor], Any], dynamic: bool) -> tuple[float, float]:
        """(max |export - reference|, max |reference|); sets ``self.error`` when ``run`` raised."""
        self.error = None
        xs, expected = self._cases(2 if dynamic else None)
        cases = list(zip(xs, expected, strict=True))
        if dynamic:
            xs1, expected1 = self._cases(1)
            cases.append((xs1[0], expected1[0]))
        worst, scale = 0.0, 0.0
        for x, e in cases:
            scale = max([scale] + [float(t.detach().abs().max()) for t in _flatten(e) if t.numel()])
            try:
                with torch.no_grad():
                    got = run(x)
            except Exception as exc:  # a loaded export that cannot run is a mismatch, reported as such
                self.error = f"batch {x.shape[0]}: {type(exc).__name__}: {exc}"[:500]
                return math.inf, scale
            worst = max(worst, max_abs_diff(e, got))
        return worst, scale

    def extra(self) -> dict[str, str]:
        """``{"error": ...}`` after a failed run, else empty."""
        return {"error": self.error} if self.error else {}


def _record(path: Path, fmt: str, diff: float | None, scale: float, **extra: Any) -> dict[str, Any]:
    return {
        "file": path.name,
        "format": fmt,
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "max_abs_diff": diff,
        "max_abs_output": scale,  # size of the reference outputs, to judge an absolute difference
        **extra,
    }


def _export_input(example: torch.Tensor) -> torch.Tensor:
    """Batch-2 tracing input: a batch of 1 makes the exporters specialise the batch dimension to 1."""
    if example.shape[0] >= 2:
        return example
    return example.expand(2, *example.shape[1:]).contiguous()


def _batch_dim() -> torch.export.Dim:
    return torch.export.Dim("batch", min=1, max=MAX_BATCH)


def export_pt2(
    model: nn.Module, example: torch.Tensor, path: Path
) -> tuple[torch.export.ExportedProgram, bool]:
    """``torch.export`` with a dynamic batch dimension, static when that fails; returns (program, dynamic)."""
    try:
        ep = torch.export.export(model, (_export_input(example),), dynamic_shapes=({0: _batch_dim()},))
        dynamic = True
    except Exception as exc:  # any tracing failure: retry static
        log.warning("torch.export with a dynamic batch failed (%s); exporting a static batch", exc)
        ep = torch.export.export(model, (example,))
        dynamic = False
    torch.export.save(ep, str(path))
    return ep, dynamic


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> dict[str, Any]:
    """ONNX export, dynamo exporter first then TorchScript; dynamic batch when possible.

    Returns ``{"exporter": "dynamo"|"torchscript", "opset": int, "dynamic_batch": bool}``.
    """
    big = sum(p.numel() * p.element_size() for p in model.state_dict().values()) > _ONNX_EXTERNAL_DATA_BYTES
    attempts: list[tuple[str, bool]] = [
        ("dynamo", True),
        ("dynamo", False),
        ("torchscript", True),
        ("torchscript", False),
    ]
    errors: list[str] = []
    for exporter, dynamic in attempts:
        _remove_onnx(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if exporter == "dynamo":
                    opset = 18
                    prog = torch.onnx.export(
                        model,
                        (_export_input(example) if dynamic else example,),
                        str(path),
                        dynamo=True,
                        input_names=[ONNX_INPUT],
                        output_names=[ONNX_OUTPUT],
                        dynamic_shapes=({0: _batch_dim()},) if dynamic else None,
                        opset_version=opset,
                        external_data=big,
                        verbose=False,
                    )
                    del prog
                else:
                    opset = 17
                    torch.onnx.export(
                        model,
                        (example,),
                        str(path),
                        dynamo=False,
                        input_names=[ONNX_INPUT],
                        output_names=[ONNX_OUTPUT],
                        dynamic_axes=_DYNAMIC_AXES if dynamic else None,
                        opset_version=opset,
                        do_constant_folding=True,
                    )
            _check_onnx(path)
            return {"exporter": exporter, "opset": opset, "dynamic_batch": dynamic}
        except Exception as exc:  # try the next exporter
            errors.append(f"{exporter}{'' if dynamic else ' (static)'}: {type(exc).__name__}: {exc}"[:500])
            log.warning("ONNX export attempt failed: %s", errors[-1])
    _remove_onnx(path)
    raise RuntimeError("ONNX export failed with every exporter:\n" + "\n".join(errors))


def _remove_onnx(path: Path) -> None:
    for p in path.parent.glob(path.name + "*"):
        if p.is_file():
            p.unlink()


def _check_onnx(path: Path) -> None:
    """onnx.checker on the file, plus the agreed input/output names and the batch axis name."""
    import onnx

    onnx.checker.check_model(str(path))
    m = onnx.load(str(path), load_external_data=False)
    inputs = [i.name for i in m.graph.input]
    outputs = [o.name for o in m.graph.output]
    if inputs[:1] != [ONNX_INPUT] or ONNX_OUTPUT not in outputs:
        raise ValueError(f"unexpected ONNX graph names: inputs {inputs}, outputs {outputs}")


def _onnx_dim_param(path: Path) -> str:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return m.graph.input[0].type.tensor_type.shape.dim[0].dim_param


def onnx_session(path: Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for ``path``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or max(1, torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def save_safetensors(model: nn.Module, path: Path) -> None:
    """Save ``model.state_dict()`` as safetensors: contiguous CPU copies, shared storage cloned apart."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})


def load_safetensors_into(model: nn.Module, path: Path) -> nn.Module:
    """Load ``path`` into ``model`` (strict: all keys present, none extra, same shapes); returns it."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path), device="cpu"), strict=True)
    return model


StepFn = Callable[[str, float], None]
"""``step(name, part)``: progress within the current format (``part`` in [0, 1])."""


def _check_export_args(formats: Sequence[str], n_checks: int, plan: dict[str, Any] | None,
                       rebuild: RebuildFn | None) -> None:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; known: {list(FORMATS)}")
    if n_checks < 1:
        raise ValueError("n_checks must be at least 1")
    if rebuild is not None and plan is None:
        raise ValueError("rebuild needs a plan: it is called as rebuild(plan_path, weights_path)")


def _write_pt2(ref: nn.Module, example: torch.Tensor, out: Path, checker: _Checker,
               step: StepFn) -> list[dict[str, Any]]:
    step("export:pt2", 0.0)
    path = out / PT2_FILE
    _, dynamic = export_pt2(ref, example, path)
    step("verify:pt2", 0.5)
    loaded = torch.export.load(str(path)).module()
    diff, scale = checker.check(loaded, dynamic)
    return [_record(path, "pt2", diff, scale, dynamic_batch=dynamic, verified=True, **checker.extra())]


def _write_onnx(ref: nn.Module, example: torch.Tensor, out: Path, checker: _Checker,
                step: StepFn) -> list[dict[str, Any]]:
    step("export:onnx", 0.0)
    path = out / ONNX_FILE
    info = export_onnx(ref, example, path)
    step("verify:onnx", 0.5)
    if info["dynamic_batch"] and _onnx_dim_param(path) != "batch":
        info["batch_axis"] = _onnx_dim_param(path)
    sess = onnx_session(path)

    def run_onnx(x: torch.Tensor, sess: Any = sess) -> torch.Tensor:
        return torch.from_numpy(sess.run([ONNX_OUTPUT], {ONNX_INPUT: x.numpy()})[0])

    diff, scale = checker.check(run_onnx, info["dynamic_batch"])
    records = [_record(path, "onnx", diff, scale, **info, verified=True, **checker.extra())]
    for extra in sorted(out.glob(ONNX_FILE + "?*")):  # external data, when the model is > ~2 GB
        records.append(_record(extra, "onnx_data", diff, scale, verified=True))
    return records


def _reload_weights(ref: nn.Module, path: Path, plan_path: Path,
                    rebuild: RebuildFn | None) -> Callable[[torch.Tensor], Any]:
    """The model rebuilt from the written files; one that raises when they do not load."""
    try:
        if rebuild is not None:
            return rebuild(plan_path, path).to("cpu", torch.float32).eval()
        return load_safetensors_into(copy.deepcopy(ref), path)
    except Exception as exc:  # weights (or plan) that do not load are a failed verification
        msg = f"loading failed: {type(exc).__name__}: {exc}"[:500]

        def failed(x: torch.Tensor, msg: str = msg) -> Any:
            raise RuntimeError(msg)

        return failed


def _write_safetensors(ref: nn.Module, out: Path, checker: _Checker, step: StepFn, plan: dict[str, Any] | None,
                       rebuild: RebuildFn | None) -> list[dict[str, Any]]:
    step("export:safetensors", 0.0)
    path = out / WEIGHTS_FILE
    save_safetensors(ref, path)
    plan_path = out / PLAN_FILE
    if plan is not None:
        plan_path.write_text(json.dumps(plan, indent=2))
    step("verify:safetensors", 0.5)
    verified_with = "deepcopy" if rebuild is None else "rebuild"
    rebuilt = _reload_weights(ref, path, plan_path, rebuild)
    diff, scale = checker.check(rebuilt, False)
    records = [_record(path, "safetensors", diff, scale, verified_with=verified_with, verified=True,
                       **checker.extra())]
    if plan is not None:
        with_rebuild = rebuild is not None
        records.append(_record(plan_path, "plan", diff if with_rebuild else None, scale, verified=with_rebuild))
    return records


def _check_tolerance(records: list[dict[str, Any]], tol: float, rtol: float) -> None:
    """Set each record's ``tolerance``; raise :class:`ExportMismatchError` naming every file beyond it."""
    for r in records:
        r["tolerance"] = tol + rtol * r["max_abs_output"]
    bad = [r for r in records if r["max_abs_diff"] is not None and not r["max_abs_diff"] <= r["tolerance"]]
    if bad:
        detail = ", ".join(
            f"{r['file']}: max |diff| {r['max_abs_diff']:.3g} > {r['tolerance']:.3g} "
            f"(outputs up to {r['max_abs_output']:.3g})"
            for r in bad
        )
        err = ExportMismatchError(
            f"exported model differs from the in-memory model by more than {tol:g}: {detail}"
        )
        err.records = records  # type: ignore[attr-defined]
        raise err


def export_all(
    model: nn.Module,
    example_input: torch.Tensor,
    out_dir: Path | str,
    formats: Sequence[str] = FORMATS,
    tol: float = 1e-4,
    n_checks: int = 3,
    seed: int = 0,
    plan: dict[str, Any] | None = None,
    rebuild: RebuildFn | None = None,
    progress: ProgressFn | None = None,
    rtol: float = 0.0,
) -> list[dict[str, Any]]:
    """Write the requested exports into ``out_dir``, verify each by loading it back; one record per file.

    Each record has ``file``, ``format``, ``bytes``, ``sha256``, ``max_abs_diff`` (over ``n_checks`` seeded
    random inputs; batch 2, plus one of batch 1, where the export has a dynamic batch), ``max_abs_output``
    (largest reference output, to judge the absolute difference), ``tolerance`` (the bound applied) plus
    format details (``dynamic_batch``, ``exporter``/``opset`` for ONNX, ``verified_with`` for safetensors,
    ``error`` when a loaded export failed to run). ``plan.json`` (written when ``plan``
    is given) is verified only through ``rebuild(plan_path, weights_path)``; without ``rebuild`` the
    safetensors are loaded into a deep copy of the model and the plan record has ``max_abs_diff: None``.

    Raises :class:`ExportMismatchError` naming every file whose difference exceeds
    ``tol + rtol * max_abs_output`` (``rtol`` defaults to 0: a purely absolute tolerance), after all
    formats were written; the exception carries the records as ``.records``. A non-zero ``rtol`` (e.g.
    1e-6) accepts float32 reassociation in onnxruntime on models with very large logits (random-init deep
    nets reach |logit| ~ 600, where ORT differs by ~2e-4).
    """
    _check_export_args(formats, n_checks, plan, rebuild)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ref = copy.deepcopy(model).to("cpu", torch.float32).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    example = example_input.detach().to("cpu", torch.float32)
    fmts = list(dict.fromkeys(formats))
    steps = max(1, len(fmts))

    def stepper(i: int) -> StepFn:
        def step(name: str, part: float) -> None:
            if progress is not None:
                progress(name, min(1.0, (i + part) / steps))

        return step

    checker = _Checker(ref, example, n_checks, seed)
    records: list[dict[str, Any]] = []
    for i, fmt in enumerate(fmts):
        step = stepper(i)
        if fmt == "pt2":
            records += _write_pt2(ref, example, out, checker, step)
        elif fmt == "onnx":
            records += _write_onnx(ref, example, out, checker, step)
        elif fmt == "safetensors":
            records += _write_safetensors(ref, out, checker, step, plan, rebuild)
        step(f"done:{fmt}", 1.0)
    _check_tolerance(records, tol, rtol)
    return records
