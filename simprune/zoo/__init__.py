"""Model zoo: registered architectures (name -> builder + input metadata) and checkpoint-driven building."""

from simprune.zoo.infer import (
    build_for_state_dict,
    infer_in_channels,
    infer_num_classes,
    load_state_dict_lenient,
    strip_module_prefix,
)
from simprune.zoo.registry import ArchInfo, build_model, get_arch, list_archs, register_arch

__all__ = [
    "ArchInfo",
    "build_for_state_dict",
    "build_model",
    "get_arch",
    "infer_in_channels",
    "infer_num_classes",
    "list_archs",
    "load_state_dict_lenient",
    "register_arch",
    "strip_module_prefix",
]
