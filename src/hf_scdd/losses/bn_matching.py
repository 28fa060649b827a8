"""BatchNorm statistics and THE SC-DD recovery objective: the one function synthesis and the tests call.

SC-DD (like SRe²L/DeepInversion) matches, for every ``nn.BatchNorm2d`` of a frozen, eval-mode model, the
per-channel mean and *biased* variance of the layer's **input** over (N, H, W) against the layer's
``running_mean``/``running_var``:

    bn = Σ_l w_l (‖μ_l(x) − μ̂_l‖₂ + ‖σ²_l(x) − σ̂²_l‖₂),   w = first_bn_multiplier for the first BN layer, 1 else

with plain (unsquared, undivided) Euclidean norms over channels, as in the SC-DD/SRe²L reference code.

Two things differ from the reference hooks, neither changes the objective:

* **Groups.** An input of ``[G*B, C, H, W]`` is read as ``G`` independent batches of ``B``: statistics are
  ``[G, C]`` and the term is ``[G]``. ``G`` recovery units then share one forward pass while each is matched
  over exactly its own batch, which is what makes grouped recovery identical to running units one by one.
* **Precision.** Statistics are always computed in float32 (the hook upcasts and disables autocast), so a
  bf16/fp16 forward pass does not round the very quantities the loss compares.

The hooks only store tensors into a per-layer slot (no host synchronisation); :meth:`BNStatsRecorder.bn_loss`
reduces them after the forward pass.

The recovery objective adds the hard-label cross-entropy (SC-DD's loss):

    L = CE(f(aug(x)), y) + r_bn · bn

:func:`grouped_recovery_loss` is that loss, the one function :func:`hf_scdd.synthesis.engine.synthesize_group`
calls at every step and the tests check against a hand-written computation; :func:`recovery_loss` is its
one-batch form. To change the recovery loss, change :func:`recovery_objective`.

The module also summarises running statistics per layer (:func:`bn_layer_stats`, for ``hf-scdd inspect-bn``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BNStatsError
from ..training.accelerator import Precision, autocast_of

STATS = ("mean_of_running_mean", "std_of_running_mean", "mean_of_running_var", "std_of_running_var")
"""The per-layer summaries of :func:`bn_layer_stats`."""


def bn_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    """Every ``nn.BatchNorm2d`` of ``model`` in ``model.modules()`` order (downsample BNs included)."""
    layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if not layers:
        raise BNStatsError(
            f"{type(model).__name__} has no nn.BatchNorm2d layer, so there are no running statistics to match. "
            "SC-DD recovery needs a BatchNorm network (e.g. hf_scdd.ResNet, or a transformers ResNet/RegNet/"
            "MobileNet/EfficientNet classifier)."
        )
    return layers


def group_mean_var(x: torch.Tensor, groups: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group, per-channel mean and biased variance of ``x`` [G*B, C, H, W] over (B, H, W), in float32.

    Returns two ``[G, C]`` tensors.
    """
    n, c = x.shape[0], x.shape[1]
    if n % groups:
        raise BNStatsError(f"batch of {n} cannot be split into {groups} equal groups")
    with torch.autocast(device_type=x.device.type, enabled=False):
        x32 = x.float().reshape(groups, n // groups, c, -1)
        var, mean = torch.var_mean(x32, dim=(1, 3), correction=0)
    return mean, var


class BNStatsRecorder:
    """Context manager that hooks every BatchNorm2d and records its input statistics per group.

    Example::

        with BNStatsRecorder(model, groups=G) as rec:
            logits = model(x)               # x: [G*B, C, H, W]
            bn = rec.bn_loss()              # [G], differentiable w.r.t. x

    Attributes:
        layers: the hooked BN layers in ``model.modules()`` order.
        means, variances: per layer, the ``[G, C]`` float32 statistics of the last forward pass.
        first_index: index (into ``layers``) of the first BN layer the input met, found on the first forward
            pass; it gets ``first_bn_multiplier``. For torchvision-style models this is ``layers[0]``
            (``bn1``), exactly the reference's choice.
    """

    def __init__(self, model: nn.Module, *, groups: int = 1, first_bn_multiplier: float = 10.0):
        self.model = model
        self.layers = bn_layers(model)
        self.groups = int(groups)
        self.first_bn_multiplier = float(first_bn_multiplier)
        self.means: list[torch.Tensor | None] = [None] * len(self.layers)
        self.variances: list[torch.Tensor | None] = [None] * len(self.layers)
        self.first_index: int | None = None
        self._handles: list = []
        self._targets: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # -- hook management -------------------------------------------------------------------------------
    def __enter__(self) -> BNStatsRecorder:
        training = [i for i, layer in enumerate(self.layers) if layer.training]
        if training:
            raise BNStatsError(
                f"{len(training)} BatchNorm layer(s) are in training mode: they would normalise with batch "
                "statistics and overwrite the running statistics being matched. Call model.eval() first."
            )
        self._handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, index: int):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if self.first_index is None:
                self.first_index = index
            self.means[index], self.variances[index] = group_mean_var(inputs[0], self.groups)

        return hook

    # -- the matching term -----------------------------------------------------------------------------
    def _stacked_targets(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Running stats of all layers concatenated along channels, plus each channel's layer id (cached)."""
        if self._targets is None or self._targets[0].device != device:
            mean = torch.cat([layer.running_mean.detach().float() for layer in self.layers]).to(device)
            var = torch.cat([layer.running_var.detach().float() for layer in self.layers]).to(device)
            layer_id = torch.cat(
                [torch.full((layer.num_features,), i, dtype=torch.long) for i, layer in enumerate(self.layers)]
            ).to(device)
            self._targets = (mean, var, layer_id)
        return self._targets

    def layer_weights(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """``[L]`` weights: ``first_bn_multiplier`` for the first layer the input met, 1 for the others."""
        weights = torch.ones(len(self.layers), device=device)
        weights[self.first_index or 0] = self.first_bn_multiplier
        return weights

    def per_layer_terms(self) -> torch.Tensor:
        """``[G, L]`` unweighted terms ‖μ_l − μ̂_l‖₂ + ‖σ²_l − σ̂²_l‖₂ of the last forward pass."""
        missing = [i for i, m in enumerate(self.means) if m is None]
        if missing:
            raise BNStatsError(
                f"{len(missing)} BN layer(s) saw no input during the forward pass (e.g. unused branches); "
                "BN matching needs every hooked layer to run."
            )
        target_mean, target_var, layer_id = self._stacked_targets(self.means[0].device)
        mean = torch.cat(self.means, dim=1)  # [G, sum C]
        var = torch.cat(self.variances, dim=1)
        num_layers, groups = len(self.layers), mean.shape[0]
        index = layer_id.expand(groups, -1)
        zeros = mean.new_zeros(groups, num_layers)
        mean_sq = zeros.scatter_add(1, index, (mean - target_mean).square())
        var_sq = zeros.scatter_add(1, index, (var - target_var).square())
        return mean_sq.sqrt() + var_sq.sqrt()

    def bn_loss(self) -> torch.Tensor:
        """``[G]`` weighted BN-matching term Σ_l w_l (‖μ_l − μ̂_l‖₂ + ‖σ²_l − σ̂²_l‖₂) (before ``r_bn``).

        Always float32, also when called inside an autocast region.
        """
        device = self.means[0].device if self.means and self.means[0] is not None else torch.device("cpu")
        with torch.autocast(device_type=device.type, enabled=False):
            terms = self.per_layer_terms()
            return terms @ self.layer_weights(terms.device)

    def clear(self) -> None:
        """Drop the stored statistics (frees the autograd graph they hold)."""
        self.means = [None] * len(self.layers)
        self.variances = [None] * len(self.layers)


def bn_layer_stats(model: nn.Module) -> list[dict]:
    """Per BN layer (in module order): name, channel count and the across-channel mean/std of its buffers."""
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            rm, rv = module.running_mean.detach().double(), module.running_var.detach().double()
            rows.append(
                {
                    "layer": name,
                    "channels": int(rm.numel()),
                    "mean_of_running_mean": float(rm.mean()),
                    "std_of_running_mean": float(rm.std(unbiased=False)),
                    "mean_of_running_var": float(rv.mean()),
                    "std_of_running_var": float(rv.std(unbiased=False)),
                }
            )
    return rows


def summarize_bn_stats(rows: list[dict]) -> dict:
    """Averages over layers of each statistic: one number per statistic to compare models at a glance."""
    return {k: float(torch.tensor([r[k] for r in rows], dtype=torch.float64).mean()) for k in STATS} if rows else {}


# --------------------------------------------------------------------------------------------------------
# The recovery objective
# --------------------------------------------------------------------------------------------------------


def model_logits(output: Any) -> torch.Tensor:
    """Plain tensors pass through; transformers ``ModelOutput``s give their ``logits``."""
    return output.logits if hasattr(output, "logits") else output


def recovery_objective(
    logits: torch.Tensor, labels: torch.Tensor, bn: torch.Tensor, groups: int, r_bn: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Σ_g (ce_g + r_bn·bn_g), ce [G], bn [G])`` with ce_g the mean CE over group g's batch, in fp32."""
    ce = F.cross_entropy(logits.float(), labels, reduction="none").view(groups, -1).mean(dim=1)
    return (ce + r_bn * bn).sum(), ce, bn


def grouped_recovery_loss(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    groups: int,
    r_bn: float,
    first_bn_multiplier: float = 10.0,
    precision: Precision | None = None,
    recorder: BNStatsRecorder | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The SC-DD loss of ``groups`` independent batches stacked in ``images`` [G*B, C, H, W].

    Returns ``(loss, ce [G], bn [G])`` where ``loss`` is the sum of the groups' losses, so the gradient with
    respect to each group's images equals the gradient of that group's loss computed on its own. The forward
    pass runs under ``precision``'s autocast; BN statistics and the loss are float32. ``recorder`` is an
    open :class:`BNStatsRecorder` on ``model`` with these ``groups`` and ``first_bn_multiplier`` (synthesis
    keeps one open across its steps); without one, one is opened for this call.
    """
    if recorder is None:
        with BNStatsRecorder(model, groups=groups, first_bn_multiplier=first_bn_multiplier) as recorder:
            return grouped_recovery_loss(
                model, images, labels, groups=groups, r_bn=r_bn, first_bn_multiplier=first_bn_multiplier,
                precision=precision, recorder=recorder,
            )
    if (recorder.groups, recorder.first_bn_multiplier) != (groups, float(first_bn_multiplier)):
        raise BNStatsError(
            f"the recorder was opened for {recorder.groups} group(s) with first_bn_multiplier "
            f"{recorder.first_bn_multiplier}, not {groups} with {first_bn_multiplier}"
        )
    with autocast_of(precision):
        logits = model_logits(model(images))
    return recovery_objective(logits, labels, recorder.bn_loss(), groups, r_bn)


def recovery_loss(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    r_bn: float,
    first_bn_multiplier: float = 10.0,
    precision: Precision | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SC-DD's recovery loss of one batch: ``(loss, ce, bn)`` scalars (:func:`grouped_recovery_loss`, G = 1).

    ``loss = ce + r_bn * bn`` with ``ce`` the mean cross-entropy against the hard ``labels`` and ``bn`` the
    weighted sum over every BatchNorm2d of ‖μ − running_mean‖₂ + ‖σ² − running_var‖₂ (biased batch statistics
    of the layer's input over N, H, W, in float32; the first BN layer weighted by ``first_bn_multiplier``).
    ``model`` must be in eval mode (its BN layers normalise with the running statistics being matched).
    """
    loss, ce, bn = grouped_recovery_loss(
        model, images, labels, groups=1, r_bn=r_bn, first_bn_multiplier=first_bn_multiplier, precision=precision
    )
    return loss, ce[0], bn[0]
