"""Batched, on-device augmentation, one module per consumer: SSL/supervised pre-training views (``ssl``),
differentiable recovery augmentation (``recovery``) and post-training views with recorded parameters
(``views``)."""
