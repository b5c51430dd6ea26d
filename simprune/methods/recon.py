"""``recon``: greedy least-squares channel selection on the next layer's output.

Not one of the papers in METHODS.md: the data-driven selection of the channel-pruning literature (ThiNet,
Luo et al. ICCV 2017; He et al. ICCV 2017), written to agree with our least-squares compensation. The
consumer of the group (the layer reading its channels) computes ``Y = X W^T`` from its input patches
``X`` (calibration feature maps, unfolded with the consumer's kernel, centred because the refit has an
intercept). Keeping the channel set ``S`` and re-fitting the consumer leaves the residual

    RSS(S) = min_B ||X_S B - Y||^2 + lambda ||B||^2

and the criterion removes channels one at a time (backward elimination), each time the channel whose
removal raises ``RSS`` least, measured relative to the output energy ``||Y||^2`` and summed over the
consumers. With ``H = (G + lambda I)^-1`` (``G = X^T X``) and ``beta = H X^T Y``, removing channel ``c``
(its block of kernel taps ``b``) raises ``RSS`` by ``beta_b^T H_bb^-1 beta_b``; ``H`` and ``beta`` are
then down-dated by the Schur complement, so the whole elimination costs about one inversion.

Groups whose consumer input is wider than ``max_dim`` (channels x taps) use the diagonal approximation
of the same quantity (``G`` diagonal: ``var(x_c) * ||W[:, c]||^2``); groups without a fittable consumer
fall back to the BatchNorm-scaled activation variance.

Sequential pruning (``compensation_options={"sequential": True}``) hands the criterion the features of
the partially pruned model and, as ``extra["target_features"]``, the dense model's features for the same
images: the elimination then reconstructs the *dense* output (He et al.'s formulation), which also absorbs
the error the earlier pruned layers left. ``scores`` are the relative RSS increases at the
moment each channel was removed (made monotone along the elimination order), comparable across layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from simprune.methods._similarity import resolve_n_keep
from simprune.methods.base import ChannelGroup, Criterion, Selection, option
from simprune.methods.registry import register_method


def _consumer_rows(mod: nn.Module, feats: torch.Tensor, max_rows: int, gen: torch.Generator) -> torch.Tensor | None:
    """Input patches of ``mod`` at sampled output positions: (P, C * taps), or None if unsupported."""
    from simprune.compensation.lstsq import _rows_of_input

    if isinstance(mod, nn.Linear):
        if feats.dim() != 2:
            return None
        x = feats
        idx = torch.randperm(x.shape[0], generator=gen)[:max_rows].sort().values
        return x[idx].double()
    if not isinstance(mod, nn.Conv2d | nn.Conv1d) or mod.groups != 1 or mod.padding_mode != "zeros":
        return None
    if feats.dim() != (4 if isinstance(mod, nn.Conv2d) else 3):
        return None
    with torch.no_grad():
        probe = mod(feats[:1].to(mod.weight.dtype).to(mod.weight.device))
    per = probe[0, 0].numel()
    total = feats.shape[0] * per
    idx = torch.randperm(total, generator=gen)[:max_rows].sort().values
    return _rows_of_input(mod, feats.to(mod.weight.dtype), idx).double()


def _eliminate(blocks: list[tuple[torch.Tensor, torch.Tensor, float]], n: int, t_list: list[int],
               ridge: float) -> tuple[list[int], list[float]]:
    """Backward elimination over ``n`` channels; ``blocks``: per consumer (G = X^T X, C = X^T Y, ||Y||^2).
    Returns the removal order (all but the last channel, then the last) and the relative RSS increase at
    each removal."""
    state = []
    for (g, cross, energy), t in zip(blocks, t_list, strict=True):
        lam = ridge * float(torch.diagonal(g).mean().clamp_min(1e-12))
        h = torch.linalg.inv(g + lam * torch.eye(g.shape[0], dtype=g.dtype))
        beta = h @ cross
        state.append({"h": h, "beta": beta, "t": t, "energy": max(energy, 1e-30)})
    alive = list(range(n))
    order: list[int] = []
    cost: list[float] = []
    while len(alive) > 1:
        m = len(alive)
        total = torch.zeros(m, dtype=torch.float64)
        inv_blocks = []
        for s in state:
            t = s["t"]
            h4 = s["h"].view(m, t, m, t)
            hbb = h4[torch.arange(m), :, torch.arange(m), :]  # (m, t, t)
            bb = s["beta"].view(m, t, -1)
            inv = torch.linalg.pinv(hbb, hermitian=True)
            total += torch.einsum("mto,mts,mso->m", bb, inv, bb) / s["energy"]
            inv_blocks.append(inv)
        j = int(torch.argmin(total))
        order.append(alive.pop(j))
        cost.append(float(total[j]))
        for s, inv in zip(state, inv_blocks, strict=True):
            t = s["t"]
            rows = torch.ones(m * t, dtype=torch.bool)
            rows[j * t:(j + 1) * t] = False
            h = s["h"]
            hrb = h[rows][:, ~rows]  # (D', t)
            corr = hrb @ inv[j]
            s["h"] = h[rows][:, rows] - corr @ h[~rows][:, rows]
            s["beta"] = s["beta"][rows] - corr @ s["beta"][~rows]
    order.append(alive[0])
    cost.append(float("inf"))
    return order, cost


@register_method
@dataclass
class Reconstruction(Criterion):
    """Backward elimination of the channels whose loss the re-fitted consumer reconstructs best."""

    name = "recon"
    needs_data = True
    summary = ("Greedy least-squares selection (ThiNet / He et al. 2017 family): removes, one at a time, the "
               "channel whose loss the re-fitted next layer reconstructs best on calibration data.")
    ridge: float = option(1e-3, "ridge regularisation, relative to the mean diagonal of the Gram matrix", ge=0.0)
    max_rows: int = option(16384, "sampled output positions (rows) of the least-squares problem", ge=16)
    max_dim: int = option(1152, "largest unfolded input width solved exactly (above: diagonal fallback)", ge=1)

    def _order(self, group: ChannelGroup) -> tuple[list[int], torch.Tensor]:
        """Removal order (first removed first) and per-channel importance, cached per group and features."""
        self.check(group)
        feats = group.features
        assert feats is not None
        hit = self._cache.get(group.name)
        if hit is not None and hit[0] is feats and hit[3] is (group.extra or {}).get("target_features"):
            return hit[1], hit[2]
        target = group.extra.get("target_features") if group.extra else None
        if target is not None and target.shape != feats.shape:
            target = None
        n = group.n_channels
        blocks: list[tuple[torch.Tensor, torch.Tensor, float]] = []
        taps: list[int] = []
        diag = torch.zeros(n, dtype=torch.float64)
        for c in group.consumers:
            mod = c.module
            w = mod.weight.detach().double().cpu()
            t = int(w[0, 0].numel()) if w.dim() > 2 else 1
            wt = w.reshape(w.shape[0], n * t).T.contiguous()  # (n * t, C_out)
            var = feats.double().transpose(0, 1).reshape(n, -1).var(dim=1)
            diag += var * (w.reshape(w.shape[0], n, t) ** 2).sum(dim=(0, 2)) / (w ** 2).sum().clamp_min(1e-30)
            if n * t > self.max_dim:
                continue
            rows = max(self.max_rows, 4 * n * t)
            x = _consumer_rows(mod, feats, rows, torch.Generator().manual_seed(self.seed))
            if x is None:
                continue
            x = x - x.mean(0)
            g = x.T @ x / x.shape[0]
            if target is None:  # reconstruct the layer's own output
                cross, energy = g @ wt, float(torch.einsum("io,ik,ko->", wt, g, wt))
            else:  # reconstruct the dense model's output from this (already pruned) model's features
                xt = _consumer_rows(mod, target, rows, torch.Generator().manual_seed(self.seed))
                assert xt is not None
                y = (xt - xt.mean(0)) @ wt
                cross, energy = x.T @ y / x.shape[0], float((y ** 2).sum()) / x.shape[0]
            blocks.append((g, cross, energy))
            taps.append(t)
        if blocks:
            order, cost = _eliminate(blocks, n, taps, self.ridge)
            score = torch.empty(n, dtype=torch.float64)
            running = 0.0
            finite = [c for c in cost if c != float("inf")]
            top = (max(finite) if finite else 0.0) * 2 + 1.0
            for ch, c in zip(order, cost, strict=True):
                running = max(running, c if c != float("inf") else top)
                score[ch] = running
            removal = order
        elif group.consumers:
            score = diag
        else:
            var = feats.double().transpose(0, 1).reshape(n, -1).var(dim=1)
            gamma = group.bn.weight.detach().double().abs().cpu() if group.bn is not None else 1.0
            score = var * gamma
        if not blocks:
            removal = torch.argsort(score, stable=True).tolist()
        self._cache[group.name] = (feats, removal, score.float(), target)
        return removal, score.float()

    def scores(self, group: ChannelGroup) -> torch.Tensor:
        return self._order(group)[1]

    def select(self, group: ChannelGroup, n_keep: int) -> Selection:
        n_keep = resolve_n_keep(n_keep, group.n_channels)
        order, _ = self._order(group)
        keep = torch.tensor(order[group.n_channels - n_keep:], dtype=torch.long)
        info: dict[str, Any] = {"method": self.name}
        return Selection(keep=keep, info=info)

    def __post_init__(self) -> None:
        if self.ridge < 0 or self.max_rows < 16 or self.max_dim < 1:
            raise ValueError("recon: ridge >= 0, max_rows >= 16 and max_dim >= 1 are required")
        self._cache: dict[str, tuple[Any, ...]] = {}
