"""The end-to-end job: checkpoint file in, verified artifacts and report out. Used by the CLI and the worker.

Phases, each a method of :class:`_JobRun`: load (model and data) -> evaluate the dense model -> the device
profile (latency targets: a profile file, or the worker's own, measured once and cached) -> run the method
(:meth:`simprune.methods.Method.run`, dispatched through the registry) -> fine-tune (methods that do not train
themselves, when the spec asks) -> evaluate the pruned model -> export and verify -> measure the dense and the
pruned model's latency on the worker's device -> report.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from simprune.jobspec import JobSpec

_T = TypeVar("_T")

ProgressFn = Callable[[str, float], None]
"""``progress(stage, fraction)``: stage name and overall progress in [0, 1]."""
DetailFn = Callable[[str, dict[str, Any]], None]
"""``detail(stage, info)``: training progress (``epoch``, ``epochs``, ``step``, ``steps``, ``eta_s``, ``loss``,
and after each epoch its record: ``train_loss``, ``top1`` (a fraction), ``seconds``); in the other stages counts
``what``, ``done``, ``total`` (evaluation batches, groups scored, sensitivity probes, groups selected or pruned
sequentially, exports; ``step`` names the sub-step) with ``eta_s`` once the pace is known."""

# Share of the overall progress bar each stage covers (the rest is fine-tuning when asked).
_STAGES = {"load": (0.0, 0.03), "eval_before": (0.03, 0.15), "profile": (0.15, 0.2), "prune": (0.2, 0.55),
           "finetune": (0.55, 0.8), "eval_after": (0.8, 0.88), "export": (0.88, 0.94), "latency": (0.94, 0.98),
           "report": (0.98, 1.0)}


@dataclass
class PruneJob:
    """A :class:`JobSpec` plus the local files it runs on. The service resolves its ids to these paths.

    ``mean``/``std``/``num_classes``/``in_channels``/``input_size`` override what the architecture and the
    checkpoint say. ``checkpoint_dir`` holds fine-tuning checkpoints (default ``out_dir/finetune_ckpt``, removed
    after success); a rerun with the same directory resumes. ``profile``: the device profile of a latency
    target, a profile file or ``"worker"`` (this runner's own, cached in ``profile_cache``, default
    :func:`simprune.profiling.default_cache_dir`); None follows ``spec.latency_profile``.
    """

    spec: JobSpec
    arch: str
    weights: Path
    calib: Path | None = None
    eval: Path | None = None
    train: Path | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_classes: int | None = None
    in_channels: int | None = None
    input_size: tuple[int, ...] | None = None
    device: str = "auto"
    checkpoint_dir: Path | None = None
    runner: dict[str, Any] | None = None  # who runs the job (the service's worker: id, name), for the report
    profile: Path | str | None = None
    profile_cache: Path | None = None

    @classmethod
    def build(cls, **fields: Any) -> PruneJob:
        """A job from keyword fields: :class:`JobSpec` fields form the (validated) spec, the rest are files
        and overrides. ``device`` is the spec's (auto, cpu, cuda) or, naming one device (``cuda:1``, ``mps``),
        the runner's. Raises :class:`pydantic.ValidationError` for an invalid spec."""
        if str(fields.get("device", "auto")).strip().lower() not in ("auto", "cpu", "cuda"):
            fields["runner_device"] = fields.pop("device")
        runner_device = fields.pop("runner_device", "auto")
        spec_fields = {k: fields.pop(k) for k in list(fields) if k in JobSpec.model_fields}
        return cls(spec=JobSpec.model_validate(spec_fields), device=runner_device, **fields)

    def check(self) -> None:
        """The spec's data requirements against the files given (InputError naming each problem)."""
        from simprune.errors import InputError

        errors = self.spec.data_errors(self.calib is not None, self.train is not None)
        if self.profile is not None and str(self.profile) != "worker" and not Path(self.profile).is_file():
            errors.append(("profile", f"profile file {self.profile} does not exist"))
        if errors:
            raise InputError("; ".join(f"{name}: {msg}" for name, msg in errors))


@dataclass
class _Loaded:
    """The dense model and what was derived from it and the data."""

    model: Any
    device: Any
    example: Any
    input_size: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int | None
    in_channels: int
    calib: Any
    evals: Any


def run_prune_job(
    job: PruneJob,
    out_dir: Path,
    progress: ProgressFn | None = None,
    should_cancel: Callable[[], bool] | None = None,
    detail: DetailFn | None = None,
) -> dict[str, Any]:
    """Run ``job``, write artifacts into ``out_dir`` and return the report (also written as report.json).

    Artifacts: model.pt2, model.onnx, weights.safetensors, plan.json (each verified against the in-memory
    pruned model), report.json, report.html and the plots it embeds. Accuracies are fractions in [0, 1].
    Raises :class:`simprune.errors.InputError` for bad input and :class:`simprune.errors.JobCancelled` when
    ``should_cancel()`` turns true between stages or batches. ``detail`` receives per-step/per-epoch
    training progress with an ETA (fine-tuning and the training methods).
    """
    from simprune.methods import get_method

    method = get_method(job.spec.method, **job.spec.options)
    job.check()
    run = _JobRun(job, Path(out_dir), progress, should_cancel, detail)
    loaded = run.load()
    acc_before = run.evaluate("eval_before", loaded, loaded.model)
    run.device_profile(loaded)
    run.checkpoint("pruning")
    run.at("prune")
    if method.trains:  # the method trains while it prunes: an out-of-memory retry reruns it from the dense model
        result = run.oom_retry("training", lambda: method.run(run.context(loaded)), loaded.model)
    else:
        result = method.run(run.context(loaded))
    run.timings.update(result.timings)
    if not method.trains and job.spec.finetune is not None:
        result.report["finetune"] = run.oom_retry("fine-tuning", lambda: run.finetune(result.model, loaded),
                                                  result.model)
    acc_after = run.evaluate("eval_after", loaded, result.model)
    exports = run.export(result, loaded)
    latency = run.latency(result, loaded)
    return run.write_report(result, loaded, exports, acc_before, acc_after, latency)


class _JobRun:
    """One run of a job: progress, cancellation, timings, and the phases of :func:`run_prune_job`."""

    def __init__(self, job: PruneJob, out_dir: Path, progress: ProgressFn | None,
                 should_cancel: Callable[[], bool] | None, detail: DetailFn | None) -> None:
        self.job, self.spec, self.out_dir = job, job.spec, out_dir
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.notify = progress or (lambda stage, frac: None)
        self.cancel_fn, self.detail = should_cancel, detail
        self.t0 = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.oom_retries: list[dict[str, Any]] = []
        self._count_start: dict[str, tuple[float, int]] = {}
        self.profile: Any = None  # the DeviceProfile of a latency target (or of a named profile)
        self.settings: dict[str, Any] | None = None  # the preset and switches the prune phase ran with
        self.profile_source: str | None = None

    def at(self, stage: str, frac: float = 0.0, label: str | None = None) -> None:
        """Report progress ``frac`` within ``stage``'s share of the job (shown as ``label`` if given)."""
        lo, hi = _STAGES[stage]
        self.notify(label or stage, lo + (hi - lo) * min(max(frac, 0.0), 1.0))

    def count(self, phase: str, info: dict[str, Any]) -> None:
        """Forward a stage's counts (``what``, ``done`` of ``total``) as detail, with ``eta_s`` from the pace
        since the first count of that kind."""
        if self.detail is None:
            return
        done, total = info.get("done"), info.get("total")
        out = dict(info)
        if isinstance(done, int) and isinstance(total, int):
            now = time.perf_counter()
            t0, d0 = self._count_start.setdefault(f"{phase}:{info.get('what')}", (now, done))
            if done > d0:
                out["eta_s"] = round((now - t0) / (done - d0) * max(total - done, 0), 1)
        self.detail(phase, out)

    def should_cancel(self) -> bool:
        return bool(self.cancel_fn and self.cancel_fn())

    def checkpoint(self, stage: str) -> None:
        """Raise :class:`JobCancelled` when cancellation was asked for, before ``stage``."""
        from simprune.errors import JobCancelled

        if self.should_cancel():
            raise JobCancelled(f"cancelled before {stage}")

    def load(self) -> _Loaded:
        """Build the dense model from the checkpoint and open the calibration and evaluation data."""
        import torch

        from simprune.checkpoint import load_state_dict
        from simprune.device import select_device
        from simprune.errors import InputError
        from simprune.zoo import build_for_state_dict, get_arch
        from simprune.zoo.infer import infer_num_classes

        job = self.job
        torch.manual_seed(self.spec.seed)
        self.at("load")
        t = time.perf_counter()
        device = select_device(job_device(self.spec.device, job.device))
        if Path(job.weights).suffix.lower() == ".onnx":  # checked, converted, registered as arch onnx/<sha256>
            from simprune.onnx_import import register_onnx

            info = register_onnx(job.weights)
            job.arch, model = info.name, info.builder(num_classes=job.num_classes, in_channels=job.in_channels)
            checkpoint_classes = info.num_classes or None
        else:
            try:
                info = get_arch(job.arch)
            except KeyError as exc:
                raise InputError(str(exc.args[0])) from None
            state = load_state_dict(job.weights)
            model = build_for_state_dict(job.arch, state, num_classes=job.num_classes, in_channels=job.in_channels)
            checkpoint_classes = infer_num_classes(job.arch, state)  # also a classifier that is a 1x1 conv
        in_channels = job.in_channels or info.in_channels
        input_size = tuple(job.input_size or (in_channels, *info.input_size[1:]))
        mean, std = tuple(job.mean or info.mean), tuple(job.std or info.std)
        if len(mean) != input_size[0] or len(std) != input_size[0]:
            raise InputError(f"mean/std need {input_size[0]} values (one per input channel)")
        model.to(device).eval()
        example = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(self.spec.seed))
        loaded = _Loaded(model=model, device=device, example=example, input_size=input_size, mean=mean, std=std,
                         num_classes=job.num_classes or _out_features(model) or checkpoint_classes,
                         in_channels=in_channels,
                         calib=None, evals=None)
        loaded.calib = self._loader(job.calib, self.spec.calib_samples, loaded)
        loaded.evals = self._loader(job.eval, self.spec.eval_samples, loaded)
        self.timings["load"] = round(time.perf_counter() - t, 4)
        return loaded

    def _loader(self, path: Path | None, limit: int | None, loaded: _Loaded) -> Any:
        from simprune.data import make_loader, open_dataset

        if path is None:
            return None
        ds = open_dataset(path, mean=loaded.mean, std=loaded.std, input_size=loaded.input_size, limit=limit,
                          seed=self.spec.seed)
        return make_loader(ds, self.spec.batch_size, shuffle=False, seed=self.spec.seed)

    def evaluate(self, stage: str, loaded: _Loaded, net: Any) -> float | None:
        """Top-1 (a fraction) of ``net`` on the evaluation set (None without one), timed as ``stage``."""
        from simprune.evaluate import evaluate

        if loaded.evals is None:
            return None
        self.checkpoint("evaluation")
        self.at(stage)
        start = time.perf_counter()
        def batches(done: int, total: int | None) -> None:
            self.at(stage, done / total if total else 0.0)
            if total:
                self.count(stage, {"what": "batches", "done": done, "total": total})

        top1 = evaluate(net, loaded.evals, loaded.device, batches, self.should_cancel)["top1"]
        self.timings[stage] = round(time.perf_counter() - start, 4)
        return top1

    def context(self, loaded: _Loaded) -> Any:
        """The :class:`simprune.methods.RunContext` the method runs in."""
        from simprune.methods import RunContext

        return RunContext(
            spec=self.spec, dense=loaded.model, arch=self.job.arch, out_dir=self.out_dir, device=loaded.device,
            example=loaded.example, input_size=loaded.input_size, mean=loaded.mean, std=loaded.std,
            num_classes=loaded.num_classes, in_channels=loaded.in_channels, calib=loaded.calib,
            evals=loaded.evals, progress=lambda frac, label=None: self.at("prune", frac, label),
            train_progress=self.train_progress, should_cancel=self.should_cancel,
            prune=lambda criterion: self.prune(criterion, loaded), train_setup=lambda what: self.train_setup(
                what, loaded), plan=lambda report: self.plan(report, loaded))

    def prune(self, criterion: Any, loaded: _Loaded) -> tuple[Any, dict[str, Any]]:
        """:func:`simprune.prune` with the spec's target (FLOPs, ratio, or speedup with the device profile),
        allocation, rounding (the profile's ``round_to`` unless the spec gives one) and compensation."""
        from simprune.pruning.phases import prune

        spec = self.spec
        kwargs: dict[str, Any] = {}
        if spec.target_speedup is not None:
            kwargs = {"target_speedup": spec.target_speedup, "latency_profile": self.profile}
        self.settings = spec.settings(has_calibration=loaded.calib is not None)
        if self.settings["allocation_options"]:
            kwargs["allocation_options"] = self.settings["allocation_options"]
        round_to = spec.round_to if spec.round_to is not None or self.profile is None else self.profile.round_to
        return prune(loaded.model, loaded.example.to(loaded.device), criterion,
                     target_flops_reduction=spec.target_flops_reduction, pruning_ratio=spec.pruning_ratio,
                     calib=loaded.calib, allocation=self.settings["allocation"], round_to=round_to,
                     compensation=self.settings["compensation"],
                     compensation_options=self.settings["compensation_options"] or None, device=loaded.device,
                     progress=lambda stage, frac: self.at("prune", frac), should_cancel=self.should_cancel,
                     detail=lambda stage, info: self.count("prune", {"step": stage, **info}), **kwargs)

    def device_profile(self, loaded: _Loaded) -> None:
        """The device profile the job names (a file, or ``"worker"``: measured here once and cached), or the
        worker's for a latency target that names none; refused when its architecture or input size is not the
        job's."""
        from simprune.errors import InputError
        from simprune.profiles import load_profile

        source = self.job.profile if self.job.profile is not None else self.spec.latency_profile
        if source is None and self.spec.target_speedup is None:
            return
        self.checkpoint("profiling")
        self.at("profile")
        t = time.perf_counter()
        if source is None or str(source) == "worker":
            from simprune.profiling import worker_profile

            self.profile_source = "worker"
            self.profile = worker_profile(self.job.arch, loaded.model, loaded.example, loaded.device,
                                          self.job.profile_cache)
        else:
            self.profile_source = "file"
            self.profile = load_profile(source)
        prof = self.profile
        if prof.arch != self.job.arch:
            raise InputError(f"the device profile is for architecture '{prof.arch}', the job's is '{self.job.arch}'"
                             "; measure one for this architecture (simprune profile --arch ...)")
        if tuple(prof.input_size) != tuple(loaded.input_size):
            raise InputError(f"the device profile was measured at input size {tuple(prof.input_size)}, the job's "
                             f"is {tuple(loaded.input_size)}; measure one at this size (--input-size)")
        self.timings["profile"] = round(time.perf_counter() - t, 4)
        self.at("profile", 1.0)

    def plan(self, report: dict[str, Any], loaded: _Loaded) -> dict[str, Any]:
        """The standard channel plan (``plan.json``) of a pruning report."""
        from simprune.plan import make_plan

        return make_plan(report, arch=self.job.arch, input_size=loaded.input_size, num_classes=loaded.num_classes,
                         in_channels=loaded.in_channels, mean=loaded.mean, std=loaded.std)

    def train_progress(self, label: str) -> Callable[..., None]:
        """A training progress callback: moves the bar within ``finetune`` and forwards the detail."""
        def cb(_stage: str, frac: float, info: dict[str, Any] | None = None) -> None:
            self.at("finetune", frac, label)
            if self.detail is not None and info:
                self.detail(label, dict(info))

        return cb

    def train_setup(self, what: str, loaded: _Loaded) -> tuple[Any, Any, Path]:
        """Training dataset, training config and checkpoint directory for ``what`` (fine-tuning, dcff...)."""
        from simprune.data import open_dataset
        from simprune.errors import InputError
        from simprune.finetune import FinetuneConfig

        ft = self.spec.finetune
        if ft is None or self.job.train is None:
            raise InputError(f"{what} needs training data and epochs (--train DATA --finetune-epochs N; "
                             "API: train_dataset_id and finetune.epochs)")
        config = FinetuneConfig(**ft.config().model_dump())
        train_ds = open_dataset(self.job.train, mean=loaded.mean, std=loaded.std, input_size=loaded.input_size,
                                train_augment=True, limit=ft.train_samples, seed=self.spec.seed)
        return train_ds, config, self.job.checkpoint_dir or self.out_dir / "finetune_ckpt"

    def finetune(self, pruned: Any, loaded: _Loaded) -> dict[str, Any]:
        """Fine-tune the pruned model (distilling from the dense one when asked); the fine-tuning report."""
        from simprune.finetune import finetune

        self.checkpoint("fine-tuning")
        t = time.perf_counter()
        train_ds, config, ckpt_dir = self.train_setup("fine-tuning", loaded)
        result = finetune(
            pruned, train_ds, config, teacher=loaded.model if config.distill else None,
            eval_ds=loaded.evals.dataset if loaded.evals is not None else None, device=loaded.device,
            checkpoint_dir=ckpt_dir, progress=self.train_progress("finetune"), should_cancel=self.should_cancel,
        )
        self.timings["finetune"] = round(time.perf_counter() - t, 4)
        return {"history": result.history, "best_epoch": result.best_epoch, "best_top1": result.best_top1,
                "resumed_from": result.resumed_from, "config": self.spec.finetune.config().model_dump()}

    def oom_retry(self, what: str, phase: Callable[[], _T], model: Any) -> _T:
        """Run a training phase; when CUDA runs out of memory, free it, halve ``finetune.batch_size``, put
        ``model``'s weights back as they were and rerun the phase once (from scratch: its checkpoints are for the
        old batch size). A second out-of-memory fails with :class:`InputError` naming both batch sizes."""
        import torch

        from simprune.errors import InputError

        ft = self.spec.finetune
        if ft is None:
            return phase()
        snapshot = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        first = ft.batch_size
        try:
            return phase()
        except torch.cuda.OutOfMemoryError as exc:
            error = str(exc).splitlines()[0] if str(exc) else "CUDA out of memory"
        # outside the except block: the traceback's frames (and their tensors) are gone before the retry
        free_cuda_memory()
        if first < 2:
            raise InputError(f"out of GPU memory while {what} with batch size 1: the model does not fit ({error})")
        ft.batch_size = first // 2
        self.oom_retries.append({"phase": what, "batch_size": first, "retry_batch_size": ft.batch_size,
                                 "error": error})
        try:
            model.load_state_dict(snapshot)
        except RuntimeError:  # the phase changed the model's shapes in place: it cannot be rerun
            raise InputError(f"out of GPU memory while {what} with batch size {first} ({error}); lower "
                             "finetune.batch_size") from None
        shutil.rmtree(self.job.checkpoint_dir or self.out_dir / "finetune_ckpt", ignore_errors=True)
        try:
            return phase()
        except torch.cuda.OutOfMemoryError:
            pass
        free_cuda_memory()
        raise InputError(f"out of GPU memory while {what}, also after retrying with half the batch size "
                         f"({first} -> {ft.batch_size}); lower finetune.batch_size or use a larger GPU")

    def export(self, result: Any, loaded: _Loaded) -> list[dict[str, Any]]:
        """Write and verify every requested export format."""
        from simprune.export import export_all

        self.checkpoint("export")
        self.at("export")
        t = time.perf_counter()
        exports = export_all(
            result.model.cpu(), loaded.example, self.out_dir, formats=tuple(self.spec.exports),
            plan=result.plan if result.plan is not None else self.plan(result.report, loaded),
            rebuild=result.rebuild or _rebuild_plan, progress=self.export_progress,
            rtol=1e-5,  # float32 noise on large outputs (random-init or deep models) is not a mismatch
        )
        self.timings["export"] = round(time.perf_counter() - t, 4)
        if self.job.checkpoint_dir is None:  # the default checkpoint directory is not an artifact
            shutil.rmtree(self.out_dir / "finetune_ckpt", ignore_errors=True)
        return exports

    def latency(self, result: Any, loaded: _Loaded) -> dict[str, Any] | None:
        """The dense and the pruned model timed on the job's device (:func:`simprune.latency.measure_latency`,
        with the exported model.onnx against a dense ONNX export), or None when the spec turns it off. A failed
        measurement is reported (``error``), never fails the job."""
        import copy
        import logging
        import tempfile

        from simprune.jobspec import measure_latency_default
        from simprune.latency import LatencyConfig, measure_latency

        wanted = self.spec.measure_latency
        if not (measure_latency_default() if wanted is None else wanted):
            return None
        self.checkpoint("latency measurement")
        self.at("latency")
        t = time.perf_counter()
        spec, report = self.spec, result.report
        batches = list(spec.latency_batch_sizes or [])
        if self.profile is not None and batches and self.profile.batch_size not in batches:
            batches.append(self.profile.batch_size)
        config = LatencyConfig(batch_sizes=tuple(batches) or None, budget_s=spec.latency_budget_s)
        if self.profile is not None and not batches:
            default = config.batches(loaded.device)
            config.batch_sizes = tuple(dict.fromkeys((*default, self.profile.batch_size)))
        flops_ratio = report["flops_before"] / report["flops_after"] if report.get("flops_after") else None
        pruned_onnx = self.out_dir / "model.onnx"
        try:
            with tempfile.TemporaryDirectory(prefix="simprune-latency-") as tmp:
                onnx = None
                if pruned_onnx.is_file():
                    from simprune.export import export_onnx

                    dense_cpu = copy.deepcopy(loaded.model).cpu().eval()
                    export_onnx(dense_cpu, loaded.example.cpu(), Path(tmp) / "dense.onnx")
                    onnx = (Path(tmp) / "dense.onnx", pruned_onnx)
                config.budget_s = max(1.0, spec.latency_budget_s - (time.perf_counter() - t))  # export included
                out = measure_latency(loaded.model, copy.deepcopy(result.model), loaded.input_size, loaded.device,
                                      onnx=onnx, flops_ratio=flops_ratio, config=config)
        except Exception as exc:  # timing is information: a failure is reported, the artifacts stand
            logging.getLogger(__name__).warning("latency measurement failed: %s", exc, exc_info=True)
            out = {"error": f"{type(exc).__name__}: {exc}"[:500], "device": str(loaded.device)}
        free_cuda_memory()
        self.timings["latency"] = round(time.perf_counter() - t, 4)
        self.at("latency", 1.0)
        return out

    def latency_summary(self, full: dict[str, Any], loaded: _Loaded) -> None:
        """Predicted vs measured speedup (latency targets) and the warnings on measured speed, into ``full``."""
        from simprune.latency import device_name, latency_warning
        from simprune.profiling import profile_matches

        latency = full.get("latency") or {}
        flops_ratio = full["flops_before"] / full["flops_after"] if full.get("flops_after") else None
        warning = latency_warning(latency, flops_ratio) if latency.get("rows") else None
        if warning:
            full["warnings"].append(warning)
        if latency.get("error"):
            full["warnings"].append(f"latency measurement failed: {latency['error']}")
        if self.profile is None:
            return
        import torch

        prof = self.profile
        threads = latency.get("threads") or torch.get_num_threads()
        same = profile_matches(prof, loaded.device, threads)
        row = next((r for r in latency.get("rows", []) if r["runtime"] == "eager" and r["batch"] == prof.batch_size),
                   None)
        measured = row["speedup"] if row is not None and same else None
        target = dict(full.get("latency_target") or {})
        target.update({"profile_source": self.profile_source, "same_device": same, "measured_speedup": measured,
                       "measured_batch": prof.batch_size if measured is not None else None})
        if not same:
            target["measured_note"] = (f"the profile was measured on {prof.environment.device_name} "
                                       f"({prof.environment.device_type}, threads {prof.environment.threads}), this "
                                       f"job ran on {device_name(loaded.device)} (threads {threads}): no measured "
                                       "speedup to compare")
        elif row is None:
            target["measured_note"] = (f"no eager measurement at the profile's batch {prof.batch_size} "
                                       "(measure_latency off, or skipped by the time budget)")
        full["latency_target"] = target
        full["measured_speedup"] = measured
        goal = self.spec.target_speedup
        if goal is not None and measured is not None and measured < 0.9 * goal:
            full["warnings"].append(f"measured speedup {measured:.2f}x (eager, batch {prof.batch_size}) is under the "
                                    f"target {goal:g}x that the profile predicted "
                                    f"({full.get('predicted_speedup') or 0:.2f}x)")

    def export_progress(self, step: str, frac: float) -> None:
        """Progress through the exports (``step`` is ``export:FMT``, ``verify:FMT`` or ``done:FMT``): export i of
        n in the detail."""
        self.at("export", frac)
        formats = list(dict.fromkeys(self.spec.exports))
        kind, _, fmt = step.partition(":")
        if fmt in formats:
            done = formats.index(fmt) + (1 if kind == "done" else 0)
            self.count("export", {"what": "exports", "step": step, "done": done, "total": len(formats)})

    def write_report(self, result: Any, loaded: _Loaded, exports: list[dict[str, Any]], acc_before: float | None,
                     acc_after: float | None, latency: dict[str, Any] | None = None) -> dict[str, Any]:
        """Assemble report.json and report.html (with plots) and return the report."""
        from simprune.report_html import write_html_report

        self.at("report")
        t = time.perf_counter()
        report = dict(result.report)
        finetune_report = report.pop("finetune", None)
        full = {
            "arch": self.job.arch, "num_classes": loaded.num_classes, "input_size": list(loaded.input_size),
            "device": str(loaded.device), "device_requested": self.spec.device, "oom_retries": self.oom_retries,
            "worker": self.job.runner, "preset": (self.settings or {}).get("preset"),
            "accuracy_before": acc_before, "accuracy_after": acc_after,
            "accuracy_drop": (acc_before - acc_after) if acc_before is not None and acc_after is not None else None,
            "eval_samples": len(loaded.evals.dataset) if loaded.evals is not None else None,
            "calib_samples": len(loaded.calib.dataset) if loaded.calib is not None else None,
            **report, "finetune": finetune_report, "exports": exports, "versions": _versions(),
            "latency": latency, "warnings": list(report.get("warnings") or []),
        }
        self.latency_summary(full, loaded)
        plots = _plots(full, self.out_dir)
        full["plots"] = [p.name for p in plots]
        self.timings["report"] = round(time.perf_counter() - t, 4)
        self.timings["total_s"] = round(time.perf_counter() - self.t0, 4)
        full["timings"] = self.timings
        full = _jsonable(full)
        (self.out_dir / "report.json").write_text(json.dumps(full, indent=2))
        write_html_report({**full, "layers": full["per_layer"]}, plots, self.out_dir / "report.html")
        self.at("report", 1.0)
        return full


def job_device(requested: str, runner: str) -> str:
    """The device a job runs on: the spec's ``device`` (auto | cpu | cuda) on a runner whose own device is
    ``runner`` (the worker's ``SIMPRUNE_DEVICE`` or the CLI's ``--device``): auto follows the runner, cpu is
    cpu, cuda is the runner's CUDA device when it names one, else ``cuda``."""
    if requested == "auto":
        return runner
    if requested == "cuda":
        return runner if runner.strip().lower().startswith("cuda") else "cuda"
    return requested


def free_cuda_memory() -> None:
    """Collect garbage and return cached CUDA blocks to the driver (nothing to do without CUDA in use)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import torch_pruning

    import simprune

    return {"simprune": simprune.__version__, "torch": torch.__version__, "torch_pruning": torch_pruning.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def _jsonable(obj: Any) -> Any:
    import torch

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist() if obj.numel() <= 4096 else f"<tensor {tuple(obj.shape)}>"
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    return obj


def _out_features(model: Any) -> int | None:
    from torch import nn

    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else None


def _plots(report: dict[str, Any], out_dir: Path) -> list[Path]:
    from simprune.report_html import plot_layer_bars, plot_redundancy_bars

    rows = [r for r in report["per_layer"] if r["type"] != "Linear"]
    names = [r["name"] for r in rows]
    plots = [plot_layer_bars(names, [r["channels_before"] for r in rows], [r["channels_after"] for r in rows],
                             out_dir / "channels.png")]
    removed = [1.0 - (r["flops_after"] / r["flops_before"]) if r["flops_before"] else 0.0 for r in rows]
    plots.append(plot_redundancy_bars(names, removed, out_dir / "flops_removed.png",
                                      ylabel="fraction of the layer's FLOPs removed"))
    latency = report.get("latency") or {}
    if latency.get("rows"):
        from simprune.report_html import plot_latency_bars

        plots.append(plot_latency_bars(latency["rows"], out_dir / "latency.png",
                                       title=f"latency on {latency.get('environment', {}).get('device_name', '')}"))
    return plots


def _rebuild_plan(plan_path: Path, weights_path: Path) -> Any:
    from simprune.plan import load_pruned

    return load_pruned(plan_path, weights_path)

