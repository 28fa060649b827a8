"""Distilled sets as Hub dataset repos: the folder layout, its card, and the push/load round trip.

A distilled set is a folder that ``datasets.load_dataset(folder)`` reads and that uploads unchanged to a Hub
``dataset`` repo::

    README.md                          dataset card: configs, dataset_info, provenance (hf_scdd YAML key)
    config.json                        the full stage config that produced it
    grid.png                           one row per class, one column per IPC index
    data/train-XXXXX-of-YYYYY.parquet  image (PNG/JPEG bytes), label (ClassLabel), ipc_index, unit_seed
    soft_labels/epoch_XXXX.safetensors optional, written by relabel
    units/, logs/                      working files (resumption, trackers); never uploaded

Images are stored as encoded bytes built in memory, never as file paths (ecosystem.md §6.4: ``to_parquet``
keeps paths otherwise). :func:`load_distilled` fetches a repo with ``snapshot_download`` so that the table and
the soft labels come from ONE resolved revision.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .cards import hub_id

DATA_DIR = "data"
SOFT_LABELS_DIR = "soft_labels"
WORKING_DIRS = ("units", "logs", "checkpoints")
IMAGE_FORMATS = ("png", "jpeg")
JPEG_QUALITY = 75  # PIL's default, what the reference saved with


class DistilledSetError(ValueError):
    """A folder or repo is not a readable distilled set; the message says what is missing."""


# --------------------------------------------------------------------------------------------------------
# Images and shards
# --------------------------------------------------------------------------------------------------------


def encode_image(image: torch.Tensor, image_format: str = "png") -> bytes:
    """uint8 [C, H, W] (C = 1 or 3) → PNG (lossless) or JPEG (quality 75, the reference's) bytes."""
    from PIL import Image

    if image_format not in IMAGE_FORMATS:
        raise DistilledSetError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    array = image.detach().cpu().numpy()
    pil = Image.fromarray(array[0], mode="L") if array.shape[0] == 1 else Image.fromarray(array.transpose(1, 2, 0))
    buffer = io.BytesIO()
    if image_format == "png":
        pil.save(buffer, format="PNG")
    else:
        pil.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def shard_name(index: int, count: int, split: str = "train") -> str:
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


def distilled_features(class_names: Sequence[str]):
    """The ``datasets.Features`` of a distilled set."""
    import datasets

    return datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=list(class_names)),
            "ipc_index": datasets.Value("int32"),
            "unit_seed": datasets.Value("int64"),
        }
    )


def write_shard(
    path: str | os.PathLike,
    images: torch.Tensor,
    labels: Sequence[int],
    ipc_index: Sequence[int],
    unit_seed: Sequence[int],
    class_names: Sequence[str],
    image_format: str = "png",
) -> Path:
    """Write one parquet shard atomically (temp file, then rename) from uint8 images [N, C, H, W]."""
    import datasets

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": encode_image(img, image_format), "path": None} for img in images],
            "label": [int(v) for v in labels],
            "ipc_index": [int(v) for v in ipc_index],
            "unit_seed": [int(v) for v in unit_seed],
        },
        features=distilled_features(class_names),
    )
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    table.to_parquet(str(tmp))
    os.replace(tmp, path)
    return path


def remove_stale_shards(folder: str | os.PathLike, keep: Sequence[str], split: str = "train") -> list[Path]:
    """Delete ``data/<split>-*.parquet`` files not in ``keep`` (a rerun with another shard count)."""
    removed = []
    data = Path(folder) / DATA_DIR
    if data.is_dir():
        for path in data.glob(f"{split}-*.parquet"):
            if path.name not in keep:
                path.unlink()
                removed.append(path)
    return removed


def write_grid(
    path: str | os.PathLike,
    images: torch.Tensor,
    labels: Sequence[int],
    ipc_index: Sequence[int],
    *,
    max_classes: int = 100,
    max_columns: int = 10,
    max_tile: int = 64,
) -> Path:
    """An image grid PNG: one row per class (first ``max_classes``), one column per IPC index."""
    from PIL import Image

    labels, ipc_index = list(map(int, labels)), list(map(int, ipc_index))
    channels, height, width = images.shape[1:]
    scale = min(1.0, max_tile / max(height, width))
    tile_h, tile_w = max(1, round(height * scale)), max(1, round(width * scale))
    rows = min(max_classes, max(labels) + 1 if labels else 0)
    cols = min(max_columns, max(ipc_index) + 1 if ipc_index else 0)
    mode = "L" if channels == 1 else "RGB"
    pad = 2
    grid = Image.new(mode, (cols * (tile_w + pad) + pad, rows * (tile_h + pad) + pad), color=255 if mode == "L" else (255, 255, 255))
    for img, label, ipc in zip(images, labels, ipc_index):
        if label >= rows or ipc >= cols:
            continue
        array = img.cpu().numpy()
        tile = Image.fromarray(array[0], "L") if channels == 1 else Image.fromarray(array.transpose(1, 2, 0))
        if (tile_w, tile_h) != (width, height):
            tile = tile.resize((tile_w, tile_h), Image.BILINEAR)
        grid.paste(tile, (pad + ipc * (tile_w + pad), pad + label * (tile_h + pad)))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    grid.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------------------
# Dataset card
# --------------------------------------------------------------------------------------------------------


@dataclass
class DistilledSetCardData:
    """What the dataset card of a distilled set says (rendered from ``model_cards/dataset.md``)."""

    class_names: list[str]
    num_images: int
    ipc: int
    image_format: str
    image_size: int
    channels: int
    source_dataset: str
    backbone: str
    backbone_revision: str | None
    seed: int
    recover_config: dict[str, Any]
    hf_scdd_version: str
    num_shards: int
    final_ce: float | None = None
    final_bn: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def render_dataset_card(data: DistilledSetCardData, num_bytes: int):
    """A ``huggingface_hub.DatasetCard`` with ``configs``, ``dataset_info`` and an ``hf_scdd`` provenance key."""
    from datasets.info import DatasetInfo, DatasetInfosDict
    from huggingface_hub import DatasetCard, DatasetCardData

    from .cards import template_text

    size = data.num_images
    size_category = "n<1K" if size < 1_000 else "1K<n<10K" if size < 10_000 else "10K<n<100K" if size < 100_000 else "100K<n<1M"
    card_data = DatasetCardData(
        license="other",
        task_categories=["image-classification"],
        tags=["dataset-distillation", "sc-dd", "synthetic", "hf_scdd"],
        size_categories=[size_category],
        source_datasets=[d for d in [hub_id(data.source_dataset)] if d] or None,
        pretty_name=f"SC-DD distilled {data.source_dataset} (IPC {data.ipc})",
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": f"{DATA_DIR}/train-*"}]}],
        hf_scdd={
            "stage": "recover",
            "version": data.hf_scdd_version,
            "backbone": data.backbone,
            "backbone_revision": data.backbone_revision,
            "source_dataset": data.source_dataset,
            "ipc": data.ipc,
            "seed": data.seed,
            "image_format": data.image_format,
            "recover_config": data.recover_config,
        },
    )
    info = DatasetInfo(
        features=distilled_features(data.class_names),
        splits=[{"name": "train", "num_bytes": num_bytes, "num_examples": size}],
        download_size=num_bytes,
        dataset_size=num_bytes,
    )
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    return DatasetCard.from_template(
        card_data,
        template_str=template_text("dataset.md"),
        card=asdict(data),
        config_json=json.dumps(data.recover_config, indent=2, sort_keys=True, default=str),
        backbone_hub_id=hub_id(data.backbone),
    )


def write_dataset_card(folder: str | os.PathLike, data: DistilledSetCardData) -> Path:
    """Render the card into ``folder/README.md`` (atomically); ``dataset_info`` sizes come from the shards."""
    from .configs import atomic_write_text

    num_bytes = sum(p.stat().st_size for p in (Path(folder) / DATA_DIR).glob("*.parquet"))
    card = render_dataset_card(data, num_bytes)
    path = Path(folder) / "README.md"
    atomic_write_text(path, str(card))
    return path


# --------------------------------------------------------------------------------------------------------
# Hub round trip
# --------------------------------------------------------------------------------------------------------


def push_distilled(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
) -> str:
    """Upload a distilled-set folder (card, shards, grid, config, ``soft_labels/``) to a Hub dataset repo.

    Working folders (``units/``, ``logs/``, ``checkpoints/``) and hidden temp files stay local. Remote parquet
    shards that the folder no longer has (a re-push with a different shard count) are deleted in the same
    commit, so the repo never mixes two runs' images; likewise remote ``soft_labels/`` files when the folder has
    ``soft_labels/`` (otherwise they are left alone, e.g. pushed by ``hf-scdd relabel``). Returns the commit's URL.
    """
    folder = Path(folder)
    if not (folder / "README.md").exists() or not list((folder / DATA_DIR).glob("*.parquet")):
        raise DistilledSetError(f"{folder} is not a finished distilled set (README.md and data/*.parquet needed)")
    return upload_folder_to_repo(
        folder, repo_id, repo_type="dataset", revision=revision, private=private,
        commit_message=commit_message or "Upload SC-DD distilled set (hf_scdd)",
        # a folder with soft labels replaces the remote ones: stale epoch files would mix two relabel runs
        delete_patterns=[f"{DATA_DIR}/*.parquet"]
        + ([f"{SOFT_LABELS_DIR}/*"] if (folder / SOFT_LABELS_DIR).is_dir() else []),
    )


def load_distilled(repo_id_or_folder: str | os.PathLike, revision: str | None = None):
    """Load a distilled set: ``(train Dataset, soft_labels folder or None, resolved revision or None)``.

    A local folder is read in place (revision None). A repo id is fetched once with ``snapshot_download``
    (working offline from the Hub cache too) and everything is read from that one snapshot, whose folder name
    is the resolved commit hash: the image table and the soft labels can never come from two revisions.
    """
    import datasets

    path = Path(repo_id_or_folder)
    resolved: str | None = None
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(str(repo_id_or_folder), repo_type="dataset", revision=revision))
        except Exception as err:
            raise DistilledSetError(
                f"could not fetch distilled set {repo_id_or_folder!r} (revision {revision!r}): "
                f"{type(err).__name__}: {err}. Pass a local folder or an existing Hub dataset repo id."
            ) from err
        resolved = path.name
    if not list((path / DATA_DIR).glob("*.parquet")):
        raise DistilledSetError(f"{path} has no {DATA_DIR}/*.parquet shards: not a distilled set")
    dataset = datasets.load_dataset(str(path), split="train")
    soft_labels = path / SOFT_LABELS_DIR
    return dataset, (soft_labels if soft_labels.is_dir() else None), resolved


def push_model_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
) -> str:
    """Upload a saved model folder (backbone, probed teacher, student) to a Hub model repo exactly as it is.

    Unlike ``PyTorchModelHubMixin.push_to_hub``, which re-saves the model and regenerates ``README.md``, this
    keeps the card the stage wrote (probe accuracy, evaluation results). Working folders (``checkpoints/``,
    ``logs/``, ``units/``, ``tmp/``) and hidden or ``*.tmp*`` files stay local. Returns the commit's URL.
    """
    from .models import BackboneError

    folder = Path(folder)
    if not (folder / "config.json").exists() or not (folder / "model.safetensors").exists():
        raise BackboneError(
            f"{folder} is not a saved model folder (config.json and model.safetensors needed): save it with "
            "save_pretrained first"
        )
    return upload_folder_to_repo(
        folder, repo_id, repo_type="model", revision=revision, private=private,
        commit_message=commit_message or "Upload hf_scdd model",
    )


def upload_folder_to_repo(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    repo_type: str,
    revision: str | None,
    private: bool,
    commit_message: str,
    delete_patterns: Sequence[str] = (),
) -> str:
    """Create the repo (and branch) if needed and upload ``folder`` in one commit, leaving working files local."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    if revision not in (None, "main"):
        api.create_branch(repo_id, repo_type=repo_type, branch=revision, exist_ok=True)
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type=repo_type,
        revision=revision,
        commit_message=commit_message,
        ignore_patterns=[f"{d}/**" for d in (*WORKING_DIRS, "tmp")] + [".*", "**/.*", "*.tmp*", "**/*.tmp*"],
        delete_patterns=list(delete_patterns) or None,
    )
    return str(getattr(info, "commit_url", info))
