"""Repeated forward passes that differ only from one module on: the unchanged prefix computed once.

The sensitivity scan and the block-damage scan run the whole model on the same calibration images once per
probe, each probe changing one group or one block. Every module that finishes before the changed one starts
returns the same output in every probe. :class:`PrefixCache` records the call order of one plain pass; inside
:meth:`PrefixCache.reuse_before` the outermost modules that finish before the named one return copies of
their recorded outputs instead of computing them (the rest of the model runs as usual, so the probe's own
hooks and replaced modules behave exactly as in a full pass).

Valid for models whose modules are pure functions of their inputs in eval mode (CNNs: convs, norms,
activations, pooling). Modules called more than once per pass are never replayed. A replayed output is
handed out as stored; when an in-place operation downstream (``ReLU(inplace=True)``, ``out += identity``) has
changed it (its tensors' version counters moved), the module computes again instead and its output is
captured afresh for the next point. (Writes through ``.data`` bypass the version counters; no forward pass of
the zoo's models does that.) The cache holds at most ``budget_bytes`` of outputs, preferring the modules that
finish last (those save the most compute); a module left out simply computes again, which is always correct.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

CACHE_BUDGET_BYTES = 1 << 30
"""At most this many bytes of recorded outputs are held at once."""


class _Stop(Exception):
    """Raised by a hook to end a capture pass at the changed module."""


def output_tensors(out: Any) -> list[torch.Tensor]:
    """The tensors in a module or model output (a tensor, or lists, tuples and dicts of them), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, list | tuple):
        return [t for o in out for t in output_tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in output_tensors(o)]
    return []


def _nbytes(out: Any) -> int:
    return sum(t.numel() * t.element_size() for t in output_tensors(out))


def _snapshot(out: Any) -> Any:
    """A detached copy of a module output, same structure (named tuples included)."""
    if isinstance(out, torch.Tensor):
        return out.detach().clone()
    if isinstance(out, list | tuple):
        items = [_snapshot(o) for o in out]
        return type(out)(*items) if hasattr(out, "_fields") else type(out)(items)
    if isinstance(out, dict):
        return {k: _snapshot(v) for k, v in out.items()}
    return out


def largest_output_bytes(model: nn.Module, example: torch.Tensor) -> int:
    """The largest module output of one pass of ``model`` on ``example``, in bytes."""
    return max(PrefixCache(model, example).size.values(), default=0)


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


class PrefixCache:
    """The call order of one pass of ``model`` on ``x``, and outputs replayed for passes changed after a point.

    Use: ``cache = PrefixCache(model, x)``; ``cache.output`` is the plain pass's output; then, for each probe,
    ``with cache.reuse_before(name): model(x)`` (with the probe's change made to module ``name`` or later).
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, budget_bytes: int | None = None) -> None:
        self.model, self.x = model, x
        self.budget = CACHE_BUDGET_BYTES if budget_bytes is None else budget_bytes
        self.modules = dict(model.named_modules())
        self.span: dict[str, tuple[int, int]] = {}  # name -> (enter, exit) tick, for modules called once
        self.size: dict[str, int] = {}
        self.store: dict[str, Any] = {}
        self.output = self._record()

    def _record(self) -> Any:
        enter: dict[str, list[int]] = {}
        exit_: dict[str, list[int]] = {}
        tick = [0]

        def pre(name: str) -> Any:
            def hook(m: nn.Module, inp: Any) -> None:
                tick[0] += 1
                enter.setdefault(name, []).append(tick[0])
            return hook

        def post(name: str) -> Any:
            def hook(m: nn.Module, inp: Any, out: Any) -> None:
                tick[0] += 1
                exit_.setdefault(name, []).append(tick[0])
                self.size[name] = _nbytes(out)
            return hook

        hooks = []
        for name, mod in self.modules.items():
            hooks.append(mod.register_forward_pre_hook(pre(name)))
            hooks.append(mod.register_forward_hook(post(name)))
        try:
            out = self.model(self.x)
        finally:
            for h in hooks:
                h.remove()
        for name, e in enter.items():
            if len(e) == 1 and len(exit_.get(name, [])) == 1 and name:
                self.span[name] = (e[0], exit_[name][0])
        return out

    def _reusable(self, name: str) -> list[str]:
        """The outermost modules that finish before module ``name`` starts, latest first, within the budget."""
        if name not in self.span:
            return []
        start = self.span[name][0]
        done = {n for n, (_, end) in self.span.items() if end < start}
        outer = sorted((n for n in done if _parent(n) not in done), key=lambda n: -self.span[n][1])
        chosen, used = [], 0
        for n in outer:
            if used + self.size.get(n, 0) > self.budget:
                break
            chosen.append(n)
            used += self.size.get(n, 0)
        return chosen

    @contextmanager
    def _replaying(self, names: list[str]) -> Iterator[None]:
        saved: list[tuple[nn.Module, Any]] = []
        try:
            for n in names:
                mod = self.modules[n]
                saved.append((mod, mod.__dict__.get("forward")))
                mod.forward = self._replay(n, mod.forward)  # type: ignore[method-assign]
            yield
        finally:
            for mod, old in saved:
                if old is None:
                    del mod.forward
                else:
                    mod.forward = old  # type: ignore[method-assign]

    def _replay(self, name: str, compute: Any) -> Any:
        """A forward returning the stored output, or computing it when the stored one was altered in place."""

        def forward(*args: Any, **kwargs: Any) -> Any:
            out, versions = self.store.get(name, (None, []))
            if out is not None and [t._version for t in output_tensors(out)] == versions:
                return out
            self.store.pop(name, None)  # changed in place downstream: computed now, captured again next time
            return compute(*args, **kwargs)

        return forward

    def _keep(self, name: str, out: Any) -> None:
        out = _snapshot(out)  # a copy: the rest of this pass may change the original in place
        self.store[name] = (out, [t._version for t in output_tensors(out)])

    def _capture(self, names: list[str], stop_at: str) -> None:
        hooks = []
        for n in names:
            hooks.append(self.modules[n].register_forward_hook(
                lambda m, inp, out, n=n: self._keep(n, out)))

        def stop(m: nn.Module, inp: Any) -> None:
            raise _Stop

        hooks.append(self.modules[stop_at].register_forward_pre_hook(stop))
        try:
            with self._replaying([n for n in self.store if n not in names]):
                self.model(self.x)
        except _Stop:
            pass
        finally:
            for h in hooks:
                h.remove()

    @contextmanager
    def reuse_before(self, name: str) -> Iterator[None]:
        """Within the block, modules finishing before module ``name`` starts replay their recorded outputs.

        Changes the probe makes must lie at module ``name`` or after it in the pass (a hook on it, a
        replacement of it or of a later module). An unknown or repeatedly called ``name`` reuses nothing.
        """
        chosen = self._reusable(name)
        missing = [n for n in chosen if n not in self.store]
        if missing:  # what is stored from earlier points (inside the missing modules too) still replays
            self._capture(missing, name)
        for n in [n for n in self.store if n not in chosen]:
            del self.store[n]
        with self._replaying([n for n in chosen if n in self.store]):
            yield


def module_name(model: nn.Module, module: nn.Module) -> str | None:
    """The name of ``module`` inside ``model`` (None when it is not a submodule)."""
    for n, m in model.named_modules():
        if m is module:
            return n
    return None
