"""BN matching: the statistics hooks (grouping, float32 under autocast, first-layer weighting, clear errors)
and THE recovery objective that synthesis calls, against a hand-written computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hf_scdd.errors import BNStatsError
from hf_scdd.losses.bn_matching import (
    BNStatsRecorder,
    bn_layers,
    group_mean_var,
    grouped_recovery_loss,
    recovery_loss,
)
from hf_scdd.training.accelerator import Precision


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


def test_group_statistics_gradient_is_the_exact_one():
    """The closed-form backward of the fused statistics against finite differences (float64) and against
    autograd through torch.var_mean, for float32 and bf16 inputs (the bf16 gradient comes back in bf16)."""
    x64 = torch.randn(6, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: group_mean_var(t, groups=2), (x64,))
    weights = torch.randn(2, 3), torch.randn(2, 3)
    for dtype in (torch.float32, torch.bfloat16):
        x = (torch.randn(8, 3, 5, 5) * 2 + 1).to(dtype).requires_grad_()
        reference = x.detach().float().requires_grad_()
        mean, var = group_mean_var(x, groups=2)
        ref_var, ref_mean = torch.var_mean(reference.reshape(2, 4, 3, -1), dim=(1, 3), correction=0)
        torch.testing.assert_close((mean, var), (ref_mean, ref_var))
        ((mean * weights[0]).sum() + (var.sqrt() * weights[1]).sum()).backward()
        ((ref_mean * weights[0]).sum() + (ref_var.sqrt() * weights[1]).sum()).backward()
        assert x.grad.dtype == dtype
        torch.testing.assert_close(x.grad.float(), reference.grad.to(dtype).float())


def test_group_variance_is_stable_for_a_large_mean():
    """Two passes keep a small variance under a large mean, where E[x²] − E[x]² in float32 would cancel."""
    x = 1000.0 + 0.01 * torch.randn(4, 2, 8, 8, dtype=torch.float64)
    _, var = group_mean_var(x.float())
    expected = x.transpose(0, 1).reshape(2, -1).var(dim=1, unbiased=False)
    torch.testing.assert_close(var[0].double(), expected, rtol=1e-3, atol=0)


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


# --------------------------------------------------------------------------------------------------------
# The recovery objective
# --------------------------------------------------------------------------------------------------------


class ConvNet(nn.Module):
    """A non-ResNet BN model whose BN inputs the direct computation below reproduces by hand."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.c2, self.b2 = nn.Conv2d(6, 5, 3, stride=2, padding=1), nn.BatchNorm2d(5)
        self.c3, self.b3 = nn.Conv2d(5, 4, 1), nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 7)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        x = F.relu(self.b3(self.c3(x)))
        return self.head(x.mean(dim=(2, 3)))


def conv_net() -> ConvNet:
    torch.manual_seed(1)
    model = ConvNet()
    with torch.no_grad():
        for bn in (model.b1, model.b2, model.b3):
            bn.running_mean.uniform_(-2, 2)
            bn.running_var.uniform_(0.5, 3)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return model.eval()


def direct_loss(model: ConvNet, x, y, r_bn, first):
    """SC-DD's loss written out layer by layer, without hooks."""
    def stats(a):
        return a.mean(dim=(0, 2, 3)), a.permute(1, 0, 2, 3).reshape(a.shape[1], -1).var(1, unbiased=False)

    def term(a, bn):
        mean, var = stats(a)
        return torch.norm(mean - bn.running_mean, 2) + torch.norm(var - bn.running_var, 2)

    a1 = model.c1(x)
    a2 = model.c2(F.relu(model.b1(a1)))
    a3 = model.c3(F.relu(model.b2(a2)))
    logits = model.head(F.relu(model.b3(a3)).mean(dim=(2, 3)))
    ce = F.cross_entropy(logits, y)
    bn = first * term(a1, model.b1) + term(a2, model.b2) + term(a3, model.b3)
    return ce + r_bn * bn, ce, bn


def test_recovery_loss_matches_direct_computation():
    model = conv_net()
    x = torch.randn(6, 3, 8, 8, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    loss, ce, bn = recovery_loss(model, x, y, r_bn=0.05, first_bn_multiplier=10.0)
    (grad,) = torch.autograd.grad(loss, x)
    x_ref = x.detach().clone().requires_grad_(True)
    ref_loss, ref_ce, ref_bn = direct_loss(model, x_ref, y, 0.05, 10.0)
    (ref_grad,) = torch.autograd.grad(ref_loss, x_ref)
    for got, want in ((loss, ref_loss), (ce, ref_ce), (bn, ref_bn), (grad, ref_grad)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert bn.item() > 1.0  # the BN term is far from zero: the comparison is not vacuous


def test_grouped_loss_gives_each_group_its_own_gradient():
    model = conv_net()
    x = torch.randn(3, 5, 3, 8, 8, requires_grad=True)
    y = torch.randint(0, 7, (3, 5))
    loss, ce, bn = grouped_recovery_loss(model, x.flatten(0, 1), y.flatten(), groups=3, r_bn=0.1)
    (grad,) = torch.autograd.grad(loss, x)
    for g in range(3):
        xg = x[g].detach().clone().requires_grad_(True)
        loss_g, ce_g, bn_g = recovery_loss(model, xg, y[g], r_bn=0.1)
        (grad_g,) = torch.autograd.grad(loss_g, xg)
        torch.testing.assert_close(grad[g], grad_g, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ce[g], ce_g)
        torch.testing.assert_close(bn[g], bn_g, rtol=1e-5, atol=1e-5)


def test_recovery_loss_refuses_model_without_bn():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(BNStatsError, match="no nn.BatchNorm2d"):
        recovery_loss(model, torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), r_bn=0.01)


def test_bf16_forward_keeps_the_objective_float32_and_close():
    model = conv_net()
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5])
    ref = recovery_loss(model, x, y, r_bn=0.05)
    got = recovery_loss(model, x, y, r_bn=0.05, precision=Precision("bf16", "cpu"))
    for want, have in zip(ref, got):
        assert have.dtype == torch.float32
        torch.testing.assert_close(have, want, rtol=0.05, atol=0.05)
    assert not torch.equal(got[0], ref[0])  # the forward did run in bf16
