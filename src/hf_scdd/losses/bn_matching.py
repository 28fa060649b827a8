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

**Targets** (:class:`BNTargets`). SC-DD matches the running statistics (``BNTargets.running``). Two options go
beyond it: statistics measured on clean training images (:func:`measure_bn_targets`; a self-supervised model's
running statistics describe its heavily augmented views, not the data, and matching them turns black
Fashion-MNIST backgrounds grey), and a class-conditional term (EDC/LPLD style) that asks each image's own
spatial statistics to look like those of a typical image of its class, blended with the global term:

    bn = Σ_l w_l [(1 − α) (‖μ_l(x) − μ̂_l‖₂ + ‖σ²_l(x) − σ̂²_l‖₂) + α · mean_b (‖μ_l(x_b) − μ̂_l,y_b‖₂ + ‖σ²_l(x_b) − σ̂²_l,y_b‖₂)]

where μ̂_l,c / σ̂²_l,c are class c's average per-image spatial mean / variance.

The recovery objective adds the hard-label cross-entropy (SC-DD's loss):

    L = CE(f(aug(x)), y) + r_bn · bn

:func:`grouped_recovery_loss` is that loss, the one function :func:`hf_scdd.synthesis.engine.synthesize_group`
calls at every step and the tests check against a hand-written computation; :func:`recovery_loss` is its
one-batch form. To change the recovery loss, change :func:`recovery_objective`.

The module also summarises running statistics per layer (:func:`bn_layer_stats`, for ``hf-scdd inspect-bn``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ..errors import BNStatsError
from ..models.adapters import model_logits
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


def member_of_layers(model: nn.Module, layers: list[nn.BatchNorm2d]) -> list[int]:
    """For each of ``layers``, the index of the member of ``model.members`` holding it (all 0 for a model
    without members), so each observer of an ensemble has its own first layer."""
    owner = {id(layer): i for i, member in enumerate(getattr(model, "members", None) or [model])
             for layer in member.modules()}
    return [owner.get(id(layer), 0) for layer in layers]


class _GroupMeanVar(torch.autograd.Function):
    """Per-group, per-channel mean and biased variance in float32, two-pass, with a hand-written backward.

    Why not ``torch.var_mean``: on CPU its Welford reduction over (B, H, W) of a ``[G, B, C, HW]`` view, plus
    autograd's backward through the float32 copy, cost ~0.5 s of a ~1.2 s bf16 ResNet-18 recovery step (batch
    100, 32×32, one thread: RESULTS.md, "Where a bf16 recovery step goes"). Here the forward is a mean and a
    mean of squared deviations (the two-pass algorithm: as stable as Welford, within fp32 rounding of it), and
    the backward is the closed form ∂L/∂x = ∂L/∂μ / n + ∂L/∂σ² · 2 (x − μ) / n in one fused op: 2–3.7× less
    time for the same quantities. It saves the input as it came (bf16 stays bf16) and the mean, not a float32
    copy, and recomputes x − μ in the backward. Inputs other than float64 are read in float32.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
        mean, var = _two_pass(_grouped_float(x, groups))
        ctx.save_for_backward(x, mean)
        ctx.groups = groups
        return mean.flatten(1), var

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_mean: torch.Tensor, grad_var: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, mean = ctx.saved_tensors
        deviation = _grouped_float(x, ctx.groups) - mean
        groups, per_group, c, pixels = deviation.shape
        count = per_group * pixels
        grad_x = torch.addcmul(
            (grad_mean / count).reshape(groups, 1, c, 1), deviation, (grad_var * (2.0 / count)).reshape(groups, 1, c, 1)
        )
        return grad_x.reshape(x.shape).to(x.dtype), None


def _grouped_float(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``x`` [G*B, C, H, W] as a float32 (float64 stays) ``[G, B, C, HW]`` view."""
    n, c = x.shape[0], x.shape[1]
    return (x if x.dtype == torch.float64 else x.float()).reshape(groups, n // groups, c, -1)


def _two_pass(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (kept ``[G, 1, C, 1]``) and biased variance ``[G, C]`` of a ``[G, B, C, HW]`` tensor over (B, HW)."""
    mean = x.mean(dim=(1, 3), keepdim=True)
    return mean, (x - mean).square().mean(dim=(1, 3))


def group_mean_var(x: torch.Tensor, groups: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group, per-channel mean and biased variance of ``x`` [G*B, C, H, W] over (B, H, W), in float32.

    Returns two ``[G, C]`` tensors, always summed in float32 (float64 inputs stay float64), whatever autocast
    says, through :class:`_GroupMeanVar`'s two-pass forward and closed-form backward.
    """
    n = x.shape[0]
    if n % groups:
        raise BNStatsError(f"batch of {n} cannot be split into {groups} equal groups")
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _GroupMeanVar.apply(x, groups)


@dataclass
class BNTargets:
    """The statistics BN matching compares a batch with, one entry per BN layer in module order.

    ``mean``/``var``: ``[C]`` global targets (running statistics, or measured on clean images);
    ``class_mean``/``class_var``: ``[K, C]`` per-class averages of per-image spatial statistics, or None.
    """

    mean: list[torch.Tensor]
    var: list[torch.Tensor]
    class_mean: list[torch.Tensor] | None = None
    class_var: list[torch.Tensor] | None = None
    source: str = "running"

    @classmethod
    def running(cls, layers: list[nn.BatchNorm2d]) -> BNTargets:
        """SC-DD's targets: each layer's running mean and variance."""
        return cls([l.running_mean.detach().float() for l in layers], [l.running_var.detach().float() for l in layers])

    @property
    def has_classes(self) -> bool:
        return self.class_mean is not None

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat name → tensor mapping for safetensors (``mean.3``, ``class_var.3``, ...)."""
        out = {}
        for name in ("mean", "var", "class_mean", "class_var"):
            for i, t in enumerate(getattr(self, name) or []):
                out[f"{name}.{i}"] = t.contiguous()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], source: str) -> BNTargets:
        def layers(name: str) -> list[torch.Tensor] | None:
            keys = sorted((k for k in tensors if k.rsplit(".", 1)[0] == name), key=lambda k: int(k.rsplit(".", 1)[1]))
            return [tensors[k] for k in keys] or None

        return cls(layers("mean"), layers("var"), layers("class_mean"), layers("class_var"), source)


def image_and_group_mean_var(x: torch.Tensor, groups: int = 1) -> tuple[torch.Tensor, ...]:
    """Per-group statistics (as :func:`group_mean_var`, ``[G, C]``) and per-image spatial mean and biased
    variance (``[G*B, C]``), all float32; the group's are derived exactly from the images' (law of total variance)."""
    n, c = x.shape[0], x.shape[1]
    if n % groups:
        raise BNStatsError(f"batch of {n} cannot be split into {groups} equal groups")
    with torch.autocast(device_type=x.device.type, enabled=False):
        var, mean = torch.var_mean(x.float().flatten(2), dim=2, correction=0)  # [n, C]
        group_mean = mean.view(groups, -1, c).mean(dim=1)
        group_var = (var + mean.square()).view(groups, -1, c).mean(dim=1) - group_mean.square()
    return group_mean, group_var, mean, var


class _MomentAccumulator:
    """Hooks every BN layer and sums, over everything it sees, the float64 moments of the layer's input: the
    global mean/variance over (N, H, W) and, per class, the sum of per-image spatial means and variances."""

    def __init__(self, layers: list[nn.BatchNorm2d], num_classes: int):
        self.layers, self.num_classes = layers, num_classes
        self.labels: torch.Tensor | None = None
        self.sums: list[dict[str, torch.Tensor]] = [{} for _ in layers]
        self.pixels = [0] * len(layers)
        self.class_counts = torch.zeros(num_classes, dtype=torch.float64)

    def hook(self, index: int):
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = inputs[0].detach().double().flatten(2)  # [n, C, HW]
            var, mean = torch.var_mean(x, dim=2, correction=0)  # per image [n, C]
            sums, labels = self.sums[index], self.labels.to(x.device)
            moments = {"x": x.sum(dim=(0, 2)), "x2": x.square().sum(dim=(0, 2))}
            per_class = {"class_mean": mean, "class_var": var}
            for key, value in moments.items():
                sums[key] = sums.get(key, 0) + value.cpu()
            for key, value in per_class.items():
                total = sums.get(key, torch.zeros(self.num_classes, x.shape[1], dtype=torch.float64))
                sums[key] = total.index_add_(0, labels.cpu(), value.cpu())
            self.pixels[index] += x.shape[0] * x.shape[2]

        return record

    def targets(self) -> BNTargets:
        counts = self.class_counts.clamp_min(1)[:, None]
        means = [(s["x"] / n).float() for s, n in zip(self.sums, self.pixels)]
        variances = [(s["x2"] / n - (s["x"] / n).square()).clamp_min(0).float() for s, n in zip(self.sums, self.pixels)]
        class_means = [(s["class_mean"] / counts).float() for s in self.sums]
        class_vars = [(s["class_var"] / counts).float() for s in self.sums]
        return BNTargets(means, variances, class_means, class_vars, source="clean")


@torch.no_grad()
def measure_bn_targets(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    precision: Precision | None = None,
) -> BNTargets:
    """BN targets measured on clean images: ``batches`` yields (normalised images, labels).

    The model stays in eval mode, so every layer sees the inputs recovery will see; the statistics are those of
    the data itself, not of the augmented views the running statistics were accumulated on.
    """
    layers = bn_layers(model)
    model.eval()
    moments = _MomentAccumulator(layers, num_classes)
    handles = [layer.register_forward_hook(moments.hook(i)) for i, layer in enumerate(layers)]
    try:
        for images, labels in batches:
            moments.labels = labels
            moments.class_counts += torch.bincount(labels.cpu(), minlength=num_classes).double()
            with autocast_of(precision):
                model(images)
    finally:
        for handle in handles:
            handle.remove()
    return moments.targets()


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
        first_indices: the first layer the input met in each member of a model with ``members`` (an
            :class:`~hf_scdd.models.ensemble.ObserverEnsemble`; one entry for a plain model): every member's
            first layer gets the multiplier, as it would when recovering from that member alone.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        groups: int = 1,
        first_bn_multiplier: float = 10.0,
        targets: BNTargets | None = None,
        class_weight: float = 0.0,
    ):
        self.model = model
        self.layers = bn_layers(model)
        self.groups = int(groups)
        self.first_bn_multiplier = float(first_bn_multiplier)
        self.targets = targets if targets is not None else BNTargets.running(self.layers)
        self.class_weight = float(class_weight)
        if len(self.targets.mean) != len(self.layers):
            raise BNStatsError(f"BN targets for {len(self.targets.mean)} layers, but the model has {len(self.layers)}")
        if self.class_weight > 0 and not self.targets.has_classes:
            raise BNStatsError("a class-conditional BN term needs class targets (measure_bn_targets on clean images)")
        self.means: list[torch.Tensor | None] = [None] * len(self.layers)
        self.variances: list[torch.Tensor | None] = [None] * len(self.layers)
        self.image_means: list[torch.Tensor | None] = [None] * len(self.layers)
        self.image_variances: list[torch.Tensor | None] = [None] * len(self.layers)
        self.first_indices: dict[int, int] = {}
        self._member_of = member_of_layers(model, self.layers)
        self._handles: list = []
        self._targets: tuple[torch.Tensor, ...] | None = None

    @property
    def first_index(self) -> int | None:
        """The first layer the input met (the first member's, for an ensemble); None before a forward pass."""
        return next(iter(self.first_indices.values()), None)

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
            self.first_indices.setdefault(self._member_of[index], index)
            if self.class_weight > 0:
                means, variances, image_means, image_variances = image_and_group_mean_var(inputs[0], self.groups)
                self.image_means[index], self.image_variances[index] = image_means, image_variances
            else:
                means, variances = group_mean_var(inputs[0], self.groups)
            self.means[index], self.variances[index] = means, variances

        return hook

    # -- the matching term -----------------------------------------------------------------------------
    def _stacked_targets(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """The targets of all layers concatenated along channels (global [ΣC], per class [K, ΣC] when there
        are class targets) and each channel's layer id, moved to ``device`` once."""
        if self._targets is None or self._targets[0].device != device:
            t = self.targets
            layer_id = torch.cat(
                [torch.full((layer.num_features,), i, dtype=torch.long) for i, layer in enumerate(self.layers)]
            )
            stacked = [torch.cat(t.mean), torch.cat(t.var), layer_id]
            if t.has_classes:
                stacked += [torch.cat(t.class_mean, dim=1), torch.cat(t.class_var, dim=1)]
            self._targets = tuple(v.to(device) for v in stacked)
        return self._targets

    def _norms_per_layer(self, mean_gap: torch.Tensor, var_gap: torch.Tensor, layer_id: torch.Tensor) -> torch.Tensor:
        """``[rows, L]`` ‖mean gap‖₂ + ‖var gap‖₂ per layer, for ``[rows, ΣC]`` channel-wise gaps."""
        index = layer_id.expand(mean_gap.shape[0], -1)
        zeros = mean_gap.new_zeros(mean_gap.shape[0], len(self.layers))
        return zeros.scatter_add(1, index, mean_gap.square()).sqrt() + zeros.scatter_add(1, index, var_gap.square()).sqrt()

    def layer_weights(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """``[L]`` weights: ``first_bn_multiplier`` for the first layer the input met, 1 for the others."""
        weights = torch.ones(len(self.layers), device=device)
        weights[list(self.first_indices.values()) or [0]] = self.first_bn_multiplier
        return weights

    def per_layer_terms(self, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``[G, L]`` unweighted terms of the last forward pass: ‖μ_l − μ̂_l‖₂ + ‖σ²_l − σ̂²_l‖₂, blended with the
        class-conditional term (weight ``class_weight``, which needs the batch's ``labels``)."""
        missing = [i for i, m in enumerate(self.means) if m is None]
        if missing:
            raise BNStatsError(
                f"{len(missing)} BN layer(s) saw no input during the forward pass (e.g. unused branches); "
                "BN matching needs every hooked layer to run."
            )
        targets = self._stacked_targets(self.means[0].device)
        target_mean, target_var, layer_id = targets[:3]
        mean = torch.cat(self.means, dim=1)  # [G, sum C]
        var = torch.cat(self.variances, dim=1)
        terms = self._norms_per_layer(mean - target_mean, var - target_var, layer_id)
        if self.class_weight <= 0:
            return terms
        if labels is None:
            raise BNStatsError("the class-conditional BN term needs the batch's labels")
        class_mean, class_var = targets[3][labels], targets[4][labels]  # [G*B, sum C]
        image_mean, image_var = torch.cat(self.image_means, dim=1), torch.cat(self.image_variances, dim=1)
        per_image = self._norms_per_layer(image_mean - class_mean, image_var - class_var, layer_id)
        per_group = per_image.view(self.groups, -1, len(self.layers)).mean(dim=1)
        return (1.0 - self.class_weight) * terms + self.class_weight * per_group

    def bn_loss(self, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``[G]`` weighted BN-matching term Σ_l w_l (‖μ_l − μ̂_l‖₂ + ‖σ²_l − σ̂²_l‖₂) (before ``r_bn``), with
        the class-conditional blend when ``class_weight > 0``.

        Always float32, also when called inside an autocast region.
        """
        device = self.means[0].device if self.means and self.means[0] is not None else torch.device("cpu")
        with torch.autocast(device_type=device.type, enabled=False):
            terms = self.per_layer_terms(labels)
            return terms @ self.layer_weights(terms.device)

    def clear(self) -> None:
        """Drop the stored statistics (frees the autograd graph they hold)."""
        self.means = [None] * len(self.layers)
        self.variances = [None] * len(self.layers)
        self.image_means = [None] * len(self.layers)
        self.image_variances = [None] * len(self.layers)


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
    targets: BNTargets | None = None,
    class_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The SC-DD loss of ``groups`` independent batches stacked in ``images`` [G*B, C, H, W].

    Returns ``(loss, ce [G], bn [G])`` where ``loss`` is the sum of the groups' losses, so the gradient with
    respect to each group's images equals the gradient of that group's loss computed on its own. The forward
    pass runs under ``precision``'s autocast; BN statistics and the loss are float32. ``recorder`` is an
    open :class:`BNStatsRecorder` on ``model`` with these ``groups`` and ``first_bn_multiplier`` (synthesis
    keeps one open across its steps); without one, one is opened for this call with ``targets`` (default: the
    running statistics) and ``class_weight``.
    """
    if recorder is None:
        with BNStatsRecorder(model, groups=groups, first_bn_multiplier=first_bn_multiplier, targets=targets,
                             class_weight=class_weight) as recorder:
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
    return recovery_objective(logits, labels, recorder.bn_loss(labels), groups, r_bn)


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
