"""Pruning core.

* :mod:`~simprune.pruning.phases`: ``prune()``, run as named phases over one ``PruneRun`` state;
* :mod:`~simprune.pruning.groups`: channel-group discovery and the FLOPs model;
* :mod:`~simprune.pruning.features`: calibration inputs and per-group feature maps;
* :mod:`~simprune.pruning.allocation`: kept counts per group (uniform, global, sensitivity, FLOPs search);
* :mod:`~simprune.pruning.sequential`: group-by-group selection with re-fitting;
* :mod:`~simprune.pruning.surgery`: channel removal and plan replay;
* :mod:`~simprune.pruning.batchnorm`: BatchNorm re-estimation;
* :mod:`~simprune.pruning.report`: report rows shared by every pruning path.
"""
