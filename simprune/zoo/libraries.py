"""Every classifier of the installed torchvision (``torchvision/<name>``) and timm (``timm/<name>``), by name.

Entries are resolved lazily: listing reads the libraries' registries and pretrained configurations (input size,
normalisation, classes) and never builds a model; a builder calls the library with ``weights=None`` /
``pretrained=False`` (nothing is downloaded). ``num_classes`` and input channels come from the checkpoint
(:func:`simprune.zoo.build_for_state_dict`). ``verified`` says whether the family is covered by
``tests/test_zoo_libraries.py`` / ``tests/test_onnx_import.py``; ``bench/zoo_sweep.py`` runs all of them.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable
from functools import cache

from torch import nn

from simprune.zoo.registry import ArchInfo, register_namespace
from simprune.zoo.torchvision_models import IMAGENET_MEAN, IMAGENET_STD, replace_first_conv

TORCHVISION, TIMM, ONNX = "torchvision/", "timm/", "onnx/"

VERIFIED_TORCHVISION = frozenset({"resnet", "mobilenet_v3", "efficientnet", "regnet", "densenet"})
"""torchvision families with a representative in the tests (see ``TORCHVISION_REPRESENTATIVES``)."""
VERIFIED_TIMM = frozenset({"resnet", "efficientnet", "mobilenetv3", "regnet", "convnext", "ghostnet"})
"""timm modules with a representative in the tests (see ``TIMM_REPRESENTATIVES``)."""
TORCHVISION_REPRESENTATIVES = {"resnet": "resnet18", "mobilenet_v3": "mobilenet_v3_small",
                               "efficientnet": "efficientnet_b0", "regnet": "regnet_x_400mf",
                               "densenet": "densenet121"}
TIMM_REPRESENTATIVES = {"resnet": "resnet10t", "efficientnet": "efficientnet_b0",
                        "mobilenetv3": "mobilenetv3_small_050",
                        "regnet": "regnetx_002", "convnext": "convnext_atto", "ghostnet": "ghostnet_050"}
_TV_FAMILIES = ("mobilenet_v2", "mobilenet_v3", "efficientnet_v2", "efficientnet", "regnet", "resnext",
                "wide_resnet", "resnet", "shufflenet_v2", "squeezenet", "densenet", "convnext", "vit", "swin_v2",
                "swin", "maxvit", "mnasnet", "inception", "googlenet", "alexnet", "vgg")


def torchvision_family(name: str) -> str:
    """The family of a torchvision builder name (``regnet_x_400mf`` -> ``regnet``)."""
    for fam in _TV_FAMILIES:
        if name.startswith(fam):
            return fam
    m = re.match(r"[a-z]+", name)
    return m.group(0) if m else name


@cache
def _torchvision_names() -> tuple[str, ...]:
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def _torchvision_info(name: str) -> ArchInfo:
    """The catalogue entry of ``torchvision/<short>`` (pretrained-weights metadata for size and normalisation)."""
    import torchvision

    short = name[len(TORCHVISION):]
    if short not in _torchvision_names():
        raise KeyError(f"unknown architecture '{name}': torchvision has no classification model '{short}' "
                       "(see `simprune archs --search torchvision/`)")
    size, mean, std, classes = 224, IMAGENET_MEAN, IMAGENET_STD, 1000
    weights = list(torchvision.models.get_model_weights(short))
    if weights:
        kw = getattr(weights[0].transforms, "keywords", {})
        size = int(kw.get("crop_size", size))
        mean, std = tuple(kw.get("mean", mean)), tuple(kw.get("std", std))
        classes = len(weights[0].meta.get("categories") or []) or classes

    # A ViT's position embedding is sized for one image size: build it for the size its weights were trained at
    # (vit_h_14's only weights are 518 px), so the catalogue's input size and the built model agree.
    fixed = {"image_size": size} if short.startswith("vit_") else {}

    def builder(num_classes: int = classes, in_channels: int = 3) -> nn.Module:
        model = torchvision.models.get_model(short, weights=None, num_classes=num_classes, **fixed)
        if in_channels != 3:
            replace_first_conv(model, in_channels)
        return _plain_state_dicts(model)

    builder.__doc__ = f"torchvision {short}, ``weights=None``."
    fam = torchvision_family(short)
    return ArchInfo(name=name, builder=builder, input_size=(3, size, size), mean=mean, std=std, num_classes=classes,
                    family=f"torchvision:{fam}", description=f"torchvision {short} (random init)",
                    tags=("imagenet", "torchvision"), verified=fam in VERIFIED_TORCHVISION)


def _versioned_load(self: nn.Module, state_dict: dict, prefix: str, local_metadata: dict, *args: object) -> None:
    """``_load_from_state_dict`` that supplies the module's own ``_version`` when the state dict carries no
    ``_metadata`` (safetensors files never do): torchvision's MNASNet refuses a version-less state dict."""
    local_metadata = {"version": type(self)._version, **local_metadata}
    type(self)._load_from_state_dict(self, state_dict, prefix, local_metadata, *args)


def _plain_state_dicts(model: nn.Module) -> nn.Module:
    """Let ``model`` load plain tensor dicts (no ``_metadata``) where its class demands a version (MNASNet), and
    declare the layers a torchvision model cannot have pruned (the token stream of a ViT, Swin or MaxViT)."""
    from torchvision.models.maxvit import MaxVit
    from torchvision.models.mnasnet import MNASNet
    from torchvision.models.swin_transformer import SwinTransformer
    from torchvision.models.vision_transformer import VisionTransformer

    windowed_prunable = {
        SwinTransformer: ("mlp.0",),
        MaxVit: ("conv_a.0", "conv_b.0", "squeeze_excitation.fc1", "squeeze_excitation.fc2", "mlp_layer.1"),
    }

    if isinstance(model, MNASNet):
        model._load_from_state_dict = types.MethodType(_versioned_load, model)  # type: ignore[method-assign]
    if isinstance(model, VisionTransformer):
        # The patch embedding's width is the residual stream's: torchvision reshapes it to the fixed
        # ``hidden_dim`` and nn.MultiheadAttention to its ``embed_dim``, so that stream is kept whole and the
        # MLPs' hidden layers are what gets pruned.
        model.simprune_frozen_layers = lambda: ["conv_proj"]  # type: ignore[assignment]
    elif isinstance(model, SwinTransformer | MaxVit):
        # Windowed attention reshapes the token stream into windows and heads: Torch-Pruning's index mapping
        # through those reshapes grows with channels x tokens (tens of GB). Every layer writing the stream or
        # the heads is kept whole; the MLPs' hidden layers (and MaxViT's MBConv expansions) are pruned.
        allowed = windowed_prunable[type(model)]
        frozen = [n for n, m in model.named_modules()
                  if isinstance(m, nn.Linear | nn.Conv2d) and not n.endswith(allowed)]
        model.simprune_untraced_layers = lambda: frozen  # type: ignore[assignment]
    return model


@cache
def _timm_modules() -> dict[str, str]:
    """timm model name -> the timm module (family) defining it."""
    import timm

    return {n: mod for mod in timm.list_modules() for n in timm.list_models(module=mod)}


def _timm_frozen(model: nn.Module) -> nn.Module:
    """Declare what a timm transformer cannot have pruned: its attention reshapes ``qkv`` to a fixed
    ``(3, num_heads, head_dim)`` and its token stream carries fixed-width class/position embeddings, so the
    patch embedding and every ``qkv`` are kept whole (the MLPs' hidden layers are pruned)."""
    proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    qkv = [n for n, m in model.named_modules() if n.endswith("attn.qkv") and isinstance(m, nn.Linear)]
    if isinstance(proj, nn.Conv2d) and qkv:
        model.simprune_frozen_layers = lambda: ["patch_embed.proj", *qkv]  # type: ignore[assignment]
    return model


def _timm_info(name: str) -> ArchInfo:
    """The catalogue entry of ``timm/<short>`` from timm's pretrained configuration."""
    import timm

    short = name[len(TIMM):]
    module = _timm_modules().get(short)
    if module is None:
        raise KeyError(f"unknown architecture '{name}': timm has no model '{short}' (see `simprune archs --search "
                       "timm/`)")
    cfg = timm.get_pretrained_cfg(short)
    size = tuple(cfg.input_size) if cfg and cfg.input_size else (3, 224, 224)
    mean = tuple(cfg.mean) if cfg and cfg.mean else IMAGENET_MEAN
    std = tuple(cfg.std) if cfg and cfg.std else IMAGENET_STD
    classes = (cfg.num_classes if cfg else 0) or 1000

    def builder(num_classes: int = classes, in_channels: int = 3) -> nn.Module:
        return _timm_frozen(timm.create_model(short, pretrained=False, num_classes=num_classes,
                                              in_chans=in_channels))

    builder.__doc__ = f"timm {short}, ``pretrained=False``."
    return ArchInfo(name=name, builder=builder, input_size=size, mean=mean, std=std, num_classes=classes,
                    in_channels=size[0], family=f"timm:{module}", description=f"timm {short} (random init)",
                    tags=("timm",), verified=module in VERIFIED_TIMM)


def _lister(names: Callable[[], tuple[str, ...]], info: Callable[[str], ArchInfo]) -> Callable[[], list[ArchInfo]]:
    @cache
    def entries() -> tuple[ArchInfo, ...]:
        return tuple(info(n) for n in names())

    return lambda: list(entries())


def _onnx_info(name: str) -> ArchInfo:
    from simprune.onnx_import import arch_info

    return arch_info(name)


_torchvision_resolve = cache(_torchvision_info)
_timm_resolve = cache(_timm_info)
register_namespace(TORCHVISION, _torchvision_resolve,
                   _lister(lambda: tuple(TORCHVISION + n for n in _torchvision_names()), _torchvision_resolve))
register_namespace(TIMM, _timm_resolve,
                   _lister(lambda: tuple(TIMM + n for n in sorted(_timm_modules())), _timm_resolve))
register_namespace(ONNX, _onnx_info)
