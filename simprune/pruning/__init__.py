"""Pruning core: group discovery, allocation, surgery, BatchNorm re-estimation, the prune() entry point."""
