"""Hub round trips with the real huggingface_hub / datasets clients against the loopback fake Hub.

Every artefact the pipeline pushes is made for real by the library (a probed backbone, a recovered +
relabelled distilled set, an evaluated student), pushed, and read back by the code paths a user runs:
``from_pretrained``, ``load_backbone``, ``datasets.load_dataset(repo_id)``, ``load_distilled`` +
``SoftLabelStore``, ``ModelCard.load``. Nothing leaves 127.0.0.1: ``tests/conftest.py`` points ``HF_ENDPOINT``
at the fake Hub and blocks non-loopback sockets; each test also checks the fake Hub's request log.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import bn_backbone, write_random_dataset
from hf_scdd.configs import config_from_dict
from hf_scdd.hub import load_distilled, push_distilled, push_model_folder
from hf_scdd.models import BackboneError, ResNet, load_backbone

CLASSES = ["zero", "one", "two", "three"]
SIZE = 16


# --------------------------------------------------------------------------------------------------------
# Helpers and module fixtures
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def private_tensor_cache(tmp_path_factory):
    """Decoded-tensor cache of this module's tiny Hub datasets in a temp folder, not the user's cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_SCDD_CACHE", str(tmp_path_factory.mktemp("hf_scdd_cache")))
        yield


def tiny_backbone(seed: int = 0, **training) -> ResNet:
    """A 4-class resnet10 (width 8) with non-trivial BN running statistics."""
    return bn_backbone(seed=seed, class_names=CLASSES, **training)


def sha(repo_id: str, repo_type: str = "model") -> str:
    from huggingface_hub import HfApi

    return HfApi().repo_info(repo_id, repo_type=repo_type).sha


def repo_file(repo_id: str, filename: str, repo_type: str = "model", revision: str | None = None) -> bytes:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, filename, repo_type=repo_type, revision=revision)).read_bytes()


def forget_cache(repo_id: str, repo_type: str = "model") -> None:
    """Drop the repo from the local Hub cache, so the next load must ask the server for its revision."""
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    assert folder.is_dir(), folder
    shutil.rmtree(folder)


def assert_loopback_only(fake_hub, since: int, expected: list[str]) -> list[tuple[str, str, int]]:
    """Every request since ``since`` was an origin-form path on the fake Hub (never an absolute/proxied URL),
    the server itself listens on loopback, and each ``expected`` substring appears in some request path."""
    from urllib.parse import urlsplit

    assert urlsplit(fake_hub.url).hostname in ("127.0.0.1", "localhost", "::1")
    assert os.environ["HF_ENDPOINT"] == fake_hub.url
    log = list(fake_hub.log)[since:]
    assert log, "no request reached the fake Hub"
    bad = [entry for entry in log if not entry[1].startswith("/") or "://" in entry[1].split("?")[0]]
    assert not bad, bad
    assert not any("xet" in path for _, path, _ in log), "uploads must not go to a Xet CAS server"
    for part in expected:
        assert any(part in path for _, path, _ in log), (part, sorted({p for _, p, _ in log})[:30])
    return log


@pytest.fixture(scope="module")
def world(tmp_path_factory, fake_hub):
    """A probed backbone and a real dataset on the Hub, and a distilled set made from them with the library:
    ``hf-scdd recover`` (backbone and dataset by Hub id) then ``hf-scdd relabel`` (teacher by Hub id)."""
    from huggingface_hub import HfApi

    from hf_scdd.stages import recover, relabel

    root = tmp_path_factory.mktemp("hub_world")
    suffix = os.urandom(4).hex()
    backbone_repo, data_repo = f"{fake_hub.user}/backbone-{suffix}", f"{fake_hub.user}/data-{suffix}"

    backbone = tiny_backbone(method="sc-dd-ssl", dataset=data_repo, probe_top1=0.4321, probe_epochs=2)
    backbone.save_pretrained(root / "backbone")
    push_model_folder(root / "backbone", backbone_repo)
    write_random_dataset(root / "data", CLASSES, SIZE)
    api = HfApi()
    api.create_repo(data_repo, repo_type="dataset", exist_ok=True)
    api.upload_folder(folder_path=str(root / "data"), repo_id=data_repo, repo_type="dataset")

    distilled = root / "distilled"
    recover.main(
        config_from_dict(
            recover.RecoverConfig,
            {
                "backbone": backbone_repo,
                "dataset": data_repo,
                "output_dir": str(distilled),
                "ipc": 2,
                "iterations": 8,
                "cpu": True,
                "mixed_precision": "no",
                "report_to": "jsonl",
                "group_size": 1,
                "seed": 3,
            },
        )
    )
    relabel.main(relabel_config(distilled, backbone_repo, seed=0))
    return {
        "root": root,
        "backbone_repo": backbone_repo,
        "data_repo": data_repo,
        "distilled": distilled,
        "backbone": backbone,
    }


def relabel_config(distilled: Path, teacher: str, seed: int, epochs: int = 2):
    from hf_scdd.stages.relabel import RelabelConfig

    return config_from_dict(
        RelabelConfig,
        {
            "distilled": str(distilled),
            "teacher": teacher,
            "epochs": epochs,
            "batch_size": 4,
            "cpu": True,
            "mixed_precision": "no",
            "seed": seed,
            "output_dir": str(distilled / "relabel_out"),
        },
    )


def local_rows(folder: Path) -> dict:
    ds = load_distilled(folder)[0]  # not load_dataset(folder): its cache is keyed on the folder name
    return rows(ds)


def rows(ds) -> dict:
    return {
        "names": list(ds.features["label"].names),
        "columns": sorted(ds.column_names),
        "label": list(ds["label"]),
        "ipc_index": list(ds["ipc_index"]),
        "unit_seed": list(ds["unit_seed"]),
        "pixels": np.stack([np.asarray(im) for im in ds["image"]]),
    }


def label_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).glob("epoch_*.safetensors"))}


# --------------------------------------------------------------------------------------------------------
# 1. Backbones
# --------------------------------------------------------------------------------------------------------


def test_backbone_push_from_pretrained_and_revision_pinning(hub_repo_id, fake_hub):
    mark = len(fake_hub.log)
    model = tiny_backbone(
        seed=0, method="sc-dd-ssl", dataset="tester/some-data", probe_top1=0.61, probe_epochs=3
    )
    x = torch.randn(5, 1, SIZE, SIZE)
    with torch.no_grad():
        expected = model(x)
    model.push_to_hub(hub_repo_id)
    first = sha(hub_repo_id)

    loaded = ResNet.from_pretrained(hub_repo_id)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    local, remote = model.state_dict(), loaded.state_dict()
    assert local.keys() == remote.keys()
    assert any(k.endswith("running_var") for k in remote)
    for key in local:  # weights AND BN buffers (running_mean/var, num_batches_tracked), bit for bit
        assert torch.equal(local[key], remote[key]), key
    assert loaded.config == model.config and loaded.class_names == CLASSES

    from huggingface_hub import ModelCard

    card = ModelCard.load(hub_repo_id)
    assert card.data.library_name == "hf_scdd"
    assert card.data.datasets == ["tester/some-data"]
    assert card.data.eval_results[0].metric_value == pytest.approx(0.61)

    # a second push with other weights: main moves on, the first commit still gives the first weights
    other = tiny_backbone(seed=1, method="sc-dd-ssl")
    other.push_to_hub(hub_repo_id)
    assert sha(hub_repo_id) != first
    forget_cache(hub_repo_id)  # the pinned commit must come from the server, not from the cache
    pinned = load_backbone(hub_repo_id, revision=first)
    latest = load_backbone(hub_repo_id)
    with torch.no_grad():
        assert torch.equal(pinned(x), expected)
        assert torch.equal(latest(x), other(x))
        assert not torch.equal(latest(x), expected)
    for key, value in pinned.state_dict().items():
        assert torch.equal(value, local[key]), key

    assert_loopback_only(
        fake_hub,
        mark,
        [
            "/api/repos/create",
            f"/api/models/{hub_repo_id}/preupload/main",
            f"/api/models/{hub_repo_id}/commit/main",
            "/info/lfs/objects/batch",
            f"/{hub_repo_id}/resolve/main/model.safetensors",
            f"/{hub_repo_id}/resolve/{first}/config.json",
            f"/{hub_repo_id}/resolve/{first}/model.safetensors",
        ],
    )


def test_push_model_folder_keeps_the_stage_card(tmp_path, hub_repo_id, fake_hub):
    mark = len(fake_hub.log)
    folder = tmp_path / "probe"
    model = tiny_backbone(seed=2, method="sc-dd-ssl", probe_top1=0.4321)
    model.save_pretrained(folder)
    stage_card = (
        folder / "README.md"
    ).read_text() + "\n## Written by the stage\n\nLinear-probe top-1: 43.21 %\n"
    (folder / "README.md").write_text(stage_card)
    (folder / "checkpoints" / "epoch_1").mkdir(parents=True)
    (folder / "checkpoints" / "epoch_1" / "state.bin").write_bytes(b"x" * 64)
    (folder / "tmp").mkdir()
    (folder / "tmp" / "scratch.txt").write_text("scratch")
    (folder / ".model.safetensors.tmp123").write_bytes(b"partial")

    url = push_model_folder(folder, hub_repo_id, commit_message="probe stage")
    assert hub_repo_id in url
    files = set(fake_hub.files(hub_repo_id))
    assert {"README.md", "config.json", "model.safetensors"} <= files
    assert not any(f.startswith(("checkpoints/", "tmp/", ".model")) for f in files), files
    assert repo_file(hub_repo_id, "README.md").decode() == stage_card  # not regenerated
    from huggingface_hub import ModelCard

    assert ModelCard.load(hub_repo_id).data.library_name == "hf_scdd"
    loaded = ResNet.from_pretrained(hub_repo_id)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    with pytest.raises(BackboneError, match="save_pretrained"):
        push_model_folder(tmp_path / "probe" / "tmp", hub_repo_id)
    assert_loopback_only(fake_hub, mark, [f"/api/models/{hub_repo_id}/commit/main"])


# --------------------------------------------------------------------------------------------------------
# 2. A distilled set with soft labels
# --------------------------------------------------------------------------------------------------------


def test_distilled_set_with_soft_labels_round_trip(world, tmp_path, hub_repo_id, fake_hub):
    import datasets
    from huggingface_hub import HfApi

    from hf_scdd.formats.soft_labels import SoftLabelStore
    from hf_scdd.stages import relabel

    mark = len(fake_hub.log)
    folder = world["distilled"]
    local = local_rows(folder)
    local_labels = label_bytes(folder / "soft_labels")
    assert len(local_labels) == 2 and local["names"] == CLASSES and len(local["label"]) == 8

    push_distilled(folder, hub_repo_id)
    remote_files = set(fake_hub.files(hub_repo_id, "dataset"))
    assert {"README.md", "config.json", "grid.png", "soft_labels/epoch_0000.safetensors"} <= remote_files
    assert not any(f.startswith(("units/", "logs/")) for f in remote_files), remote_files
    first = sha(hub_repo_id, "dataset")

    # the plain datasets client: same rows, ClassLabel names and pixels; the safetensors files are not data
    loaded = datasets.load_dataset(hub_repo_id)
    assert list(loaded) == ["train"]
    got = rows(loaded["train"])
    assert got["columns"] == local["columns"] == ["image", "ipc_index", "label", "unit_seed"]
    for key in ("names", "label", "ipc_index", "unit_seed"):
        assert got[key] == local[key], key
    assert np.array_equal(got["pixels"], local["pixels"])

    # load_distilled: table + soft labels from one resolved revision
    table, labels_dir, revision = load_distilled(hub_repo_id)
    assert revision == HfApi().repo_info(hub_repo_id, repo_type="dataset").sha == first
    assert Path(labels_dir).parent.name == revision
    assert rows(table)["label"] == local["label"]
    assert label_bytes(labels_dir) == local_labels
    store = SoftLabelStore(labels_dir, num_images=8, num_classes=4)
    local_store = SoftLabelStore(folder / "soft_labels", num_images=8, num_classes=4)
    assert store.format == local_store.format and store.num_epochs == 2
    for epoch in range(2):
        a, b = store.epoch(epoch), local_store.epoch(epoch)
        assert torch.equal(a.logits, b.logits)
        for name, tensor in a.plan.tensors().items():
            assert torch.equal(tensor, b.plan.tensors()[name]), name

    # a second push with other labels (relabel: another seed, fewer epochs); the first revision still gives
    # the first labels, and main holds only the new files (a stale epoch_0001 would make the store unreadable)
    changed = tmp_path / "distilled_v2"
    shutil.copytree(folder, changed, ignore=shutil.ignore_patterns("soft_labels", "relabel_out"))
    relabel.main(relabel_config(changed, world["backbone_repo"], seed=1, epochs=1))
    new_labels = label_bytes(changed / "soft_labels")
    assert (
        list(new_labels) == ["epoch_0000.safetensors"]
        and new_labels["epoch_0000.safetensors"] != local_labels["epoch_0000.safetensors"]
    )
    push_distilled(changed, hub_repo_id, commit_message="new labels")
    second = sha(hub_repo_id, "dataset")
    assert second != first
    _, latest_dir, latest_rev = load_distilled(hub_repo_id)
    assert latest_rev == second and label_bytes(latest_dir) == new_labels
    assert SoftLabelStore(latest_dir, num_images=8, num_classes=4).num_epochs == 1
    forget_cache(hub_repo_id, "dataset")
    _, pinned_dir, pinned_rev = load_distilled(hub_repo_id, revision=first)
    assert pinned_rev == first and label_bytes(pinned_dir) == local_labels

    assert_loopback_only(
        fake_hub,
        mark,
        [
            f"/api/datasets/{hub_repo_id}/preupload/main",
            f"/api/datasets/{hub_repo_id}/commit/main",
            f"/datasets/{hub_repo_id}/resolve/{first}/soft_labels/epoch_0000.safetensors",
            f"/datasets/{hub_repo_id}/resolve/{second}/soft_labels/epoch_0000.safetensors",
        ],
    )


# --------------------------------------------------------------------------------------------------------
# 3. A student with its evaluation card
# --------------------------------------------------------------------------------------------------------


def test_student_card_round_trip(world, tmp_path, hub_repo_id, fake_hub):
    from huggingface_hub import ModelCard

    from hf_scdd.stages.evaluate import EvaluateConfig, run_evaluation

    mark = len(fake_hub.log)
    distilled_repo, student_repo = f"{hub_repo_id}-distilled", f"{hub_repo_id}-student"
    push_distilled(world["distilled"], distilled_repo)
    out = tmp_path / "evaluate"
    config = config_from_dict(
        EvaluateConfig,
        {
            "distilled": distilled_repo,
            "dataset": world["data_repo"],
            "teacher": world["backbone_repo"],
            "label_modes": ["stored"],
            "arch": "resnet10",
            "width": 4,
            "epochs": 2,
            "eval_points": 2,
            "batch_size": 4,
            "seeds": [0],
            "random_baseline": False,
            "temperature": 4.0,
            "cpu": True,
            "mixed_precision": "no",
            "report_to": "jsonl",
            "output_dir": str(out),
        },
    )
    report = run_evaluation(config)
    student = out / "student"
    card_text = (student / "README.md").read_text()

    push_model_folder(student, student_repo)
    card = ModelCard.load(student_repo)
    assert card.text.strip() and card.content == card_text
    assert card.data.library_name == "hf_scdd"
    assert card.data.base_model == world["backbone_repo"]
    assert card.data.datasets == [distilled_repo, world["data_repo"]]
    [result] = card.data.eval_results
    assert result.task_type == "image-classification" and result.metric_type == "accuracy"
    assert result.dataset_type == world["data_repo"] and result.dataset_split == "test"
    assert result.metric_value == pytest.approx(
        round(report["results"]["distilled/stored"]["final_top1_mean"], 4)
    )
    assert card.data.model_name and "top-1" in result.metric_name

    remote, local = ResNet.from_pretrained(student_repo), ResNet.from_pretrained(str(student))
    assert remote.config == local.config and remote.training_info["label_mode"] == "stored"
    x = torch.rand(3, 1, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(remote(x), local(x))

    assert_loopback_only(
        fake_hub,
        mark,
        [
            f"/api/models/{student_repo}/commit/main",
            f"/{student_repo}/resolve/main/README.md",
            f"/datasets/{distilled_repo}/resolve/",
            f"/api/datasets/{world['data_repo']}",
        ],
    )
