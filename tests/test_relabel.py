"""Soft labels: replay exactness, storage formats, resumption and clear errors for damaged/mismatched files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from hf_scdd.configs import ConfigError
from hf_scdd.augment.views import ViewSpec, make_epoch_plan, render_batch
from hf_scdd.errors import SoftLabelError
from hf_scdd.formats.distilled_set import distilled_images
from hf_scdd.formats.soft_labels import (
    FORMAT_VERSION,
    SoftLabelStore,
    decode_logits,
    encode_logits,
    epoch_file,
    replay,
)
from hf_scdd.hub import load_distilled
from hf_scdd.models.loading import teacher_fn
from hf_scdd.stages.relabel import RelabelConfig, relabel
from hf_scdd.stages.relabel import main as relabel_main
from helpers import assert_same_tensors, kill_when, tiny_teacher, write_distilled


def _setup(tmp_path: Path, **overrides):
    folder = write_distilled(tmp_path / "dist", ipc=4)
    dataset, _, _ = load_distilled(str(folder))
    images, _ = distilled_images(dataset, 1, 12)
    teacher = tiny_teacher()
    values = dict(distilled=str(folder), teacher="tiny", epochs=3, batch_size=5, cpu=True, seed=3)
    values.update(overrides)
    config = RelabelConfig(**values)
    labels_dir = folder / "soft_labels"
    report = relabel(config, images=images, teacher=teacher, labels_dir=labels_dir, image_bytes=1000)
    return config, images, teacher, labels_dir, report


def test_replayed_views_reproduce_the_stored_logits(tmp_path):
    config, images, teacher, labels_dir, report = _setup(tmp_path)
    store = SoftLabelStore(labels_dir, num_images=12, num_classes=3)
    run = teacher_fn(teacher, teacher.mean, teacher.std)
    mixed_batches = 0
    for epoch in range(3):
        record = store.epoch(epoch)
        # the stored plan is the one (seed, epoch) determines, whatever process wrote it
        again = make_epoch_plan(12, 5, config.view_spec(), config.seed, epoch, 12)
        for name, tensor in record.plan.tensors().items():
            assert torch.equal(tensor, getattr(again, name)), name
        assert sorted(record.plan.order.tolist()) == list(range(12))
        for b, (views, stored) in enumerate(replay(images, record)):
            recomputed = run(views)
            torch.testing.assert_close(recomputed.half().float(), stored, rtol=2e-3, atol=2e-3)
            mixed_batches += int(record.plan.mix_box[b].sum() > 0)
    assert mixed_batches > 0, "CutMix boxes should have been drawn"
    # a different epoch gives different views (labels are not reused by accident)
    assert not torch.equal(store.epoch(0).plan.crop, store.epoch(1).plan.crop)
    assert report["label_bytes"] == sum(p.stat().st_size for p in labels_dir.glob("epoch_*.safetensors"))
    assert json.loads((labels_dir / "label_bytes.json").read_text())["image_bytes"] == 1000


def test_cutmix_and_mixup_render_the_recorded_mix():
    images = torch.randint(0, 255, (6, 1, 12, 12), dtype=torch.uint8)
    for mix in ("cutmix", "mixup"):
        spec = ViewSpec(crop="none", flip=False, mix=mix, mix_alpha=1.0)
        plan = make_epoch_plan(6, 6, spec, seed=1, epoch=0, image_size=12)
        out = render_batch(images, plan, 0)
        own = images[plan.order.long()].float() / 255
        partner = own[plan.mix_index.long()]
        lam = float(plan.mix_lambda[0])
        if mix == "mixup":
            torch.testing.assert_close(out, lam * own + (1 - lam) * partner, atol=1e-5, rtol=0)
        else:
            t, l, b, r = plan.mix_box[0].tolist()
            expected = own.clone()
            expected[:, :, t:b, l:r] = partner[:, :, t:b, l:r]
            torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
            assert abs(lam - (1 - (b - t) * (r - l) / 144)) < 1e-6


def test_rerun_skips_finished_epochs_and_refuses_a_changed_config(tmp_path):
    config, images, teacher, labels_dir, _ = _setup(tmp_path)
    stamps = {p.name: p.stat().st_mtime_ns for p in labels_dir.glob("epoch_*")}
    (labels_dir / epoch_file(1)).unlink()
    relabel(config, images=images, teacher=teacher, labels_dir=labels_dir)
    assert (labels_dir / epoch_file(1)).exists()
    assert (labels_dir / epoch_file(0)).stat().st_mtime_ns == stamps[epoch_file(0)]
    changed = RelabelConfig(**{**config.to_dict(), "topk": 2})
    with pytest.raises(ConfigError, match="topk"):
        relabel(changed, images=images, teacher=teacher, labels_dir=labels_dir)


@pytest.mark.parametrize("topk,dtype", [(0, "int8"), (2, "fp16"), (2, "int8")])
def test_encodings_round_trip(topk, dtype):
    torch.manual_seed(0)
    logits = torch.randn(7, 5) * 6
    tensors = encode_logits(logits, topk, dtype)
    decoded = decode_logits(tensors, 5)
    assert decoded.shape == (7, 5)
    if topk:
        assert tensors["indices"].dtype == torch.int16 and tensors["logits"].shape == (7, topk)
        top = logits.topk(topk, 1)
        assert torch.equal(tensors["indices"].long(), top.indices)
        kept = decoded.gather(1, top.indices)
        torch.testing.assert_close(kept, top.values, atol=0.06 if dtype == "int8" else 0.01, rtol=0)
        rest_mean = (logits.sum(1) - top.values.sum(1)) / 3
        mask = torch.ones_like(logits, dtype=torch.bool).scatter_(1, top.indices, False)
        torch.testing.assert_close(decoded[mask].view(7, 3), rest_mean[:, None].expand(7, 3), atol=0.01, rtol=0)
    else:
        assert tensors["logits"].dtype == torch.int8
        torch.testing.assert_close(decoded, logits, atol=logits.abs().max().item() / 127, rtol=0)


def test_topk_store_round_trip(tmp_path):
    _, images, teacher, labels_dir, report = _setup(tmp_path, topk=2)
    store = SoftLabelStore(labels_dir, num_images=12, num_classes=3)
    record = store.epoch(4)  # cycles: epoch 4 of 3 stored = epoch 1
    assert record.logits.shape == (12, 3)
    assert torch.equal(record.plan.order, store.epoch(1).plan.order)
    run = teacher_fn(teacher, teacher.mean, teacher.std)
    views, stored = next(replay(images, record))
    full = run(views)
    top = full.topk(2, 1)
    torch.testing.assert_close(stored.gather(1, top.indices), top.values, atol=5e-3, rtol=2e-3)
    assert report["topk"] == 2


def test_compact_mode(tmp_path):
    _, images, teacher, labels_dir, report = _setup(tmp_path, mode="compact")
    store = SoftLabelStore(labels_dir, num_images=12, num_classes=3)
    assert store.mode == "compact" and report["epochs"] == 1
    expected = teacher_fn(teacher, teacher.mean, teacher.std)(images.float() / 255)
    torch.testing.assert_close(store.compact_logits(), expected, atol=2e-3, rtol=2e-3)


def test_mismatched_or_damaged_labels_give_clear_errors(tmp_path):
    _, _, _, labels_dir, _ = _setup(tmp_path)
    with pytest.raises(SoftLabelError, match="for 12 images but the distilled set has 13"):
        SoftLabelStore(labels_dir, num_images=13, num_classes=3)
    with pytest.raises(SoftLabelError, match="3 classes but the dataset has 10"):
        SoftLabelStore(labels_dir, num_images=12, num_classes=10)

    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    path = labels_dir / epoch_file(2)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    save_file(tensors, str(path), metadata={**meta, "format_version": str(FORMAT_VERSION + 1)})
    with pytest.raises(SoftLabelError, match="newer than this hf_scdd understands.*upgrade"):
        SoftLabelStore(labels_dir)

    save_file(tensors, str(path), metadata=meta)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 40])
    with pytest.raises(SoftLabelError, match="truncated.*rerun `hf-scdd relabel`"):
        SoftLabelStore(labels_dir)

    path.unlink()
    with pytest.raises(SoftLabelError, match="missing 1 of 3 epoch files.*epochs 2"):
        SoftLabelStore(labels_dir)
    assert SoftLabelStore(labels_dir, require_complete=False).num_epochs == 3
    with pytest.raises(SoftLabelError, match="no soft-label folder"):
        SoftLabelStore(tmp_path / "nowhere")


def test_kill_and_rerun_gives_the_labels_of_an_uninterrupted_run(tmp_path):
    folder = write_distilled(tmp_path / "dist", ipc=4)
    tiny_teacher(tmp_path / "teacher")
    values = dict(teacher=str(tmp_path / "teacher"), epochs=300, batch_size=5, seed=3, report_to="none")
    args = [f"--{k}={v}" for k, v in values.items()]
    labels = folder / "soft_labels"
    kill_when(["relabel", "--distilled", str(folder), *args], lambda: len(list(labels.glob("epoch_*.safetensors"))) >= 3)
    assert 3 <= len(list(labels.glob("epoch_*.safetensors"))) < 300, "the run was not interrupted mid-way"
    relabel_main(RelabelConfig(distilled=str(folder), cpu=True, **values))
    whole = tmp_path / "whole"
    shutil.copytree(tmp_path / "dist" / "data", whole / "data")
    relabel_main(RelabelConfig(distilled=str(whole), cpu=True, **values))
    assert sorted(p.name for p in labels.glob("epoch_*")) == sorted(p.name for p in (whole / "soft_labels").glob("epoch_*"))
    for path in labels.glob("epoch_*.safetensors"):
        assert_same_tensors(path, whole / "soft_labels" / path.name)
