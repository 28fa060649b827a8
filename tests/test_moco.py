"""MoCo v2's parts: split BatchNorm equals plain BN per group, shuffled keys, the probe's folded standardisation."""

from __future__ import annotations

import copy

import torch
from torch import nn

from hf_scdd.models import ResNet
from hf_scdd.models.moco import (
    ProjectionEncoder,
    SplitBatchNorm2d,
    inverse_permutation,
    shuffled_keys,
    use_split_batchnorm,
)
from hf_scdd.training.linear_probe import fold_standardization


def test_split_batchnorm_equals_plain_bn_per_group():
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(3)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5), plain.bias.uniform_(-1, 1)
        plain.running_mean.uniform_(-1, 1), plain.running_var.uniform_(0.5, 2)
    split = SplitBatchNorm2d(3, num_splits=4)
    split.load_state_dict(plain.state_dict())
    x = torch.randn(16, 3, 5, 5) * 3 + 1
    out = split.train()(x)
    groups = [copy.deepcopy(plain).train() for _ in range(4)]
    expected = torch.empty_like(x)
    for s, bn in enumerate(groups):
        expected[s::4] = bn(x[s::4])  # sample n is in group n % 4
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(split.running_mean, torch.stack([g.running_mean for g in groups]).mean(0))
    torch.testing.assert_close(split.running_var, torch.stack([g.running_var for g in groups]).mean(0))
    assert int(split.num_batches_tracked) == 1
    split.eval()
    plain.load_state_dict(split.state_dict())
    torch.testing.assert_close(split(x), plain.eval()(x))  # eval mode: plain BN with running stats


def test_shuffled_keys_equal_per_split_computation():
    """Keys computed with shuffle + split BN == encoding each BN group of the permuted batch on its own."""
    from accelerate import Accelerator

    torch.manual_seed(0)
    backbone = ResNet("resnet10", num_classes=0, in_channels=1, width=4, image_size=16)
    encoder = ProjectionEncoder(use_split_batchnorm(backbone, 4), dim=8).train()
    reference = use_split_batchnorm(copy.deepcopy(encoder), 1).train()
    views = torch.randn(16, 1, 16, 16)
    keys = shuffled_keys(Accelerator(cpu=True), encoder, views, torch.Generator().manual_seed(3))

    perm = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    permuted = views[perm]
    expected = torch.empty(16, 8)
    with torch.no_grad():
        for s in range(4):
            expected[s::4] = reference(permuted[s::4])
    expected = expected[inverse_permutation(perm)]
    torch.testing.assert_close(keys, expected, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # and the shuffle matters: unshuffled split groups give other keys
        unshuffled = encoder(views)
    assert not torch.allclose(keys, unshuffled, atol=1e-4)


def test_fold_standardization_is_exact():
    head = nn.Linear(6, 3)
    mean, std = torch.randn(6), torch.rand(6) + 0.5
    x = torch.randn(10, 6)
    weight, bias = fold_standardization(head, mean, std)
    torch.testing.assert_close(x @ weight.T + bias, head((x - mean) / std), rtol=1e-5, atol=1e-5)
