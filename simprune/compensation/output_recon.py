"""Label-free output reconstruction: fit the whole pruned model to the dense model's outputs (distillation).

After pruning and the per-block compensation, all floating-point parameters of the pruned model take a
bounded number of Adam steps (linear warm-up, cosine decay) on the calibration images, with the dense model as
the teacher and no labels:

    KL( softmax(dense(x) / T) || softmax(pruned(x) / T) ) * T^2      (2-D outputs: logits)
    || pruned(x) - dense(x) ||^2 / mean(dense(x)^2)                   (any other output)

Images are shifted by up to 1/8 of their size (zero padding) and mirrored left-right at random each step
(``augment="shift_flip"``; ``"shift"`` for inputs whose mirror image is not the same class, ``"none"``), and can
be mixed within the batch (``mix="cutmix"``: a box pasted from another image; ``"mixup"``: a blend of two;
``"auto"``: cutmix on long fits only), the dense and the pruned model seeing the same mixed images ("function
matching" distillation), so a thousand calibration images stand for more. Both models stay in eval mode (BatchNorm
keeps its running statistics; its affine parameters are fitted). One image in eight is held out (drawn at
random: calibration sets often come sorted by class): the teacher-student loss on those unseen images is
checked ten times during the fit and the stage ends with the best checkpoint (``keep="best"``; ``"end"``: the
end point whenever it beats the start), or with the model as it came if none was better, so it cannot make the
model worse at agreeing with the dense one on data it did not fit. With
fewer than 16 images none are held out and the checks use the fitted ones.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from simprune.compute import autocast, channels_last, to_channels_last, use_bf16
from simprune.errors import JobCancelled
from simprune.folded_norms import folded_batchnorm
from simprune.pruning.features import first_inputs
from simprune.pruning.prefix_cache import output_tensors


def _outputs(out: Any) -> list[torch.Tensor]:
    """The floating-point tensors of a model output (a tensor, or a tuple/list/dict of them)."""
    return [t for t in output_tensors(out) if t.is_floating_point()]


def _loss(student: Any, teacher: Any, temperature: float) -> torch.Tensor:
    """KL divergence on 2-D logits, else relative mean squared error, summed over the output tensors."""
    total: torch.Tensor | None = None
    for s, t in zip(_outputs(student), _outputs(teacher), strict=True):
        s, t = s.float(), t.float()  # outputs of a bf16 autocast region: the loss is computed in fp32
        if s.dim() == 2 and s.shape[1] > 1:
            term = F.kl_div(F.log_softmax(s / temperature, 1), F.log_softmax(t / temperature, 1),
                            reduction="batchmean", log_target=True) * temperature ** 2
        else:
            term = ((s - t) ** 2).mean() / (t ** 2).mean().clamp_min(1e-12)
        total = term if total is None else total + term
    if total is None:
        raise ValueError("the model's output holds no floating-point tensor to distil")
    return total


AUGMENTS = ("shift_flip", "shift", "none")
"""Augmentations of the calibration images: shifts and left-right mirroring (photos), shifts only (inputs whose
mirror image means something else: spectrograms in time, text, digits), none."""


def augment_images(x: torch.Tensor, g: torch.Generator, mirror: bool = True) -> torch.Tensor:
    """Random shifts (up to 1/8 of the height and width, zero padded) and, with ``mirror``, left-right mirroring
    of a batch of images (N, C, H, W); other shapes are returned unchanged."""
    if x.dim() != 4 or min(x.shape[-2:]) < 8:
        return x
    n, _, h, w = x.shape
    ph, pw = h // 8, w // 8
    padded = F.pad(x, (pw, pw, ph, ph))
    oy = torch.randint(0, 2 * ph + 1, (n,), generator=g).to(x.device)
    ox = torch.randint(0, 2 * pw + 1, (n,), generator=g).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    out = padded[batch, chans, rows, cols]
    flip = (torch.rand(n, generator=g) < 0.5).to(x.device)
    if not mirror:
        return out
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


MIXES = ("none", "mixup", "cutmix")
"""Mixing of calibration images within a step's batch (teacher and student see the same mixed images, as in
"function matching" distillation): none, mixup (a per-image convex blend with another image of the batch, weight
drawn uniformly) or cutmix (a random box pasted from another image of the batch). ``reconstruct_outputs`` also
takes "auto": cutmix when the inputs are images and the fit makes at least :data:`AUTO_MIX_PASSES` passes over
them, else none."""
MIX_CHOICES = (*MIXES, "auto")
"""What ``reconstruct_outputs`` (and the ``output_recon_mix`` option) accepts."""
AUTO_MIX_PASSES = 48.0
"""Mixing pays on long fits and costs on short ones (BENCHMARKS.md, session 18): ResNet-20, 1,000 steps of 64
over 896 images (71 passes), cutmix +0.36 points over 3 calibration seeds, every seed gaining; ResNet-56, 327
steps (23 passes), cutmix -0.63 and mixup -0.12."""


def mix_images(x: torch.Tensor, g: torch.Generator, mix: str) -> torch.Tensor:
    """Blend each image of a batch (N, C, H, W) with another image of the same batch by ``mix`` (see
    :data:`MIXES`); other shapes and ``"none"`` are returned unchanged."""
    if mix == "none" or x.dim() != 4 or len(x) < 2:
        return x
    n, _, h, w = x.shape
    other = x[torch.randperm(n, generator=g).to(x.device)]
    lam = torch.rand(n, generator=g).to(x.device, x.dtype)
    if mix == "mixup":
        lam = lam[:, None, None, None]
        return lam * x + (1 - lam) * other
    # cutmix: a box of area (1 - lam) of the image, centred uniformly, clipped at the borders
    side = (1 - lam).sqrt()
    cy, cx = torch.rand(n, generator=g).to(x.device), torch.rand(n, generator=g).to(x.device)
    rows = torch.arange(h, device=x.device)[None, :] + 0.5
    cols = torch.arange(w, device=x.device)[None, :] + 0.5
    in_r = ((rows - cy[:, None] * h).abs() <= side[:, None] * h / 2)
    in_c = ((cols - cx[:, None] * w).abs() <= side[:, None] * w / 2)
    box = (in_r[:, :, None] & in_c[:, None, :])[:, None]
    return torch.where(box, other, x)


KEEPS = ("best", "end")
"""Which point of the fit the stage keeps: the checkpoint with the lowest held-out loss ("best"), or the end
point whenever its held-out loss is below the starting model's ("end"; else the best checkpoint)."""


def _schedule(i: int, steps: int) -> float:
    """Learning-rate factor at step ``i``: linear warm-up over the first 5% of the steps, then cosine decay."""
    warm = max(1, steps // 20)
    if i < warm:
        return (i + 1) / warm
    return 0.5 * (1.0 + math.cos(math.pi * (i - warm) / max(1, steps - warm)))


class _HeldOut:
    """The held-out images in batches with the dense model's outputs on them, computed once for all checks."""

    def __init__(self, dense: nn.Module, x: torch.Tensor, batch: int) -> None:
        self.batches = [x[i:i + batch] for i in range(0, len(x), batch)]  # channels-last (features.iter_inputs)
        with torch.no_grad():
            self.targets = [dense(xb) for xb in self.batches]
        self.n = max(len(x), 1)

    @torch.no_grad()
    def loss(self, pruned: nn.Module, temperature: float) -> float:
        """The teacher-student loss in fp32 (the checks that choose the checkpoint are not in bf16)."""
        total = sum(float(_loss(pruned(xb), t, temperature)) * len(xb) for xb, t in zip(self.batches, self.targets,
                                                                                         strict=True))
        return total / self.n


def reconstruct_outputs(
    dense: nn.Module,
    pruned: nn.Module,
    calib: Any,
    device: torch.device | None = None,
    *,
    n_images: int = 1024,
    steps: int = 500,
    lr: float = 1e-4,
    batch_size: int = 64,
    temperature: float = 1.0,
    augment: bool | str = "shift_flip",
    mix: str = "none",
    keep: str = "best",
    max_passes: float = 72.0,
    seed: int = 0,
    bf16: bool | None = False,
    teacher_bf16: bool | None = None,
    fast_format: bool = True,
    fold_norms: bool = True,
    progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Fit ``pruned`` to ``dense``'s outputs on the first ``n_images`` calibration inputs, ``steps`` Adam steps
    of ``batch_size`` images, but at most ``max_passes`` passes over the fitted images (a small calibration set
    gets fewer steps: 1,024 images allow the default 1,000 steps). The steps run channels-last
    (``fast_format``), under bfloat16 autocast when ``bf16`` (None: where the device computes bf16 natively,
    :mod:`simprune.compute`; off by default here, on by default in the pipeline where the device computes bf16
    natively: same 3-seed accuracy on ResNet-56, 23% faster); weights stay fp32 and the held-out checks run in
    fp32. ``teacher_bf16`` runs only the dense model's forward of each step under bf16 autocast, the student
    and its gradients staying in fp32 (None, the default: where the device computes bf16 natively; it did not
    move the accuracy of either CIFAR ResNet). ``fold_norms`` computes each convolution-BatchNorm pair of both
    models as one convolution during the stage (:func:`simprune.folded_norms.folded_batchnorm`: same parameters
    and gradients, less work). Returns the steps taken, the held-out loss before and after, whether the result
    was kept, and the time spent."""
    t0 = time.perf_counter()
    augment = {True: "shift_flip", False: "none"}.get(augment, augment)  # type: ignore[call-overload]
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augmentation {augment!r}; choose one of {', '.join(AUGMENTS)}")
    if keep not in KEEPS:
        raise ValueError(f"unknown checkpoint rule {keep!r}; choose one of {', '.join(KEEPS)}")
    if mix not in MIX_CHOICES:
        raise ValueError(f"unknown mixing {mix!r}; choose one of {', '.join(MIX_CHOICES)}")
    x = first_inputs(calib, n_images, device)
    g = torch.Generator().manual_seed(seed)
    n_hold = len(x) // 8 if len(x) >= 16 else 0
    order = torch.randperm(len(x), generator=g).to(x.device)  # calibration sets often come sorted by class
    fit_x, hold_x = x[order[n_hold:]], x[order[:n_hold]]
    check_x = hold_x if n_hold else fit_x  # too few images to hold some out: check on the fitted ones
    batch_size = min(batch_size, len(fit_x))
    steps = min(steps, math.ceil(max_passes * len(fit_x) / max(batch_size, 1)))
    if mix == "auto":  # images only: other inputs are never mixed, and the report says so
        long_fit = steps * batch_size >= AUTO_MIX_PASSES * len(fit_x) > 0
        mix = "cutmix" if long_fit and x.dim() == 4 else "none"
    if not len(fit_x) or steps <= 0:
        return {"steps": 0, "kept": False, "seconds": round(time.perf_counter() - t0, 3), "n_images": len(x)}
    was = dense.training, pruned.training
    dense.eval()
    pruned.eval()
    params = [p for p in pruned.parameters() if p.is_floating_point()]
    flags = [p.requires_grad for p in params]
    dev = x.device
    half = use_bf16(bf16, dev)
    teacher_half = half or use_bf16(teacher_bf16, dev)
    with (channels_last(dense, pruned, enabled=fast_format and x.dim() == 4) as fmt,
          folded_batchnorm(dense, to_channels_last(x[:2], fmt), fold_norms) as dense_folded,
          folded_batchnorm(pruned, to_channels_last(x[:2], fmt), fold_norms) as pruned_folded):
        saved = {k: v.detach().clone() for k, v in pruned.state_dict().items()}
        held_out = _HeldOut(dense, check_x, 256)
        before = held_out.loss(pruned, temperature)
        best, best_step, checks, last = before, 0, max(1, steps // 10), before
        try:
            for p in params:
                p.requires_grad_(True)
            opt = torch.optim.Adam(params, lr=lr)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: _schedule(i, steps))
            every = max(1, steps // 50)
            with torch.enable_grad():
                for step in range(steps):
                    if should_cancel is not None and step % every == 0 and should_cancel():
                        raise JobCancelled("cancelled during output reconstruction")
                    idx = torch.randint(len(fit_x), (batch_size,), generator=g).to(x.device)
                    xb = fit_x[idx]
                    if augment != "none":
                        xb = augment_images(xb, g, mirror=augment == "shift_flip")
                    xb = mix_images(xb, g, mix)
                    xb = to_channels_last(xb, fmt)
                    with torch.no_grad(), autocast(dev, teacher_half):
                        teacher = dense(xb)
                    with autocast(dev, half):
                        student = pruned(xb)
                    loss = _loss(student, teacher, temperature)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    if progress is not None and (step + 1) % every == 0:
                        progress(step + 1, steps)
                    if (step + 1) % checks == 0 or step + 1 == steps:  # keep the best point seen on held-out images
                        last = held_out.loss(pruned, temperature)  # still in eval mode
                        if math.isfinite(last) and last < best:
                            best, best_step = last, step + 1
                            if best_step < steps:  # the end point needs no copy: it is the model itself
                                saved = {k: v.detach().clone() for k, v in pruned.state_dict().items()}
        finally:
            for p, f in zip(params, flags, strict=True):
                p.requires_grad_(f)
                p.grad = None
            dense.train(was[0])
            pruned.train(was[1])
    if keep == "end" and math.isfinite(last) and last < before:
        best, best_step = last, steps
    kept = best_step > 0
    if best_step != steps:  # also when the fit diverged (a non-finite loss is never the best)
        pruned.load_state_dict(saved)  # the best checkpoint (the model as it came if none was better)
    return {"steps": steps, "lr": lr, "batch_size": batch_size, "temperature": temperature, "augment": augment,
            "mix": mix, "keep": keep, "bf16": half, "teacher_bf16": teacher_half, "channels_last": fmt,
            "folded_norms": {"dense": dense_folded, "pruned": pruned_folded},
            "n_images": len(fit_x), "held_out_images": n_hold,
            "held_out_loss_before": round(before, 6), "held_out_loss_after": round(best, 6),
            "held_out_loss_last": round(last, 6) if math.isfinite(last) else None,
            "kept": kept, "best_step": best_step,
            "seconds": round(time.perf_counter() - t0, 3)}
