"""Recovery beyond SC-DD: measured BN targets, the class-conditional term, real starting images and their
selection, the crop curriculum, and the recover stage's method presets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import bn_backbone, write_random_dataset
from hf_scdd.augment.recovery import curriculum_scales, sample_recovery_plan
from hf_scdd.configs import ConfigError, config_from_dict
from hf_scdd.data.tensors import normalize
from hf_scdd.hub import load_distilled
from hf_scdd.losses.bn_matching import BNStatsRecorder, BNTargets, bn_layers, grouped_recovery_loss, measure_bn_targets
from hf_scdd.stages.recover import RecoverConfig, main
from hf_scdd.synthesis.inputs import tile_mosaics
from hf_scdd.synthesis.selection import (
    SELECTIONS, class_margins, herding, kcenter, kmeans_margin, kmeans_medoids, kmeans_strata, kmeans_strata_core,
    greedy_facility_location, kmedoids,
    select_real_images,
)

CLASSES = ["zero", "one", "two", "three"]
SIZE = 16


class TwoBN(nn.Module):
    """conv → BN → conv → BN → pooled linear head: small enough to check statistics by hand."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.b1 = nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.c2, self.b2 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        self.mean, self.std = [0.0], [1.0]

    def forward(self, x):
        x = torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
        return self.fc(x.mean(dim=(2, 3)))


def layer_inputs(model: TwoBN, x: torch.Tensor) -> list[torch.Tensor]:
    first = model.c1(x)
    return [first, model.c2(torch.relu(model.b1(first)))]


def test_measured_targets_are_the_clean_images_statistics():
    model = TwoBN().eval()
    x, y = torch.randn(12, 1, 6, 6), torch.tensor([0, 1] * 6)
    targets = measure_bn_targets(model, [(x[:5], y[:5]), (x[5:], y[5:])], num_classes=2)  # two batches
    with torch.no_grad():
        inputs = layer_inputs(model, x)
    for layer, a in enumerate(inputs):
        var, mean = torch.var_mean(a, dim=(0, 2, 3), correction=0)
        torch.testing.assert_close(targets.mean[layer], mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(targets.var[layer], var, rtol=1e-4, atol=1e-5)
        image_var, image_mean = torch.var_mean(a.flatten(2), dim=2, correction=0)
        for c in (0, 1):
            torch.testing.assert_close(targets.class_mean[layer][c], image_mean[y == c].mean(0), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(targets.class_var[layer][c], image_var[y == c].mean(0), rtol=1e-4, atol=1e-5)
    again = BNTargets.from_tensors(targets.tensors(), "clean")  # the safetensors round trip keeps layer order
    assert all(torch.equal(a, b) for a, b in zip(again.class_var, targets.class_var))


def test_class_conditional_term_matches_a_direct_computation():
    model = TwoBN().eval()
    clean = measure_bn_targets(model, [(torch.randn(20, 1, 6, 6) + 0.5, torch.tensor([0, 1] * 10))], num_classes=2)
    x = torch.randn(2, 4, 1, 6, 6, requires_grad=True)  # two groups of four images
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    alpha, weights = 0.3, torch.tensor([10.0, 1.0])
    loss, ce, bn = grouped_recovery_loss(model, x.flatten(0, 1), y, groups=2, r_bn=0.2, targets=clean,
                                         class_weight=alpha)
    inputs = layer_inputs(model, x.flatten(0, 1))
    for g in range(2):
        rows = slice(4 * g, 4 * g + 4)
        expected = 0.0
        for layer, a in enumerate(inputs):
            part = a[rows]
            var, mean = torch.var_mean(part, dim=(0, 2, 3), correction=0)
            glob = (mean - clean.mean[layer]).norm() + (var - clean.var[layer]).norm()
            image_var, image_mean = torch.var_mean(part.flatten(2), dim=2, correction=0)
            labels = y[rows]
            per_image = ((image_mean - clean.class_mean[layer][labels]).norm(dim=1)
                         + (image_var - clean.class_var[layer][labels]).norm(dim=1)).mean()
            expected = expected + weights[layer] * ((1 - alpha) * glob + alpha * per_image)
        torch.testing.assert_close(bn[g], expected, rtol=1e-4, atol=1e-4)
    loss.backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_running_targets_are_the_default_and_a_class_term_needs_class_targets():
    model = TwoBN().eval()
    x, y = torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 0, 1])
    default = grouped_recovery_loss(model, x, y, groups=1, r_bn=0.1)
    explicit = grouped_recovery_loss(model, x, y, groups=1, r_bn=0.1, targets=BNTargets.running(bn_layers(model)))
    assert torch.equal(default[0], explicit[0])
    with pytest.raises(Exception, match="class targets"):
        BNStatsRecorder(model, targets=BNTargets.running(bn_layers(model)), class_weight=0.5)


def test_kmeans_medoids_cover_the_modes_and_herding_tracks_the_mean():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    points = torch.cat([c + 0.05 * torch.randn(30, 3, generator=generator) for c in centres])
    picks = kmeans_medoids(points, 3, torch.Generator().manual_seed(1))
    assert sorted(int(i) // 30 for i in picks) == [0, 1, 2]  # one medoid in each cluster
    strata = kmeans_strata(points, 3, torch.Generator().manual_seed(1))
    assert sorted(int(i) // 30 for i in strata) == [0, 1, 2]  # one random member of each cluster
    assert not torch.equal(strata.sort().values, picks.sort().values)
    core = kmeans_strata_core(points, 3, torch.Generator().manual_seed(1))
    assert sorted(int(i) // 30 for i in core) == [0, 1, 2]
    x = F.normalize(points, dim=1)
    for i in core.tolist():  # each pick is in the inner half of its cluster (cosine to the cluster's mean)
        members = x[(i // 30) * 30: (i // 30 + 1) * 30]
        similarity = members @ F.normalize(members.mean(0), dim=0)
        assert float(x[i] @ F.normalize(members.mean(0), dim=0)) >= float(similarity.median()) - 1e-6
    again = kmeans_medoids(points, 3, torch.Generator().manual_seed(1))
    assert torch.equal(picks, again)
    herded = herding(points, 3)
    assert len(set(herded.tolist())) == 3
    chosen_mean = F.normalize(points[herded], dim=1).mean(0)
    assert (chosen_mean - F.normalize(points, dim=1).mean(0)).norm() < 0.2


def test_kmeans_margin_takes_each_modes_most_ambiguous_inner_member():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    points = torch.cat([c + 0.05 * torch.randn(30, 3, generator=generator) for c in centres])
    x = F.normalize(points, dim=1)
    margins = torch.rand(90, generator=generator) + 0.5
    central, farthest = [], []
    for start in (0, 30, 60):
        closeness = x[start : start + 30] @ F.normalize(x[start : start + 30].mean(0), dim=0)
        central.append(start + int(closeness.argmax()))
        farthest.append(start + int(closeness.argmin()))
    margins[central] = 0.0  # each mode's most central point is ambiguous...
    margins[farthest] = -1.0  # ...its farthest one more so (label noise at the edge): that one is not taken
    picks = kmeans_margin(points, margins, 3, torch.Generator().manual_seed(1))
    assert sorted(picks.tolist()) == central
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 0.0]])
    p = logits.softmax(1)
    assert torch.allclose(class_margins(logits, 0), torch.stack([p[0, 0] - p[0, 1], p[1, 0] - p[1, 1]]))


def test_kcenter_spreads_over_the_modes_and_skips_the_outliers():
    generator = torch.Generator().manual_seed(0)
    bulk = torch.tensor([1.0, 0, 0]) + 0.05 * torch.randn(60, 3, generator=generator)  # the typical style
    modes = [torch.tensor(c) + 0.05 * torch.randn(10, 3, generator=generator)
             for c in ([1.0, 1.0, 0], [1.0, 0, 1.0])]  # two rarer styles
    outliers = torch.tensor([[-1.0, 0.1, 0], [-1.0, 0, 0.1]])  # two points far from everything (label noise)
    points = torch.cat([bulk, *modes, outliers])
    picks = kcenter(points, 3).tolist()
    assert picks[0] < 60  # the most typical point first
    assert sorted(p // 10 for p in picks[1:]) == [6, 7]  # then one of each rare style
    assert not set(picks) & {80, 81}  # never the outliers, which plain farthest-first would take first
    assert kcenter(points, 3).tolist() == picks  # deterministic


def coverage(points: torch.Tensor, picks: torch.Tensor) -> float:
    """The k-medoids objective: every point's cosine similarity to its nearest pick, summed."""
    x = F.normalize(points, dim=1)
    return float((x @ x[picks].T).max(dim=1).values.sum())


def test_kmedoids_covers_the_class_at_least_as_well_as_the_kmeans_medoids():
    generator = torch.Generator().manual_seed(3)
    centres = F.normalize(torch.randn(4, 8, generator=generator), dim=1)
    sizes = [50, 25, 15, 10]  # modes of unequal weight, as a class's styles are
    points = torch.cat([c + 0.15 * torch.randn(n, 8, generator=generator) for c, n in zip(centres, sizes)])
    picks = kmedoids(points, 4, block=7)  # a block that does not divide N: the blocked sums are exact
    assert len(set(picks.tolist())) == 4
    assert sorted(int(torch.searchsorted(torch.tensor([50, 75, 90]), p, right=True)) for p in picks) == [0, 1, 2, 3]
    assert torch.equal(picks, kmedoids(points, 4))  # deterministic, whatever the block
    medoid_coverage = [coverage(points, kmeans_medoids(points, 4, torch.Generator().manual_seed(s))) for s in range(5)]
    assert coverage(points, picks) >= max(medoid_coverage) - 1e-4
    x = F.normalize(points, dim=1)
    greedy = greedy_facility_location(x, 4)
    assert int(greedy[0]) == int((x @ x.T).sum(dim=1).argmax())  # the first pick: most similar to all the others
    assert torch.equal(greedy, greedy_facility_location(x, 4, block=9, cache_limit=0))  # recomputed blocks agree
    assert coverage(points, picks) >= coverage(points, greedy) - 1e-4  # the Voronoi rounds never lower coverage


def test_selection_picks_distinct_images_of_each_class_reproducibly():
    images = torch.randint(0, 255, (40, 1, 16, 16), dtype=torch.uint8)
    labels = torch.arange(40) % 4
    observer = bn_backbone(class_names=CLASSES).eval()
    for how in SELECTIONS:
        chosen = select_real_images(observer, images, labels, num_classes=4, ipc=3, how=how, seed=5)
        assert chosen.shape == (4, 3)
        for c in range(4):
            assert (labels[chosen[c]] == c).all() and len(set(chosen[c].tolist())) == 3
        assert torch.equal(chosen, select_real_images(observer, images, labels, num_classes=4, ipc=3, how=how, seed=5))
    with torch.no_grad():
        logits = observer(normalize(images, observer.mean, observer.std))
    confident = select_real_images(observer, images, labels, num_classes=4, ipc=2, how="confident", seed=5)
    for c in range(4):
        members = torch.nonzero(labels == c).flatten()
        losses = F.cross_entropy(logits[members], torch.full((len(members),), c), reduction="none")
        best = set(members[losses.argsort()[:2]].tolist())
        assert set(confident[c].tolist()) == best
    with pytest.raises(ConfigError, match="fewer than --ipc"):
        select_real_images(observer, images, labels, num_classes=4, ipc=11, how="random", seed=0)


def test_crop_curriculum_anneals_from_whole_image_to_the_smallest_scale():
    lows, high = curriculum_scales(50, (0.2, 1.0))
    assert float(lows[0]) == pytest.approx(1.0) and float(lows[-1]) == pytest.approx(0.2)
    assert bool((lows[1:] <= lows[:-1]).all()) and high == 1.0
    plan = sample_recovery_plan(torch.Generator().manual_seed(0), 50, (32, 32), jitter=2, random_crop=True,
                                crop_scale=(0.2, 1.0), crop_curriculum=True)
    areas = plan.boxes[:, 2] * plan.boxes[:, 3] / (32 * 32)
    assert float(areas[:5].min()) > 0.9 and float(areas[-10:].mean()) < float(areas[:10].mean())


# --------------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("options")
    bn_backbone(class_names=CLASSES).save_pretrained(root / "backbone")
    write_random_dataset(root / "data", CLASSES, SIZE)
    return root


def run(assets, out, **values):
    base = dict(backbone=str(assets / "backbone"), dataset=str(assets / "data"), output_dir=str(out), ipc=2,
                cpu=True, mixed_precision="no", report_to="none", group_size=2, seed=3)
    return main(config_from_dict(RecoverConfig, {**base, **values}))


def distilled_pixels(folder) -> tuple[np.ndarray, list[int]]:
    ds = load_distilled(folder)[0]  # not load_dataset(folder): its cache is keyed on the folder name
    return np.stack([np.asarray(im) for im in ds["image"]]), ds["label"]


def test_selected_real_images_are_written_unchanged_with_zero_iterations(assets, tmp_path):
    from hf_scdd.data.loading import load_image_dataset
    from safetensors.torch import load_file

    out = run(assets, tmp_path / "sel", init="real", selection="kmeans", iterations=0)
    pixels, labels = distilled_pixels(out)
    inputs = load_file(str(out / "inputs" / "init_images.safetensors"))
    train = load_image_dataset(str(assets / "data")).tensors("train")[0]
    for row, (image, label) in enumerate(zip(pixels, labels)):
        index = inputs["train_indices"][label, row // 4]  # rows: IPC index major, then class
        assert np.array_equal(image, train[index, 0].numpy())
    assert set(labels) == {0, 1, 2, 3}


def test_real_init_refined_against_clean_targets_moves_the_pixels(assets, tmp_path):
    kept = distilled_pixels(run(assets, tmp_path / "kept", init="real", selection="random", iterations=0))[0]
    refined = run(assets, tmp_path / "refined", init="real", selection="random", iterations=6, lr=0.05,
                  bn_targets="clean", class_bn_weight=0.5)
    moved = distilled_pixels(refined)[0]
    assert kept.shape == moved.shape and not np.array_equal(kept, moved)
    assert (refined / "inputs" / "bn_targets.safetensors").exists()
    again = distilled_pixels(run(assets, tmp_path / "again", init="real", selection="random", iterations=6,
                                 lr=0.05, bn_targets="clean", class_bn_weight=0.5))[0]
    assert np.array_equal(moved, again)  # same seed and config: same images


def test_method_presets_fill_unset_fields_and_explicit_values_win(assets, tmp_path):
    import json

    out = run(assets, tmp_path / "m", method="hf_scdd")  # 16 px grey data: the "small" preset keeps the medoids
    config = json.loads((out / "config.json").read_text())["config"]
    assert (config["preset"], config["init"], config["selection"], config["iterations"]) == ("small", "real", "kmeans", 0)
    refined = run(assets, tmp_path / "r", method="hf_scdd", iterations=1, bn_targets="clean")
    config = json.loads((refined / "config.json").read_text())["config"]
    assert (config["init"], config["bn_targets"], config["iterations"]) == ("real", "clean", 1)
    scdd = run(assets, tmp_path / "s", iterations=2)
    assert json.loads((scdd / "config.json").read_text())["config"]["init"] == "noise"


def test_hf_scdd_refines_lightly_on_cifar_size_presets_and_explicit_fields_still_win():
    from hf_scdd.stages.recover import RecoverConfig
    from hf_scdd.synthesis.presets import resolve_presets

    cifar = resolve_presets(RecoverConfig(method="hf_scdd"), "cifar10", 32)
    assert (cifar.preset, cifar.init, cifar.selection) == ("cifar", "real", "kmeans")
    assert (cifar.iterations, cifar.lr, cifar.r_bn, cifar.bn_targets) == (100, 0.03, 0.01, "clean")
    small = resolve_presets(RecoverConfig(method="hf_scdd"), "fashion_mnist", 28)
    assert (small.preset, small.iterations, small.bn_targets, small.lr) == ("small", 0, "running", 0.25)
    kept = resolve_presets(RecoverConfig(method="hf_scdd", iterations=0), "cifar10", 32)
    assert (kept.iterations, kept.bn_targets) == (0, "clean")  # only the unset fields come from the method
    scdd = resolve_presets(RecoverConfig(), "cifar10", 32)
    assert (scdd.init, scdd.iterations, scdd.lr, scdd.bn_targets) == ("noise", 1000, 0.4, "running")


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(iterations=0), "needs --init real"),
        (dict(class_bn_weight=0.5, bn_targets="running"), "--bn_targets clean"),
        (dict(init="pixels"), "--init must be"),
        (dict(selection="best"), "--selection must be"),
        (dict(method="magic"), "unknown --method"),
        (dict(patches_per_side=2, iterations=3), "needs --init real"),
        (dict(init="real", patches_per_side=0), "--patches_per_side must be"),
    ],
)
def test_recovery_option_refusals_write_nothing(assets, tmp_path, values, message):
    out = tmp_path / "bad"
    with pytest.raises(ConfigError, match=message):
        run(assets, out, **values)
    assert not out.exists() or not any(out.iterdir())


def test_a_selection_the_data_cannot_satisfy_leaves_a_folder_the_corrected_command_runs_in(assets, tmp_path):
    out = tmp_path / "short"
    with pytest.raises(ConfigError, match="fewer than --ipc 3"):  # 2 training images per class
        run(assets, out, ipc=3, init="real", selection="random", iterations=0)
    assert not out.exists() or not any(out.iterdir())  # no record to refuse the fix as "a different config"
    fixed = run(assets, out, ipc=2, init="real", selection="random", iterations=0)
    assert len(distilled_pixels(fixed)[1]) == 8


def test_mosaics_tile_downscaled_images_in_interleaved_order():
    # 1 class, 4 chosen images -> 1 mosaic of 2 x 2 (per_side 2, IPC 1); then 8 -> 2 mosaics (IPC 2).
    images = torch.arange(8, dtype=torch.uint8).mul(30).view(1, 8, 1, 1, 1).expand(1, 8, 1, 6, 6).clone()
    images[0, 0, 0, :2, :2] = 200  # a 2x2 corner block of image 0 -> area-averaged into one pixel of 3x3
    mosaics = tile_mosaics(images, 2)
    assert mosaics.shape == (1, 2, 1, 6, 6) and mosaics.dtype == torch.uint8
    for j in range(2):  # mosaic j holds images j, j + 2, j + 4, j + 6 (row-major quadrants)
        for t, (r, q) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            quadrant = mosaics[0, j, 0, 3 * r : 3 * r + 3, 3 * q : 3 * q + 3]
            expected = F.avg_pool2d(images[0, t * 2 + j].float(), 2).round().to(torch.uint8)[0]
            assert torch.equal(quadrant, expected)
    assert int(mosaics[0, 0, 0, 0, 0]) == 200 and int(mosaics[0, 0, 0, 1, 1]) == 0


def test_real_patch_starting_images_are_written_as_mosaics_of_their_indices(tmp_path):
    from hf_scdd.data.loading import load_image_dataset
    from safetensors.torch import load_file

    root = tmp_path / "assets"
    bn_backbone(class_names=CLASSES).save_pretrained(root / "backbone")
    write_random_dataset(root / "data", CLASSES, SIZE, per_split=16)  # 4 training images per class
    base = dict(backbone=str(root / "backbone"), dataset=str(root / "data"), output_dir=str(tmp_path / "out"),
                ipc=1, cpu=True, mixed_precision="no", report_to="none", seed=3, init="real",
                selection="random", iterations=0, patches_per_side=2)
    out = main(config_from_dict(RecoverConfig, base))
    pixels, labels = distilled_pixels(out)
    indices = load_file(str(out / "inputs" / "init_images.safetensors"))["train_indices"]
    train = load_image_dataset(str(root / "data")).tensors("train")[0]
    assert indices.shape == (4, 4) and sorted(labels) == [0, 1, 2, 3]
    half = SIZE // 2
    for image, label in zip(pixels, labels):
        assert len(set(indices[label].tolist())) == 4  # four distinct real images of the class
        for t, index in enumerate(indices[label].tolist()):
            r, q = divmod(t, 2)
            expected = F.avg_pool2d(train[index].float(), 2).round().to(torch.uint8)[0].numpy()
            assert np.array_equal(image[r * half : (r + 1) * half, q * half : (q + 1) * half], expected)
