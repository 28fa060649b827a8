"""Reliability (issue 13): bad input gets one clear line and writes nothing, a divergent run leaves nothing that
looks finished, data surprises are decided explicitly, soft labels are bound to their set and teacher, and a
pushed distilled set always carries labels that load and match. Sections follow the issue's numbered points;
the kill -9 resumptions are in each stage's own test file (test_squeeze, test_recover, test_relabel,
test_evaluate), the flag scan in test_messages.py and the README commands in test_readme.py.

Every refusal test checks the three things the issue asks for: the message names the problem and the fix,
nothing is left that a rerun would mistake for finished work (no ``config.json`` locking the folder), and the
corrected command then succeeds in the same output folder.
"""

from __future__ import annotations

import importlib
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import (
    bn_backbone, stage_env, tiny_teacher, tiny_transformers_classifier, write_distilled, write_image_dataset,
    write_random_dataset,
)
from hf_scdd import cli
from hf_scdd.configs import ConfigError, config_from_dict
from hf_scdd.errors import BackboneError, DataError, NonFiniteError, SoftLabelError
from hf_scdd.stages import evaluate, inspect_bn, probe, recover, relabel, squeeze

CLASSES = ["zero", "one", "two", "three"]


def no_record(folder: Path) -> bool:
    """Nothing in ``folder`` that would refuse (or be mistaken for) a run: no config record, no output."""
    return not folder.exists() or not any((folder / name).exists() for name in ("config.json", "units", "runs",
                                                                                 "checkpoints", "model", "backbone"))


def recover_config(data: Path, backbone: Path, out: Path, **overrides) -> recover.RecoverConfig:
    values = dict(backbone=str(backbone), dataset=str(data), output_dir=str(out), ipc=1, iterations=4, cpu=True,
                  mixed_precision="no", report_to="none", group_size=1, seed=3)
    return config_from_dict(recover.RecoverConfig, {**values, **overrides})


def evaluate_config(data: Path, distilled: Path, out: Path, **overrides) -> evaluate.EvaluateConfig:
    values = dict(distilled=str(distilled), dataset=str(data), output_dir=str(out), label_modes=["hard"],
                  arch="resnet10", width=4, epochs=1, batch_size=4, seeds=[0], random_baseline=False, cpu=True,
                  report_to="none", mixed_precision="no")
    return config_from_dict(evaluate.EvaluateConfig, {**values, **overrides})


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A 4-class grey 16-px dataset, a recovery model for it, a 3-class real dataset with a distilled set."""
    root = tmp_path_factory.mktemp("reliability")
    write_random_dataset(root / "noise", CLASSES, 16)
    bn_backbone(class_names=CLASSES).save_pretrained(root / "backbone")
    write_image_dataset(root / "real", n_train_per_class=8, n_test_per_class=4)
    write_distilled(root / "distilled", ipc=4)
    tiny_teacher(root / "teacher")
    return {"root": root, "noise": root / "noise", "backbone": root / "backbone", "real": root / "real",
            "distilled": root / "distilled", "teacher": root / "teacher"}


def overflowing(model: torch.nn.Module, folder: Path) -> Path:
    """Save ``model`` with every convolution scaled by 1e10: finite weights whose activations overflow float32
    within a few layers (inf - inf = NaN), so a run diverges at its first step: a NaN that no validation of
    the config or the weights can foresee."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.mul_(1e10)
    model.save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------------------------------------
# 1. NaN/inf: refused before work, or stopped without output that looks finished
# --------------------------------------------------------------------------------------------------------


def test_a_nan_in_a_bn_buffer_is_refused_before_work(world, tmp_path):
    broken = bn_backbone(class_names=CLASSES)
    broken.bn1.running_var[0] = float("nan")
    broken.save_pretrained(tmp_path / "backbone")
    out = tmp_path / "out"
    config = recover_config(world["noise"], tmp_path / "backbone", out)
    with pytest.raises(BackboneError, match=r"1 NaN/inf value\(s\) in bn1\.running_var .*retrain or re-export"):
        recover.main(config)
    assert not out.exists()
    bn_backbone(class_names=CLASSES).save_pretrained(tmp_path / "backbone")  # the fixed model, same command
    recover.main(config)
    row = next(line for line in (out / "README.md").read_text().splitlines() if "final CE / BN term" in line)
    assert all(math.isfinite(float(v)) for v in row.split("|")[2].split("/")), row


@pytest.mark.parametrize(
    "stage, values, match",
    [
        ("recover", {"backbone": "x", "lr": math.inf}, r"--lr must be a finite number, got inf"),
        ("recover", {"backbone": "x", "lr": 1e6}, r"--lr must be in \(0, 10\], got 1000000\.0"),
        ("recover", {"backbone": "x", "r_bn": 1e39}, r"--r_bn must be in \[0, 10000\], got 1e\+39"),
        ("squeeze", {"lr": math.nan}, r"--lr must be a finite number, got nan"),
        ("probe", {"backbone": "x", "lr": 1e6}, r"--lr must be in \(0, 100\]"),
        ("evaluate", {"lr": math.inf}, r"--lr must be a finite number"),
        ("evaluate", {"temperature": 0.0}, r"--temperature must be in \(0, 1000\]"),
        ("relabel", {"mix_alpha": -1.0}, r"--mix_alpha must be in \(0, 100\]"),
    ],
)
def test_non_finite_and_absurd_values_are_refused(tmp_path, stage, values, match):
    config = stage_config_class(stage)(output_dir=str(tmp_path / "out"), **values)
    with pytest.raises(ConfigError, match=match):
        config.validate()


def stage_config_class(stage: str) -> type:
    module, config_name, _ = cli.STAGES[stage]
    return getattr(importlib.import_module(module), config_name)


def test_the_command_line_prints_one_line_and_exits_2(tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["recover", "--backbone", "x", "--lr", "inf", "--output_dir", str(out)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "hf-scdd recover: error: --lr must be a finite number, got inf\n"
    assert not out.exists()


def test_a_diverging_recovery_keeps_no_unit_and_the_fixed_command_runs_in_the_same_folder(world, tmp_path):
    model = overflowing(bn_backbone(class_names=CLASSES), tmp_path / "backbone")
    out = tmp_path / "out"
    config = recover_config(world["noise"], model, out)
    with pytest.raises(NonFiniteError, match=r"recover: the loss of unit\(s\) ipc.* became NaN/inf at step 1 of 4: "
                                             r"--lr .* or --r_bn .* rerun with smaller values"):
        recover.main(config)
    assert no_record(out) and not list(out.rglob("*.safetensors")) and not (out / "README.md").exists()
    recover.main(recover_config(world["noise"], world["backbone"], out))  # the corrected command, same folder
    assert len(list((out / "data").glob("*.parquet"))) == 1


def test_a_diverging_probe_saves_nothing_and_the_fixed_command_runs(tiny_image_folder, tmp_path):
    backbone = overflowing(bn_backbone(num_classes=0), tmp_path / "backbone")
    out = tmp_path / "probe"
    config = probe.ProbeConfig(output_dir=str(out), backbone=str(backbone), dataset=tiny_image_folder, epochs=2,
                               batch_size=32, cpu=True, report_to="none", mixed_precision="no")
    with pytest.raises(NonFiniteError, match=r"probe: the loss became nan at step 1 .* rerun with a lower --lr"):
        probe.main(config)
    assert no_record(out)
    bn_backbone(num_classes=0).save_pretrained(backbone)
    assert (probe.main(config) / "model.safetensors").exists()


def test_a_diverging_student_leaves_no_runs_and_the_fixed_teacher_works(world, tmp_path):
    bad_teacher = overflowing(tiny_teacher(), tmp_path / "teacher")
    out = tmp_path / "eval"
    with pytest.raises(NonFiniteError, match=r"distilled-online: the loss became nan at step 1"):
        evaluate.main(evaluate_config(world["real"], world["distilled"], out, label_modes=["online"],
                                      teacher=str(bad_teacher)))
    assert no_record(out) and not (out / "results.json").exists()
    tiny_teacher(bad_teacher)
    report = evaluate.main(evaluate_config(world["real"], world["distilled"], out, label_modes=["online"],
                                           teacher=str(bad_teacher)))
    assert math.isfinite(report["results"]["distilled/online"]["final_top1_mean"])


# --------------------------------------------------------------------------------------------------------
# 2. Exact resumption (the kill -9 tests are in test_squeeze.py): the shuffle order has no hidden state
# --------------------------------------------------------------------------------------------------------


def test_the_shuffle_order_is_a_function_of_seed_and_epoch_only():
    from accelerate import Accelerator

    from hf_scdd.training.loop import index_loader

    def order(loader, epoch: int) -> list[int]:
        loader.set_epoch(epoch)
        return torch.cat(list(loader)).tolist()

    prepared = Accelerator(cpu=True).prepare(index_loader(20, 5, seed=1))
    first, second, again = order(prepared, 0), order(prepared, 1), order(prepared, 0)
    assert first == again != second and sorted(second) == list(range(20))
    fresh = Accelerator(cpu=True).prepare(index_loader(20, 5, seed=1))  # a resumed process starts here
    assert order(fresh, 1) == second


# --------------------------------------------------------------------------------------------------------
# 4. Soft labels bound to their set and teacher
# --------------------------------------------------------------------------------------------------------


def relabel_config(distilled: Path, teacher: Path, **overrides) -> relabel.RelabelConfig:
    values = dict(distilled=str(distilled), teacher=str(teacher), epochs=2, batch_size=4, cpu=True,
                  report_to="none")
    return config_from_dict(relabel.RelabelConfig, {**values, **overrides})


def test_labels_copied_from_another_set_are_refused(world, tmp_path):
    other = write_distilled(tmp_path / "other", ipc=4, seed=8)  # the same size, other images
    mine = tmp_path / "mine"
    shutil.copytree(world["distilled"], mine)
    relabel.main(relabel_config(other, world["teacher"]))
    shutil.copytree(other / "soft_labels", mine / "soft_labels")
    out = tmp_path / "eval"
    config = evaluate_config(world["real"], mine, out, label_modes=["stored"])
    with pytest.raises(SoftLabelError, match=r"were made for other images .* copied from another distilled set.*"
                                             r"delete .*soft_labels and rerun `hf-scdd relabel`"):
        evaluate.main(config)
    assert no_record(out)
    shutil.rmtree(mine / "soft_labels")  # the fix the message names
    relabel.main(relabel_config(mine, world["teacher"]))
    assert "distilled/stored" in evaluate.main(config)["results"]


def test_relabel_refuses_a_teacher_for_another_class_count(world, tmp_path):
    distilled = tmp_path / "set"
    shutil.copytree(world["distilled"], distilled)
    tiny_teacher(tmp_path / "two_classes", num_classes=2)
    with pytest.raises(SoftLabelError, match=r"predicts 2 classes but the distilled set has 3: pass a --teacher"):
        relabel.main(relabel_config(distilled, tmp_path / "two_classes"))
    assert not (distilled / "soft_labels").exists()
    report = relabel.main(relabel_config(distilled, world["teacher"]))
    assert report["num_classes"] == 3


def test_labels_of_another_teacher_or_an_old_format_are_refused_on_read(world, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from hf_scdd.formats.soft_labels import epoch_file, labels_for_set
    from hf_scdd.hub import load_distilled

    distilled = tmp_path / "set"
    shutil.copytree(world["distilled"], distilled)
    relabel.main(relabel_config(distilled, world["teacher"]))
    dataset, labels, _ = load_distilled(distilled)
    assert len(labels_for_set(labels, dataset, num_classes=3, teacher=tiny_teacher()).format.teacher_sha256) == 64
    with pytest.raises(SoftLabelError, match=r"made by teacher .* whose weights differ from the --teacher given"):
        labels_for_set(labels, dataset, num_classes=3, teacher=tiny_teacher(seed=5))
    path = labels / epoch_file(0)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    save_file(load_file(str(path)), str(path), metadata={**meta, "format_version": "1"})
    with pytest.raises(SoftLabelError, match=r"version 1, which does not record the images and teacher.*rerun"):
        labels_for_set(labels, dataset)


# --------------------------------------------------------------------------------------------------------
# 5. A failed run never locks its folder
# --------------------------------------------------------------------------------------------------------


def test_pipeline_refuses_ipc_0_before_anything_runs(tmp_path, capsys):
    from hf_scdd.pipeline import PipelineConfig, run

    out = tmp_path / "pipeline"
    start = time.time()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["pipeline", "--ipc", "0", "--output_dir", str(out)])
    assert exit_info.value.code == 2 and time.time() - start < 30
    assert capsys.readouterr().err.strip().endswith("--ipc must be >= 1 (got 0): it is the number of images per class")
    assert not out.exists()
    with pytest.raises(ConfigError, match=r"--lr must be in \(0, 10\]"):  # a stage override: refused up front too
        run(PipelineConfig(output_dir=str(out), recover="{lr: 1.0e6}"))
    assert not out.exists()


def _squeeze(data, out, **overrides):
    values = dict(dataset=data, output_dir=str(out), method="supervised", arch="resnet10", width=4, epochs=1,
                  batch_size=32, cpu=True, report_to="none", mixed_precision="no")
    return squeeze.main(squeeze.SqueezeConfig(**{**values, **overrides}))


def test_refused_runs_leave_their_folder_free_for_the_corrected_command(world, tiny_image_folder, tmp_path):
    """squeeze, probe, evaluate and inspect-bn refused for their inputs (after loading them: the checks that
    need the data or the model) write no config, so the corrected command runs in the same folder."""
    out = tmp_path / "squeeze"
    with pytest.raises(ConfigError, match=r"128 training images .* fewer than one batch: lower --batch_size"):
        _squeeze(tiny_image_folder, out, batch_size=512)
    assert no_record(out)
    backbone = _squeeze(tiny_image_folder, out)  # the corrected command

    out = tmp_path / "probe"
    config = dict(output_dir=str(out), dataset=tiny_image_folder, epochs=1, batch_size=32, cpu=True, report_to="none")
    with pytest.raises(BackboneError, match=r"could not fetch config.json of backbone 'tester/no-such-model'"):
        probe.main(probe.ProbeConfig(backbone="tester/no-such-model", **config))
    assert no_record(out)
    probe.main(probe.ProbeConfig(backbone=str(backbone.parent), **config))  # a squeeze output folder

    out = tmp_path / "eval"
    with pytest.raises(ConfigError, match=r"label mode 'stored' but the distilled set has no soft_labels/"):
        evaluate.main(evaluate_config(world["real"], world["distilled"], out, label_modes=["stored"]))
    assert no_record(out)
    evaluate.main(evaluate_config(world["real"], world["distilled"], out))

    out = tmp_path / "bn"
    with pytest.raises(BackboneError):
        inspect_bn.main(inspect_bn.InspectBNConfig(output_dir=str(out), backbones=[str(tmp_path / "none")]))
    assert no_record(out)
    inspect_bn.main(inspect_bn.InspectBNConfig(output_dir=str(out), backbones=[str(tmp_path / "probe")]))


# --------------------------------------------------------------------------------------------------------
# 6. Advice that can be followed
# --------------------------------------------------------------------------------------------------------


def write_splits(folder: Path, splits: dict[str, int]) -> Path:
    """A 3-class dataset in the Hub parquet layout with the given split names and images per class."""
    from helpers import _dataset, synthetic_images

    (folder / "data").mkdir(parents=True)
    for seed, (split, n) in enumerate(splits.items()):
        images, labels = synthetic_images(n, 3, 12, seed)
        _dataset(images, labels, 3).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def test_train_and_test_split_flags_exist_and_work(tmp_path):
    data = write_splits(tmp_path / "data", {"fit": 12, "holdout": 4})
    out = tmp_path / "probe"
    bn_backbone(num_classes=0, size=12).save_pretrained(tmp_path / "backbone")
    values = dict(output_dir=str(out), backbone=str(tmp_path / "backbone"), dataset=str(data), epochs=1,
                  batch_size=12, cpu=True, report_to="none")
    with pytest.raises(DataError, match=r"has no split 'train' \(it has \['fit', 'holdout'\]\); pass --train_split"):
        probe.main(probe.ProbeConfig(**values))
    assert no_record(out)
    with pytest.raises(DataError, match=r"has no test split .*pass --test_split NAME"):
        probe.main(probe.ProbeConfig(train_split="fit", **values))
    config = cli_config(["probe", "--train_split", "fit", "--test_split", "holdout"], **values)
    assert json.loads((probe.main(config) / "config.json").read_text())["class_names"] == ["c0", "c1", "c2"]


def cli_config(argv: list[str], **values):
    """A stage config parsed from command-line flags (so the flags are proven to exist) plus ``values``."""
    from dataclasses import replace

    from hf_scdd.configs import parse_config

    return replace(parse_config(stage_config_class(argv[0]), argv[1:]), **values)


def test_offline_and_missing_repo_messages_name_the_endpoint_and_the_switch(world, tmp_path, fake_hub):
    from hf_scdd.models import load_backbone

    with pytest.raises(BackboneError, match=rf"'tester/missing-model' .* from {fake_hub.url} \(HF_HUB_OFFLINE unset"):
        load_backbone("tester/missing-model")
    command = [sys.executable, "-m", "hf_scdd", "probe", "--backbone", "tester/missing-model", "--dataset",
               str(world["real"]), "--output_dir", str(tmp_path / "out")]
    env = stage_env(HF_HUB_OFFLINE="1")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("hf-scdd probe: error: could not fetch config.json of backbone 'tester/missing-model'")
    assert "with HF_HUB_OFFLINE=1 (only the local Hub cache is read" in last and fake_hub.url in last
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
    debug = subprocess.run(command, env={**env, "HF_SCDD_DEBUG": "1"}, capture_output=True, text=True, timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "BackboneError" in debug.stderr


def test_a_truncated_safetensors_file_is_named(world, tmp_path):
    from hf_scdd.formats.distilled_set import load_unit
    from hf_scdd.models import load_backbone
    from hf_scdd.synthesis.units import plan_units

    folder = tmp_path / "model"
    shutil.copytree(world["backbone"], folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(BackboneError, match=rf"{weights} is truncated or not a safetensors file .* save or download"):
        load_backbone(str(folder))
    out = tmp_path / "recovered"
    recover.main(recover_config(world["noise"], world["backbone"], out))
    unit = plan_units(4, 1, 0, 3)[0]
    path = out / "units" / f"{unit.name}.safetensors"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(Exception, match=rf"{path} is truncated .*delete it and rerun"):
        load_unit(out, unit)


# --------------------------------------------------------------------------------------------------------
# 7. Data surprises, decided explicitly
# --------------------------------------------------------------------------------------------------------


def test_mixed_image_sizes_are_resized_with_a_logged_line(tmp_path, caplog, monkeypatch):
    from helpers import _dataset, synthetic_images

    from hf_scdd.data import load_image_dataset

    monkeypatch.setenv("HF_SCDD_CACHE", str(tmp_path / "cache"))
    images, labels = synthetic_images(4, 3, 12)
    images[5] = np.zeros((14, 20), dtype=np.uint8)  # one 20x14 image among the 12x12 ones
    (tmp_path / "data" / "data").mkdir(parents=True)
    for split in ("train", "test"):
        _dataset(images, labels, 3).to_parquet(str(tmp_path / "data" / "data" / f"{split}-00000-of-00001.parquet"))
    expected = "1 of 12 images are not 12x12 (20x14: 1): resized to 12x12 (the first training image's size)"
    for _ in range(2):  # decoded, then from the tensor cache: both say so
        caplog.clear()
        with caplog.at_level("WARNING", logger="hf_scdd"):
            load_image_dataset(str(tmp_path / "data")).tensors("train")
        assert expected in caplog.text


def write_empty_class_dataset(folder: Path) -> Path:
    """Four class names, images of the first three only."""
    import datasets

    from helpers import _png, synthetic_images

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    (folder / "data").mkdir(parents=True)
    for split in ("train", "test"):
        images, labels = synthetic_images(8, 3, 16)
        ds = datasets.Dataset.from_dict({"image": [_png(x) for x in images], "label": labels}, features=features)
        ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def test_a_class_without_images_is_refused_before_any_work_in_every_stage(world, tmp_path):
    from hf_scdd.pipeline import PipelineConfig, run

    data = str(write_empty_class_dataset(tmp_path / "data"))
    match = r"class\(es\) 'three' \(3\) of 4 have no image in split 'train'; every class needs training images"
    common = dict(dataset=data, cpu=True, report_to="none")
    runs = {
        "squeeze": lambda out: squeeze.main(squeeze.SqueezeConfig(output_dir=str(out), **common)),
        "probe": lambda out: probe.main(probe.ProbeConfig(output_dir=str(out), backbone=str(world["backbone"]), **common)),
        "recover": lambda out: recover.main(recover_config(Path(data), world["backbone"], out)),
        "evaluate": lambda out: evaluate.main(evaluate_config(Path(data), world["distilled"], out)),
        "pipeline": lambda out: run(PipelineConfig(output_dir=str(out), backbone=str(world["backbone"]), **common)),
    }
    for stage, start in runs.items():
        out = tmp_path / stage
        with pytest.raises(DataError, match=match):
            start(out)
        assert no_record(out) and not (out / "pipeline_config.json").exists(), stage


def test_grey_data_for_an_rgb_backbone_is_converted_with_a_log_line(tiny_image_folder, tmp_path, caplog):
    from hf_scdd.models import ResNet

    torch.manual_seed(0)
    ResNet("resnet10", num_classes=0, in_channels=3, width=4, image_size=16).save_pretrained(tmp_path / "rgb")
    config = probe.ProbeConfig(output_dir=str(tmp_path / "probe"), backbone=str(tmp_path / "rgb"),
                               dataset=tiny_image_folder, epochs=1, batch_size=32, cpu=True, report_to="none")
    with caplog.at_level("INFO", logger="hf_scdd"):
        model = ResNet.from_pretrained(probe.main(config))
    assert "converting grey images to 3 channel(s), as the backbone expects" in caplog.text
    assert model.in_channels == 3 and model.num_classes == 4


def test_a_transformers_backbone_without_preprocessor_config_needs_an_explicit_size(world, tmp_path, caplog):
    tiny_transformers_classifier(CLASSES).save_pretrained(tmp_path / "hf")  # no preprocessor_config.json
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="hf_scdd"):
        with pytest.raises(BackboneError, match=r"no preprocessor_config.json, so its input size \(224 px\) is a guess.*"
                                                r"16-px images: pass recover's --image_size 16"):
            recover.main(recover_config(world["noise"], tmp_path / "hf", out))
    assert "assuming 224-px input, ImageNet mean/std" in caplog.text
    assert not out.exists()
    recover.main(recover_config(world["noise"], tmp_path / "hf", out, image_size=16, iterations=2))
    from hf_scdd.hub import load_distilled

    assert load_distilled(out)[0][0]["image"].size == (16, 16)


# --------------------------------------------------------------------------------------------------------
# 8. A pushed distilled set always carries soft labels that load and match its images
# --------------------------------------------------------------------------------------------------------


def test_default_push_to_hub_pushes_soft_labels_that_load_and_match(world, tmp_path, fake_hub):
    from huggingface_hub import HfApi

    from hf_scdd.formats.soft_labels import labels_for_set
    from hf_scdd.hub import load_distilled
    from hf_scdd.pipeline import PipelineConfig, run

    namespace = f"{fake_hub.user}"
    config = PipelineConfig(
        output_dir=str(tmp_path / "run"), dataset=str(world["noise"]), backbone=str(world["backbone"]),
        teacher="recovery", arch="resnet10", width=4, ipc=1, iterations=3, eval_steps=2, eval_points=1, seeds=[0],
        random_baseline=False, report_to="none", cpu=True, mixed_precision="no",
        push_to_hub=namespace, evaluate="{batch_size: 4}", relabel="{batch_size: 4}",
        recover="{group_size: 1}",
    )
    assert "stored" not in config.label_modes  # the default: evaluation itself stores no labels
    import torch

    threads = torch.get_num_threads()
    summary = run(config)
    assert torch.get_num_threads() == threads  # the run's CPU thread share ends with the run
    repo = summary["pushed"]["distilled"]
    files = HfApi().list_repo_files(repo, repo_type="dataset")
    assert "soft_labels/epoch_0000.safetensors" in files  # 2 student epochs / 10, rounded up: 1 stored epoch, cycled
    dataset, labels, revision = load_distilled(repo)
    store = labels_for_set(labels, dataset, num_classes=4)
    assert store.format.num_images == len(dataset) == 4 and store.num_epochs == 1 and len(revision) == 40
