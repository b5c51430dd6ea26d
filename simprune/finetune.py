"""Fine-tuning: cosine (or step) schedule with warm-up, distillation, mixed precision, per-epoch checkpoints.

:func:`finetune` trains a (pruned) model in place on a torch ``Dataset`` of ``(input, label)`` pairs. Data
augmentation is the dataset's business. With ``checkpoint_dir`` every completed epoch is saved (model weights
as safetensors, optimizer and GradScaler state as plain tensors/dicts loaded with ``weights_only=True``, the
rest as JSON), and a second call with the same directory resumes after the last completed epoch.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from simprune.device import select_device
from simprune.errors import InputError, JobCancelled

FinetuneProgressFn = Callable[[str, float, dict[str, Any]], None]
"""``progress(stage, fraction, info)``; ``info`` has ``epoch``, ``step``, ``steps``, ``eta_s``, ``loss``, and at
an epoch's end that epoch's record (``train_loss``, ``top1`` as a fraction in [0, 1], ``seconds``)."""

_STATE_FILE = "state.json"
_CHECKPOINT_VERSION = 2  # 2: top-1 as a fraction in [0, 1] (version 1 held percent; converted on load)
# Config fields that change what a resumed run computes; a checkpoint written with other values is refused.
_RESUME_KEYS = ("epochs", "lr", "batch_size", "optimizer", "weight_decay", "momentum", "schedule",
                "milestones", "gamma", "warmup_frac", "distill", "distill_alpha", "temperature",
                "label_smoothing", "seed", "max_steps_per_epoch")


@dataclass
class FinetuneConfig:
    """Training hyper-parameters.

    ``schedule`` is ``"cosine"`` (to zero, per step), ``"step"`` (x ``gamma`` at each fraction of training in
    ``milestones``) or ``"constant"``; all start with a linear warm-up over ``warmup_frac`` of the steps.
    ``amp``: ``"auto"`` (bf16 autocast where supported, else fp16 with a GradScaler; CUDA only),
    ``"bf16"``, ``"fp16"`` or ``"off"``. Distillation needs a ``teacher`` passed to :func:`finetune`:
    loss = ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE``.
    """

    epochs: int = 1
    lr: float = 0.01
    batch_size: int = 128
    optimizer: str = "sgd"  # "sgd" | "adamw"
    weight_decay: float = 5e-4
    momentum: float = 0.9
    schedule: str = "cosine"  # "cosine" | "step" | "constant"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    warmup_frac: float = 0.05
    distill: bool = True
    distill_alpha: float = 0.9
    temperature: float = 4.0
    amp: str = "auto"  # "auto" | "bf16" | "fp16" | "off"
    label_smoothing: float = 0.0
    seed: int = 0
    num_workers: int = 0
    max_steps_per_epoch: int | None = None

    def validate(self) -> None:
        """Raise :class:`InputError` for out-of-range values."""
        if self.epochs < 1:
            raise InputError("finetune epochs must be >= 1")
        if not self.lr > 0 or self.batch_size < 1:
            raise InputError("finetune lr must be > 0 and batch_size >= 1")
        if self.optimizer not in ("sgd", "adamw"):
            raise InputError(f"unknown optimizer {self.optimizer!r} (sgd or adamw)")
        if self.schedule not in ("cosine", "step", "constant"):
            raise InputError(f"unknown schedule {self.schedule!r} (cosine, step or constant)")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise InputError(f"unknown amp mode {self.amp!r} (auto, bf16, fp16 or off)")
        if not 0.0 <= self.warmup_frac < 1.0 or not 0.0 <= self.distill_alpha <= 1.0:
            raise InputError("warmup_frac must be in [0, 1) and distill_alpha in [0, 1]")
        if self.temperature <= 0 or not 0.0 <= self.label_smoothing < 1.0:
            raise InputError("temperature must be > 0 and label_smoothing in [0, 1)")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise InputError("max_steps_per_epoch must be >= 1")


@dataclass
class FinetuneResult:
    """``history``: one dict per epoch (``epoch`` 1-based, ``train_loss``, ``top1`` (a fraction in [0, 1])
    when evaluated, ``lr``, ``seconds``); ``best_epoch``/``best_top1``: the epoch whose weights the model holds
    at the end;
    ``resumed_from``: the last completed epoch found in the checkpoint directory, or None."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_top1: float | None = None
    resumed_from: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lr_at(config: FinetuneConfig, step: int, total_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``: warm-up, then the schedule."""
    warmup = int(round(config.warmup_frac * total_steps))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "step":
        frac = step / max(total_steps, 1)
        return config.lr * config.gamma ** sum(1 for m in config.milestones if frac >= m)
    span = max(total_steps - warmup, 1)
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * (step - warmup) / span))


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, config: FinetuneConfig
) -> torch.Tensor:
    """``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)`` (Hinton et al. 2015)."""
    t = config.temperature
    kd = F.kl_div(F.log_softmax(student.float() / t, dim=1), F.log_softmax(teacher.float() / t, dim=1),
                  reduction="batchmean", log_target=True) * (t * t)
    ce = F.cross_entropy(student.float(), target, label_smoothing=config.label_smoothing)
    return config.distill_alpha * kd + (1.0 - config.distill_alpha) * ce


def _amp_dtype(config: FinetuneConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or config.amp == "off":
        return None
    if config.amp == "fp16":
        return torch.float16
    if config.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, dict):
        x, y = batch.get("input", batch.get("x")), batch.get("label", batch.get("y"))
    else:
        x, y = batch[0], batch[1]
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise InputError("dataset items must be (input tensor, integer label) pairs")
    return x, y.long()


@torch.no_grad()
def evaluate_top1(
    model: nn.Module,
    dataset: Dataset,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    should_cancel: Callable[[], bool] | None = None,
) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on ``dataset``, a fraction in [0, 1]."""
    dev = select_device(device)
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=dev.type == "cuda")
    correct = total = 0
    for batch in loader:
        if should_cancel is not None and should_cancel():
            raise JobCancelled("cancelled during evaluation")
        x, y = _split_batch(batch)
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        correct += int((model(x).argmax(1) == y).sum())
        total += int(y.numel())
    if total == 0:
        raise InputError("evaluation dataset is empty")
    return correct / total


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def _save_torch(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load_model_state(model: nn.Module, path: Path) -> None:
    try:
        state = load_file(str(path))
        model.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, ValueError) as exc:
        raise InputError(f"checkpoint {path.name} does not match the model: {exc}") from exc


def _percent_to_fraction(state: dict[str, Any]) -> dict[str, Any]:
    """A version-1 checkpoint state (top-1 in percent) with its top-1 values as fractions."""
    history = [dict(h, top1=h["top1"] / 100.0) if h.get("top1") is not None else h for h in state["history"]]
    best = state.get("best_top1")
    return dict(state, history=history, best_top1=None if best is None else best / 100.0)


class _Checkpointer:
    """Per-epoch checkpoint files in ``root``; ``state.json`` is written last and names the current files."""

    def __init__(self, root: Path, config: FinetuneConfig) -> None:
        self.root = root
        self.config = config
        root.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, Any] | None:
        path = self.root / _STATE_FILE
        if not path.is_file():
            return None
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"unreadable fine-tuning checkpoint state: {exc}") from exc
        if state.get("version") not in (1, _CHECKPOINT_VERSION):
            raise InputError("fine-tuning checkpoint has an unknown version")
        if state["version"] == 1:
            state = _percent_to_fraction(state)
        saved = state.get("config", {})
        mine = json.loads(json.dumps(asdict(self.config)))
        diff = [k for k in _RESUME_KEYS if saved.get(k) != mine.get(k)]
        if diff:
            raise InputError(f"checkpoint directory holds a run with other settings ({', '.join(diff)}); "
                             "use a fresh directory")
        return state

    def save(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler | None, result: FinetuneResult, best_changed: bool,
             extra: dict[str, Any] | None) -> None:
        _save_tensors(self.root / f"model_e{epoch}.safetensors", _cpu_state(model))
        opt: dict[str, Any] = {"optimizer": optimizer.state_dict()}
        if scaler is not None:
            opt["scaler"] = scaler.state_dict()
        _save_torch(self.root / f"optim_e{epoch}.pt", opt)
        if best_changed:
            _save_tensors(self.root / f"best_e{epoch}.safetensors", _cpu_state(model))
        state = {
            "version": _CHECKPOINT_VERSION,
            "epoch": epoch,
            "model": f"model_e{epoch}.safetensors",
            "optim": f"optim_e{epoch}.pt",
            "best": f"best_e{result.best_epoch}.safetensors" if result.best_top1 is not None else None,
            "history": result.history,
            "best_epoch": result.best_epoch,
            "best_top1": result.best_top1,
            "config": asdict(self.config),
            "extra": extra or {},
        }
        _atomic_json(self.root / _STATE_FILE, state)
        keep = {state["model"], state["optim"], state["best"], _STATE_FILE}
        for f in self.root.iterdir():  # only this module's own, superseded files
            if f.name not in keep and re.fullmatch(r"(model|best)_e\d+\.safetensors|optim_e\d+\.pt", f.name):
                f.unlink(missing_ok=True)


def _make_optimizer(model: nn.Module, config: FinetuneConfig) -> torch.optim.Optimizer:
    """SGD or AdamW; weight decay on the weights of more than one dimension only."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=False)
    return torch.optim.AdamW(groups, lr=config.lr)


@dataclass
class _Trainer:
    """The training loop of :func:`finetune`: epochs of optimizer steps, evaluation and progress reports."""

    model: nn.Module
    train_ds: Dataset
    config: FinetuneConfig
    dev: torch.device
    teacher: nn.Module | None  # set when distilling
    progress: FinetuneProgressFn | None
    should_cancel: Callable[[], bool] | None
    stage: str
    drop_last: bool = field(init=False)
    per_epoch: int = field(init=False)
    optimizer: torch.optim.Optimizer = field(init=False)
    amp_dtype: torch.dtype | None = field(init=False)
    scaler: torch.amp.GradScaler | None = field(init=False)
    t_start: float = 0.0
    steps_done: int = 0  # optimizer steps taken in this call (not counting resumed epochs)

    def __post_init__(self) -> None:
        config = self.config
        n = len(self.train_ds)  # type: ignore[arg-type]
        if n == 0:
            raise InputError("training dataset is empty")
        self.drop_last = n > config.batch_size
        self.per_epoch = n // config.batch_size if self.drop_last else 1
        if config.max_steps_per_epoch is not None:
            self.per_epoch = min(self.per_epoch, config.max_steps_per_epoch)
        self.optimizer = _make_optimizer(self.model, config)
        self.amp_dtype = _amp_dtype(config, self.dev)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

    @property
    def total_steps(self) -> int:
        return self.per_epoch * self.config.epochs

    def resume(self, ckpt: _Checkpointer, result: FinetuneResult) -> tuple[int, dict[str, torch.Tensor] | None]:
        """Load the last completed epoch from ``ckpt`` (if any): (epochs done, best weights or None)."""
        state = ckpt.load()
        if state is None:
            return 0, None
        start_epoch = int(state["epoch"])
        _load_model_state(self.model, ckpt.root / state["model"])
        opt = torch.load(ckpt.root / state["optim"], map_location=self.dev, weights_only=True)
        self.optimizer.load_state_dict(opt["optimizer"])
        if self.scaler is not None and "scaler" in opt:
            self.scaler.load_state_dict(opt["scaler"])
        result.history = list(state["history"])
        result.best_epoch = int(state["best_epoch"])
        result.best_top1 = state["best_top1"]
        result.resumed_from = start_epoch
        return start_epoch, load_file(str(ckpt.root / state["best"])) if state.get("best") else None

    def run_epoch(self, epoch: int, eval_ds: Dataset | None) -> dict[str, Any]:
        """Train one epoch (0-based), evaluate it when ``eval_ds`` is given; the epoch's history record."""
        config = self.config
        torch.manual_seed(config.seed + epoch)
        gen = torch.Generator().manual_seed(config.seed * 1000003 + epoch)
        loader = DataLoader(self.train_ds, batch_size=config.batch_size, shuffle=True, drop_last=self.drop_last,
                            num_workers=config.num_workers, generator=gen, pin_memory=self.dev.type == "cuda")
        self.model.train()
        t_epoch = time.monotonic()
        loss_sum, seen, lr = 0.0, 0, config.lr
        for i, batch in enumerate(loader):
            if i >= self.per_epoch:
                break
            if self.should_cancel is not None and self.should_cancel():
                raise JobCancelled(f"cancelled during {self.stage} epoch {epoch + 1}")
            step = epoch * self.per_epoch + i
            loss, n, lr = self._step(batch, step)
            loss_sum += loss * n
            seen += n
            self.steps_done += 1
            self._step_progress(epoch, step, loss, lr)
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "lr": lr}
        if eval_ds is not None:
            record["top1"] = evaluate_top1(self.model, eval_ds, device=self.dev, batch_size=config.batch_size,
                                           num_workers=config.num_workers, should_cancel=self.should_cancel)
        record["seconds"] = time.monotonic() - t_epoch
        return record

    def _step(self, batch: Any, step: int) -> tuple[float, int, float]:
        """One optimizer step: (loss, samples, learning rate)."""
        lr = lr_at(self.config, step, self.total_steps)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        x, y = _split_batch(batch)
        x, y = x.to(self.dev, non_blocking=True), y.to(self.dev, non_blocking=True)
        loss = self._loss(x, y)
        if not torch.isfinite(loss):
            raise InputError(f"{self.stage}: the training loss became {float(loss)} at step {step}; "
                             "lower the learning rate")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return float(loss.detach()), int(y.numel()), lr

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        amp_dtype, config = self.amp_dtype, self.config
        with torch.autocast(self.dev.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = self.model(x)
            if self.teacher is not None:
                with torch.no_grad():
                    t_out = self.teacher(x)
                return distillation_loss(out, t_out, y, config)
            return F.cross_entropy(out.float(), y, label_smoothing=config.label_smoothing)

    def _step_progress(self, epoch: int, step: int, loss: float, lr: float) -> None:
        if self.progress is None:
            return
        rate = (time.monotonic() - self.t_start) / self.steps_done
        remaining = self.total_steps - step - 1
        self.progress(self.stage, (step + 1) / self.total_steps,
                      {"epoch": epoch + 1, "epochs": self.config.epochs, "step": step + 1,
                       "steps": self.total_steps, "eta_s": rate * remaining, "loss": loss, "lr": lr})

    def epoch_progress(self, epoch: int, record: dict[str, Any]) -> None:
        if self.progress is None:
            return
        done = (epoch + 1) * self.per_epoch
        eta = (time.monotonic() - self.t_start) / max(self.steps_done, 1) * (self.total_steps - done)
        self.progress(self.stage, (epoch + 1) / self.config.epochs,
                      {"epoch": epoch + 1, "epochs": self.config.epochs, "step": done, "steps": self.total_steps,
                       "eta_s": eta, **record})


def finetune(
    model: nn.Module,
    train_ds: Dataset,
    config: FinetuneConfig | None = None,
    *,
    teacher: nn.Module | None = None,
    eval_ds: Dataset | None = None,
    device: torch.device | str | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: FinetuneProgressFn | None = None,
    should_cancel: Callable[[], bool] | None = None,
    stage: str = "finetune",
    on_epoch_start: Callable[[int], None] | None = None,
    checkpoint_extra: Callable[[], dict[str, Any]] | None = None,
) -> FinetuneResult:
    """Train ``model`` in place (moved to ``device``, left in eval mode) and return the per-epoch history.

    With ``eval_ds`` the model is evaluated after each epoch (top-1 as a fraction in [0, 1]) and the best
    epoch's weights (top-1) are restored at the end; without it the last epoch is kept. ``should_cancel()`` is
    checked between batches and raises :class:`JobCancelled`; completed epochs stay in ``checkpoint_dir``, and a
    later call with the same directory and settings resumes after them. ``on_epoch_start(epoch)`` (0-based)
    runs before each epoch, also on resume (DCFF recomputes its fusion matrices there); ``checkpoint_extra()``
    adds JSON-serialisable data to each checkpoint. Seeds the global torch RNG per epoch (``seed + epoch``).
    ``device``: see :func:`simprune.device.select_device` (default: CUDA when available).
    """
    config = config or FinetuneConfig()
    config.validate()
    dev = select_device(device)
    model.to(dev)
    use_teacher = config.distill and teacher is not None
    if use_teacher:
        assert teacher is not None
        teacher.to(dev).eval()
    trainer = _Trainer(model, train_ds, config, dev, teacher if use_teacher else None, progress, should_cancel,
                       stage)

    result = FinetuneResult()
    ckpt = _Checkpointer(Path(checkpoint_dir), config) if checkpoint_dir is not None else None
    start_epoch, best_state = trainer.resume(ckpt, result) if ckpt is not None else (0, None)
    trainer.t_start = time.monotonic()
    for epoch in range(start_epoch, config.epochs):
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        record = trainer.run_epoch(epoch, eval_ds)
        result.history.append(record)
        best_changed = False
        if eval_ds is None:
            result.best_epoch, best_changed = epoch + 1, False
        elif result.best_top1 is None or record["top1"] > result.best_top1:
            result.best_epoch, result.best_top1, best_changed = epoch + 1, record["top1"], True
            best_state = _cpu_state(model)
        if ckpt is not None:
            ckpt.save(epoch + 1, model, trainer.optimizer, trainer.scaler, result, best_changed,
                      checkpoint_extra() if checkpoint_extra is not None else None)
        trainer.epoch_progress(epoch, record)

    if eval_ds is not None and best_state is not None and result.best_epoch != len(result.history):
        model.load_state_dict({k: v.to(dev) for k, v in best_state.items()}, strict=True)
    model.eval()
    return result
