"""BN-statistics hooks: grouping, float32 statistics under autocast, first-layer weighting, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hf_scdd.core.bn_stats import BNStatsError, BNStatsRecorder, bn_layers, group_mean_var


def small_bn_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5),
    )
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 8, 8) * 2 + 1)
    return model.eval()


def test_model_without_batchnorm_is_refused():
    with pytest.raises(BNStatsError, match="no nn.BatchNorm2d"):
        BNStatsRecorder(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))


def test_training_mode_is_refused():
    model = small_bn_model().train()
    with pytest.raises(BNStatsError, match="model.eval"), BNStatsRecorder(model):
        pass


def test_group_statistics_equal_per_slice_statistics():
    x = torch.randn(3 * 4, 5, 6, 7)
    mean, var = group_mean_var(x, groups=3)
    assert mean.shape == var.shape == (3, 5)
    for g in range(3):
        part = x[4 * g : 4 * (g + 1)]
        torch.testing.assert_close(mean[g], part.mean(dim=(0, 2, 3)))
        torch.testing.assert_close(var[g], part.transpose(0, 1).reshape(5, -1).var(dim=1, unbiased=False))
    with pytest.raises(BNStatsError, match="equal groups"):
        group_mean_var(torch.randn(5, 2, 3, 3), groups=2)


def test_per_layer_terms_are_unsquared_norms():
    model = small_bn_model()
    x = torch.randn(4, 3, 8, 8)
    with BNStatsRecorder(model, first_bn_multiplier=10.0) as rec:
        model(x)
        terms = rec.per_layer_terms()[0]
        total = rec.bn_loss()[0]
    layers = bn_layers(model)
    inputs = [model[0](x)]
    inputs.append(model[3](model[2](model[1](inputs[0]))))
    expected = torch.stack([
        (a.mean(dim=(0, 2, 3)) - bn.running_mean).norm()
        + (a.transpose(0, 1).reshape(a.shape[1], -1).var(1, unbiased=False) - bn.running_var).norm()
        for a, bn in zip(inputs, layers)
    ])
    torch.testing.assert_close(terms, expected)
    torch.testing.assert_close(total, 10.0 * expected[0] + expected[1])


def test_statistics_are_float32_under_bf16_autocast():
    model = small_bn_model()
    seen = []
    handle = model[1].register_forward_hook(lambda m, i, o: seen.append(i[0].dtype))
    with BNStatsRecorder(model) as rec, torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(2, 3, 8, 8))
        loss = rec.bn_loss()
    handle.remove()
    assert seen == [torch.bfloat16]  # the BN input really was bf16
    assert all(m.dtype == torch.float32 for m in rec.means)
    assert all(v.dtype == torch.float32 for v in rec.variances)
    assert loss.dtype == torch.float32


class LateFirst(nn.Module):
    """``modules()`` lists ``late`` first, but the input meets ``early`` first."""

    def __init__(self):
        super().__init__()
        self.late = nn.BatchNorm2d(2)
        self.early = nn.BatchNorm2d(2)

    def forward(self, x):
        return self.late(self.early(x))


def test_first_layer_weight_follows_the_input():
    model = LateFirst().eval()
    with BNStatsRecorder(model, first_bn_multiplier=7.0) as rec:
        model(torch.randn(2, 2, 3, 3))
    assert rec.layers == [model.late, model.early]
    assert rec.first_index == 1
    assert rec.layer_weights().tolist() == [1.0, 7.0]
    assert not model.late._forward_hooks and not model.early._forward_hooks  # hooks removed on exit
