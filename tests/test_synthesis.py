"""Synthesis: units and their seeds, grouped = one-by-one, and each step descends THE recovery objective."""

from __future__ import annotations

import pytest
import torch

from helpers import bn_backbone
from hf_scdd.losses.bn_matching import grouped_recovery_loss
from hf_scdd.synthesis.engine import SynthesisSpec, synthesize_group
from hf_scdd.synthesis.units import make_groups, plan_units

SIZE = 16


def spec(**overrides) -> SynthesisSpec:
    values = dict(iterations=8, lr=0.25, r_bn=0.01, first_bn_multiplier=10.0, jitter=4, random_crop=False,
                  crop_scale_min=0.08, channels=1, image_size=SIZE, mean=[0.4], std=[0.3])
    return SynthesisSpec(**{**values, **overrides})


@pytest.mark.parametrize("random_crop", [False, True])
def test_grouped_synthesis_equals_one_by_one(random_crop):
    model = bn_backbone().requires_grad_(False)
    spec_ = spec(random_crop=random_crop)
    units = plan_units(4, 3, 2, seed=5)[:3]
    together, ce, bn = synthesize_group(model, units, spec_)
    for g, unit in enumerate(units):
        alone, ce_g, bn_g = synthesize_group(model, [unit], spec_)
        torch.testing.assert_close(together[g], alone[0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ce[g], ce_g[0], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(together[0], together[1])  # units differ: seeds are per unit
    low, high = (0 - 0.4) / 0.3, (1 - 0.4) / 0.3
    assert together.min() >= low - 1e-6 and together.max() <= high + 1e-6  # clamped to the pixel range


def test_units_are_seeded_by_ipc_and_chunk_only():
    a, b = plan_units(10, 3, 4, seed=0), plan_units(10, 3, 4, seed=0)
    assert a == b and len(a) == 9 and [len(u.classes) for u in a[:3]] == [4, 4, 2]
    assert len({u.seed for u in a}) == 9
    assert plan_units(10, 3, 4, seed=1)[0].seed != a[0].seed


def test_one_step_descends_the_recovery_objective():
    """The first Adam step of synthesis moves each pixel by -lr·sign(∂L/∂x) of grouped_recovery_loss
    (Adam's first update is g / (|g| + eps)), so synthesis optimises exactly that function."""
    model = bn_backbone().requires_grad_(False)
    units = plan_units(4, 1, 2, seed=5)
    one = spec(iterations=1, jitter=0, lr=1e-3)  # no roll; a step small enough to stay inside the clamp
    x1, _, _ = synthesize_group(model, units, one)
    generator = [torch.Generator().manual_seed(u.seed) for u in units]
    x0 = torch.stack([torch.randn(2, 1, SIZE, SIZE, generator=g) for g in generator]).requires_grad_(True)
    labels = torch.tensor([c for u in units for c in u.classes])
    loss, _, _ = grouped_recovery_loss(model, x0.flatten(0, 1), labels, groups=2, r_bn=one.r_bn)
    (grad,) = torch.autograd.grad(loss, x0)
    x0 = x0.detach()
    low, high = (0 - 0.4) / 0.3, (1 - 0.4) / 0.3
    checked = (grad.abs() > 1e-4) & (x0 > low + 2e-3) & (x0 < high - 2e-3)  # |g| >> eps, away from the clamp
    assert checked.float().mean() > 0.5
    torch.testing.assert_close((x1 - x0)[checked], -1e-3 * grad.sign()[checked], rtol=1e-3, atol=2e-7)


def test_groups_are_a_fixed_partition_by_batch_size():
    units = plan_units(10, 2, 4, seed=0)  # chunks of 4, 4, 2 classes
    groups = make_groups(units, 3)
    assert {u for g in groups for u in g} == set(units) and sum(map(len, groups)) == len(units)
    assert all(len({len(u.classes) for u in g}) == 1 for g in groups)
    assert [len(g) for g in groups] == [3, 1, 2]
    assert make_groups(units, 3) == groups
