"""Import every built-in criterion module so that each registers itself."""

import importlib

BUILTIN = (
    "l1", "l2", "fpgm", "bn_scale", "random",
    "passive_sim", "nystrom_sim", "qsfm", "channel_cluster", "recon",
)

for _name in BUILTIN:
    importlib.import_module(f"simprune.methods.{_name}")
