"""The linear probe's feature scaling and its calibration (temperature scaling folded into the head)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_scdd.training.linear_probe import calibrate_head, feature_scaling


def test_calibration_shrinks_an_overconfident_head_and_lowers_its_nll():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (600,), generator=generator)
    feats = F.one_hot(labels, 3).float() + 0.8 * torch.randn(600, 3, generator=generator)  # overlapping classes
    weight, bias = 25.0 * torch.eye(3), torch.zeros(3)  # right direction, far too confident
    before = F.cross_entropy(feats @ weight.T + bias, labels)
    new_weight, new_bias, scale = calibrate_head(weight, bias, feats, labels)
    after = F.cross_entropy(feats @ new_weight.T + new_bias, labels)
    assert scale < 0.5 and float(after) < float(before)
    torch.testing.assert_close(new_weight, weight * scale)
    # argmax (so the probe's accuracy) is unchanged by a positive scale
    assert torch.equal((feats @ new_weight.T).argmax(1), (feats @ weight.T).argmax(1))


def test_feature_scalings():
    feats = torch.tensor([[1.0, 100.0], [3.0, 300.0]])
    shift, scale = feature_scaling(feats, "global")
    assert torch.equal(shift, torch.zeros(2)) and torch.allclose(scale, feats.square().mean().sqrt().expand(2))
    shift, scale = feature_scaling(feats, "feature")
    assert torch.allclose(shift, torch.tensor([2.0, 200.0]))
    assert torch.equal(feature_scaling(feats, "none")[1], torch.ones(2))
    with pytest.raises(ValueError, match="standardize"):
        feature_scaling(feats, "magic")
