"""Compensation after channel removal, without fine-tuning.

* :func:`~simprune.compensation.fold.fold_removed`: fold each removed channel into its most similar kept
  channel in the consumers (``W[:, k] += alpha * W[:, r]``, the constant ``beta`` term into a bias or the
  following BatchNorm), before the channels are cut.
* :func:`~simprune.compensation.lstsq.reconstruct_consumers`: least-squares re-fit of the consumers on
  calibration data so that they reproduce the dense model's outputs (He et al. 2017, ThiNet).
* :func:`~simprune.compensation.block_recon.reconstruct_blocks`: label-free block reconstruction (each block
  fitted by gradient steps to the dense block's output).
* :func:`~simprune.compensation.output_recon.reconstruct_outputs`: label-free output reconstruction (the whole
  model fitted to the dense model's softened logits on augmented calibration images, best held-out checkpoint).
* BatchNorm re-estimation lives in :mod:`simprune.pruning.batchnorm`.
"""

from simprune.compensation.fold import fold_removed, merge_map
from simprune.compensation.lstsq import reconstruct_consumers

__all__ = ["fold_removed", "merge_map", "reconstruct_consumers"]
