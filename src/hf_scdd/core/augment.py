"""Batched, on-device augmentation (kornia / pure torch) for every stage.

Three families, one per consumer:

* SSL views for MoCo v2 pre-training (two random views per image);
* recovery augmentation for synthesis (differentiable: circular-roll jitter, batch-shared crop and flip);
* post-training views with *recorded parameters* (crop box, flip, mix partner, lambda, box), so that
  relabelling can store them and post-training can replay exactly the same views.
"""

from __future__ import annotations

import torch

# === SSL views (squeeze) ===================================================================================

# === recovery augmentation (recover) =======================================================================

# === post-training views with recorded parameters (relabel / evaluate) ====================================
