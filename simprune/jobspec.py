"""The one definition of a pruning job: fields, defaults, cross-field rules and per-method option checks.

:class:`JobSpec` is what a user asks for, independent of where the files live. The API's request body
(``app.schemas.JobCreate``) adds the ids of the uploaded model and datasets; the CLI adds local paths; the
worker turns the ids into files and hands the stored spec to :func:`simprune.pipeline.run_prune_job`
unchanged. A spec that validates here is a job the engine accepts: unknown method options, wrong option types
and out-of-range values are refused at submission (422 in the API, exit code 2 in the CLI), with the field
named. This module imports no torch (the method registry it consults imports the method modules).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

EXPORT_FORMATS = ("pt2", "onnx", "safetensors")
ALLOCATIONS = ("uniform", "global", "sensitivity")
COMPENSATION_SWITCHES = ("fold", "lstsq", "bn", "sequential")
CALIB_SAMPLES = 1024
"""Default number of calibration samples."""

MAX_OPTION_KEYS = 64


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class FinetuneConfig(_Strict):
    """Training hyper-parameters (fine-tuning after pruning, and the training methods dcff and ssc).

    ``schedule``: ``cosine`` (to zero, per step), ``step`` (x ``gamma`` at each fraction of training in
    ``milestones``) or ``constant``, all after a linear warm-up over ``warmup_frac`` of the steps. ``amp``:
    ``auto`` (bf16 autocast where supported, else fp16 with a GradScaler; CUDA only), ``bf16``, ``fp16`` or
    ``off``. With ``distill`` the loss is ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE``.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)

    epochs: int = Field(default=1, ge=1, le=1000, description="training epochs")
    lr: float = Field(default=0.01, gt=0, le=10, description="peak learning rate")
    batch_size: int = Field(default=128, ge=1, le=4096, description="training batch size")
    optimizer: Literal["sgd", "adamw"] = "sgd"
    weight_decay: float = Field(default=5e-4, ge=0, le=1)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: tuple[float, ...] = Field(default=(0.5, 0.75), max_length=16)
    gamma: float = Field(default=0.1, gt=0, le=1)
    warmup_frac: float = Field(default=0.05, ge=0, lt=1)
    distill: bool = Field(default=True, description="distil from the dense model")
    distill_alpha: float = Field(default=0.9, ge=0, le=1)
    temperature: float = Field(default=4.0, gt=0, le=100)
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    seed: int = 0
    num_workers: int = Field(default=0, ge=0, le=32, description="data-loading worker processes")
    max_steps_per_epoch: int | None = Field(default=None, ge=1)

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 <= m <= 1.0 for m in v):
            raise ValueError("milestones are fractions of training in [0, 1]")
        return v


class FinetuneSpec(FinetuneConfig):
    """Fine-tuning in a job: the training hyper-parameters plus how much of the training data to use."""

    train_samples: int | None = Field(default=None, ge=1, description="use only this many training samples")

    def config(self) -> FinetuneConfig:
        """The training hyper-parameters alone."""
        return FinetuneConfig(**self.model_dump(exclude={"train_samples"}))


class JobSpec(_Strict):
    """How to prune. Give exactly one of ``target_flops_reduction``, ``pruning_ratio`` and ``target_speedup``."""

    method: str = Field(max_length=64, description="A name from GET /v1/methods (simprune methods).",
                        examples=["qsfm"])
    target_flops_reduction: float | None = Field(
        default=None, gt=0, lt=1, description="Fraction of FLOPs to remove (0.5 = half).")
    pruning_ratio: float | Literal["auto"] | None = Field(
        default=None, description="Fraction of channels to remove per prunable group, in [0, 1), or 'auto' "
                                  "(the method's own count).")
    target_speedup: float | None = Field(
        default=None, gt=1, le=20, description="Latency target: the pruned model predicted this many times faster "
        "than the dense one by a device profile: latency_profile 'worker' or an uploaded one (device_profile_id in "
        "the API, which asks for one of the two; the library and the CLI fall back to 'worker'). Not for the "
        "training methods.")
    latency_profile: Literal["worker"] | None = Field(
        default=None, description="'worker': the device profile measured (once, then cached) on the worker's own "
        "device; it also sets round_to when round_to is not given.")
    options: dict[str, Any] = Field(default_factory=dict, description="Method options (see GET /v1/methods).")
    preset: Literal["fast", "balanced", "best"] | None = Field(
        default=None, description="Named pipeline (see GET /v1/methods 'presets'): fast, balanced or best. "
        "Default: best with calibration data, the data-free path without. allocation, depth and compensation "
        "switches given explicitly override the preset's.")
    allocation: Literal["uniform", "global", "sensitivity"] | None = Field(
        default=None, description="How the reduction is spread over layers (default: the preset's); sensitivity "
                                  "needs calibration data.")
    depth: bool | None = Field(default=None, description="With allocation 'sensitivity': also weigh dropping whole "
                        "residual blocks (where the architecture allows) against narrowing layers.")
    round_to: int | None = Field(default=None, ge=1, le=1024, description=(
        "Keep channel counts multiples of N. Default by the worker's device: 8 on CUDA; on a CPU 16 (AVX-512) or 8 "
        "(AVX2) in layers of at least 128 channels, none elsewhere (1: none)."))
    compensation: dict[Literal["fold", "lstsq", "bn", "block_recon", "output_recon", "sequential"], bool] | None = (
        Field(default=None, description="Compensation switches with calibration data (default: the preset's): "
              "fold, lstsq, bn, sequential (select and re-fit group by group), block_recon (label-free block "
              "reconstruction) and output_recon (label-free fit of the whole model to the dense model's outputs)."))
    output_recon_augment: Literal["shift_flip", "shift", "none"] | None = Field(
        default=None, description="How output reconstruction varies the calibration images: shifts and left-right "
        "mirroring (the default, for photos), shifts only (inputs whose mirror image is not the same class: "
        "spectrograms, text, digits) or none.")
    output_recon_mix: Literal["auto", "cutmix", "mixup", "none"] | None = Field(
        default=None, description="How output reconstruction mixes calibration images within a batch (the dense "
        "and the pruned model see the same mixed images): cutmix (a box pasted from another image), mixup (a "
        "blend of two images), none, or auto (the default: cutmix when the fit makes at least 48 passes over "
        "its images, none on shorter fits).")
    calib_samples: int = Field(default=CALIB_SAMPLES, ge=1, le=1_000_000, description="Calibration samples used.")
    eval_samples: int | None = Field(default=None, ge=1, le=10_000_000, description="Limit evaluation samples.")
    batch_size: int = Field(default=128, ge=1, le=4096, description="Batch size of calibration and evaluation.")
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    exports: list[Literal["pt2", "onnx", "safetensors"]] = Field(
        default_factory=lambda: list(EXPORT_FORMATS), max_length=3, description="Export formats to write.")
    finetune: FinetuneSpec | None = Field(
        default=None, description="Fine-tune after pruning (or train, for dcff/ssc); needs training data.")
    measure_latency: bool | None = Field(
        default=None, description="Time the dense and the pruned model on the worker's device (eager and ONNX "
        "Runtime, batch 1 and a throughput batch) for the report's latency section. Default: on (an operator "
        "can change the default with SIMPRUNE_MEASURE_LATENCY=0).")
    latency_budget_s: float = Field(default=60.0, ge=1, le=3600, description="Time budget of that measurement.")
    latency_batch_sizes: list[int] | None = Field(
        default=None, min_length=1, max_length=4, description="Batch sizes timed (default: 1 and 32 on CPU, 1 and "
        "256 on CUDA, lowered to fit memory).")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where the job runs: auto (the worker's device; training jobs go to GPU "
                                    "workers when any is alive), cpu, or cuda (a GPU worker; refused when none is "
                                    "alive). The report records the device used.")

    @field_validator("method")
    @classmethod
    def _known_method(cls, name: str) -> str:
        from simprune.errors import InputError
        from simprune.methods.registry import method_class

        try:
            method_class(name)
        except InputError as exc:
            raise PydanticCustomError("unknown_method", "{detail}", {"detail": str(exc)}) from None
        return name

    @field_validator("options")
    @classmethod
    def _valid_options(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from pydantic import ValidationError

        from simprune.methods.registry import method_class, option_errors

        if len(options) > MAX_OPTION_KEYS:
            raise PydanticCustomError("too_many_options", "at most {n} options", {"n": MAX_OPTION_KEYS})
        name = info.data.get("method")
        if name is None:  # the method itself was invalid; that error is reported
            return options
        try:
            method_class(name).validate_options(options)
        except ValidationError as exc:
            detail = "; ".join(f"{path}: {msg}" for path, msg in option_errors(exc))
            raise PydanticCustomError("invalid_option", "method '{method}': {detail}",
                                      {"method": name, "detail": detail}) from None
        return options

    @field_validator("latency_batch_sizes")
    @classmethod
    def _batch_sizes(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(not 1 <= b <= 4096 for b in v):
            raise ValueError("latency batch sizes are in [1, 4096]")
        return v

    @model_validator(mode="after")
    def _rules(self) -> JobSpec:
        targets = (self.target_flops_reduction, self.pruning_ratio, self.target_speedup)
        if sum(t is not None for t in targets) != 1:
            raise ValueError("give exactly one of target_flops_reduction, pruning_ratio and target_speedup")
        if self.target_speedup is not None and self._trains():
            raise ValueError(f"method '{self.method}' trains the network and has no latency target; give "
                             "target_flops_reduction or pruning_ratio")
        if isinstance(self.pruning_ratio, float) and not 0 <= self.pruning_ratio < 1:
            raise ValueError("pruning_ratio must be in [0, 1) or 'auto'")
        if self.depth and (self.allocation or self._preset_allocation()) != "sensitivity":
            raise ValueError("depth needs allocation 'sensitivity'")
        if self.allocation == "sensitivity" and self.pruning_ratio == "auto":
            raise ValueError("allocation 'sensitivity' needs a FLOPs target or a pruning ratio, not 'auto'")
        return self

    def _trains(self) -> bool:
        from simprune.errors import InputError
        from simprune.methods.registry import method_class

        try:
            return bool(method_class(self.method).trains)
        except InputError:
            return False

    def data_errors(self, has_calibration: bool, has_training: bool) -> list[tuple[str, str]]:
        """``(field, message)`` for each data requirement the job's data does not meet (method needs,
        sensitivity allocation, fine-tuning, training methods, and the method's own rules)."""
        from simprune.methods.registry import method_class

        method = method_class(self.method)
        errors: list[tuple[str, str]] = []
        if method.needs_data and not has_calibration:
            errors.append(("calibration", f"method '{self.method}' needs calibration data"))
        if self.allocation == "sensitivity" and not has_calibration:
            errors.append(("calibration", "allocation 'sensitivity' needs calibration data"))
        if self.preset in ("fast", "balanced", "best") and not has_calibration:
            errors.append(("calibration", f"preset '{self.preset}' needs calibration data (without any, name no "
                                          "preset: the data-free path runs)"))
        if method.trains and self.finetune is None:
            errors.append(("finetune", f"method '{self.method}' trains the network: give finetune.epochs and "
                                       "training data"))
        if self.finetune is not None and not has_training:
            errors.append(("training", "fine-tuning needs training data"))
        errors.extend(method(**method.validate_options(self.options)).check_job(self))
        return errors

    def _preset_allocation(self) -> str:
        from simprune.presets import PRESETS, default_preset

        return PRESETS[self.preset or default_preset(True)].allocation

    def settings(self, has_calibration: bool) -> dict[str, Any]:
        """What the job runs with: its preset (named, or the default) filled in under the explicit allocation,
        depth and compensation switches: ``{"preset", "allocation", "compensation", "allocation_options",
        "compensation_options"}``."""
        from simprune.presets import resolve_preset

        allocation = self.allocation
        if allocation is None and self.pruning_ratio == "auto":
            allocation = "uniform"  # the method's own counts: no allocation search
        settings = resolve_preset(self.preset, has_calibration=has_calibration, allocation=allocation,
                                  compensation=self.compensation_switches(),
                                  allocation_options=None if self.depth is None else {"depth": self.depth})
        if self.output_recon_augment is not None:
            settings["compensation_options"]["output_recon_augment"] = self.output_recon_augment
        if self.output_recon_mix is not None:
            settings["compensation_options"]["output_recon_mix"] = self.output_recon_mix
        return settings

    def compensation_switches(self) -> dict[str, bool] | None:
        """The compensation switches as the pruning phases take them (None: the defaults)."""
        return dict(self.compensation) if self.compensation is not None else None


def measure_latency_default() -> bool:
    """Whether jobs that do not say measure latency: on unless ``SIMPRUNE_MEASURE_LATENCY`` is 0/false/off."""
    import os

    return os.environ.get("SIMPRUNE_MEASURE_LATENCY", "1").strip().lower() not in ("0", "false", "off", "no")
