"""Losses: BN statistics and the one SC-DD recovery objective (``bn_matching``), post-training KD and
mixed hard-label losses (``distillation``)."""
