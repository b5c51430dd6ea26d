"""What the API asks of the simprune library: the method and architecture catalogues and the inspection of
uploads. Every torch-using import happens inside a function, so importing the API (or this module) stays fast
and light; the first call pays the import. (The worker runs jobs through :mod:`simprune.pipeline` itself.)"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from simprune.errors import InputError


@lru_cache(maxsize=1)
def list_architectures() -> tuple[dict[str, Any], ...]:
    """Every registered architecture as a dict (``ArchInfo.to_dict()``)."""
    from simprune.zoo import list_archs

    return tuple(a.to_dict() for a in list_archs())


def list_methods() -> list[dict[str, Any]]:
    """Every method a job can name (the registry's catalogue: name, summary, kind, needs_data, trains,
    options with types, defaults, bounds and help)."""
    from simprune.methods import list_methods as registered

    return registered()


@lru_cache(maxsize=1)
def _all_architectures() -> tuple[dict[str, Any], ...]:
    """The zoo plus every ``torchvision/<name>`` and ``timm/<name>`` entry (built lazily, cached)."""
    from simprune.zoo import list_archs

    return tuple(a.to_dict() for a in list_archs(libraries=True))


def search_architectures(search: str | None = None, offset: int = 0, limit: int = 100) -> dict[str, Any]:
    """A page of the full catalogue (names containing ``search``, case-insensitive): ``{items, total, offset,
    next_offset}``; ``next_offset`` is None on the last page."""
    needle = (search or "").strip().lower()
    rows = [a for a in _all_architectures() if needle in a["name"].lower()] if needle else list(_all_architectures())
    page = rows[offset:offset + limit]
    nxt = offset + limit if offset + limit < len(rows) else None
    return {"items": page, "total": len(rows), "offset": offset, "next_offset": nxt}


def arch_info(name: str) -> dict[str, Any]:
    """The description of architecture ``name`` (the zoo, ``torchvision/<name>``, ``timm/<name>``);
    :class:`InputError` listing the valid names when unknown."""
    archs = {a["name"]: a for a in list_architectures()}
    if name in archs:
        return archs[name]
    if name.startswith(("torchvision/", "timm/")):
        from simprune.zoo import get_arch

        try:
            return get_arch(name).to_dict()
        except KeyError as exc:
            raise InputError(str(exc.args[0])) from None
    raise InputError(f"unknown architecture '{name}'; choose one of: {', '.join(sorted(archs))}, "
                     "torchvision/<name>, timm/<name> (GET /v1/architectures?search=...)")


def inspect_onnx(path: Path, max_bytes: int | None = None) -> dict[str, Any]:
    """Check, convert and dry-run an uploaded ``.onnx`` model (no architecture name needed).

    Returns the fields of :func:`inspect_checkpoint` (``arch`` is ``onnx/<sha256 prefix>``) plus ``dry_run``:
    prunable groups and channels, groups kept whole and why, operators, conversion fidelity. Raises
    :class:`InputError` / :class:`UnsafeInputError` for refused files and
    :class:`simprune.onnx_import.UnsupportedModelError` (an InputError naming ``operators``) for a model that
    cannot be pruned at all.
    """
    from simprune.onnx_import import MAX_ONNX_BYTES
    from simprune.onnx_import import inspect_onnx as inspect

    info = inspect(path, max_bytes=min(max_bytes or MAX_ONNX_BYTES, MAX_ONNX_BYTES))
    dry_run = {k: info[k] for k in ("prunable_groups", "prunable_channels", "groups", "kept_whole", "operators",
                                    "unsupported_operators", "opset", "fidelity_max_abs_diff")}
    return {
        "arch": info["arch"], "num_classes": info["num_classes"] or 0, "in_channels": info["input_size"][0],
        "input_size": info["input_size"], "params": info["params"], "flops": info["flops"], "format": "onnx",
        "dry_run": dry_run,
    }


def inspect_checkpoint(
    path: Path,
    arch: str,
    num_classes: int | None = None,
    input_size: tuple[int, ...] | None = None,
    max_bytes: int | None = None,
) -> dict[str, Any]:
    """Safely load ``path``, build it into ``arch`` and count it.

    Returns ``{arch, num_classes, in_channels, input_size, params, flops}``. Raises :class:`InputError`
    (or :class:`UnsafeInputError`) when the file is not a safe state_dict or does not fit the architecture.
    """
    import torch

    from simprune.checkpoint import load_state_dict
    from simprune.flops import count_model
    from simprune.zoo import build_for_state_dict

    info = arch_info(arch)
    kwargs = {"max_bytes": max_bytes} if max_bytes else {}
    sd = load_state_dict(path, **kwargs)
    in_channels = int(input_size[0]) if input_size else None
    model = build_for_state_dict(arch, sd, num_classes=num_classes, in_channels=in_channels)
    if input_size is None:
        first = next((m for m in model.modules() if hasattr(m, "in_channels")), None)
        in_ch = int(getattr(first, "in_channels", info["in_channels"]))
        input_size = (in_ch, *info["input_size"][1:])
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    nc = int(last[-1].out_features) if last else int(num_classes or info["num_classes"])
    try:
        counts = count_model(model, torch.zeros(1, *input_size))
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"the model does not run on inputs of size {list(input_size)}: {exc}") from None
    return {
        "arch": arch,
        "num_classes": nc,
        "in_channels": int(input_size[0]),
        "input_size": [int(x) for x in input_size],
        "params": int(counts["params"]),
        "flops": int(counts["flops"]),
    }


def inspect_dataset(path: Path, max_entries: int, max_uncompressed_bytes: int) -> dict[str, Any]:
    """``{samples, classes, class_names, format}`` of a dataset file; InputError/UnsafeInputError if bad.

    Zip archives are first checked without extracting (entry count, declared sizes, ratios, unsafe paths).
    """
    import zipfile

    from simprune.archive import DATASET_MAX_ENTRY_BYTES, DATASET_MAX_RATIO, check_zip

    if path.suffix.lower() == ".zip" and zipfile.is_zipfile(path):
        check_zip(path, max_entries=max_entries, max_total_bytes=max_uncompressed_bytes,
                  max_entry_bytes=min(DATASET_MAX_ENTRY_BYTES, max_uncompressed_bytes),
                  max_ratio=DATASET_MAX_RATIO)
    from simprune.data import inspect_dataset as _inspect

    return dict(_inspect(path))
