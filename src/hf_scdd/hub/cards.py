"""Model and dataset cards: card data as dataclasses, rendered from the Jinja templates in ``model_cards/``.

As in setfit, each card has a dataclass that collects what the stage knows (``BackboneCardData``,
``StudentCardData``, ``DistilledSetCardData``); the render functions turn it into a ``huggingface_hub``
``ModelCard``/``DatasetCard`` whose YAML front matter carries the machine-readable parts (``library_name``,
``datasets``, ``base_model``, ``model-index``; for distilled sets ``configs``, ``dataset_info``, the source
dataset's ``license`` and an ``hf_scdd`` provenance key). A distilled set inherits its source's terms: the
licence and citation are read from the source dataset's own card (:func:`source_dataset_terms`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..utils import atomic_write_text


def template_text(name: str) -> str:
    """The text of ``model_cards/<name>`` (packaged with the library)."""
    return resources.files("hf_scdd").joinpath("model_cards", name).read_text()


def library_version() -> str:
    from .. import __version__

    return __version__


@dataclass
class BackboneCardData:
    """What the backbone card says; filled from the model's config and ``training`` record."""

    arch: str
    stem: str
    width: int
    in_channels: int
    image_size: int
    num_classes: int
    bn_layers: int
    num_parameters: int
    method: str = "unknown"
    dataset: str | None = None
    epochs: int | None = None
    probe_top1: float | None = None
    probe_epochs: int | None = None
    probe_logit_scale: float | None = None
    base_model: str | None = None
    training: dict[str, Any] = field(default_factory=dict)


def backbone_card_data(model) -> BackboneCardData:
    """The card data of an hf_scdd ResNet: its architecture and its ``training`` record."""
    info = dict(model.training_info)
    shape = {k: getattr(model, k) for k in ("arch", "stem", "width", "in_channels", "image_size", "num_classes")}
    record = {k: info.get(k) for k in ("dataset", "epochs", "probe_top1", "probe_epochs", "probe_logit_scale", "base_model")}
    return BackboneCardData(
        **shape, **record, bn_layers=model.bn_layer_count(), method=info.get("method", "unknown"),
        num_parameters=sum(p.numel() for p in model.parameters()), training=info,
    )


def hub_id(name: str | None) -> str | None:
    """``name`` if it is a Hub id (``owner/name``, not a local path), else None: only Hub ids may go in card
    metadata such as ``datasets``/``base_model``/``source_datasets``."""
    if not name or os.path.exists(name) or name.startswith((".", "/", "~")) or name.count("/") != 1:
        return None
    return name


def _accuracy(dataset: str | None, metric_name: str, value: float) -> EvalResult:
    """One model-index entry: top-1 accuracy on the test split of ``dataset``."""
    return EvalResult(
        task_type="image-classification",
        dataset_type=hub_id(dataset) or (dataset or "unknown"),
        dataset_name=dataset or "unknown",
        dataset_split="test",
        metric_type="accuracy",
        metric_name=metric_name,
        metric_value=round(float(value), 4),
    )


def _model_card(template: str, data: Any, **card_data: Any) -> ModelCard:
    """A model card rendered from ``model_cards/<template>`` with the library's fixed metadata."""
    metadata = ModelCardData(library_name="hf_scdd", license="apache-2.0", pipeline_tag="image-classification",
                             **card_data)
    return ModelCard.from_template(
        metadata, template_str=template_text(template), card=asdict(data), version=library_version()
    )


def render_model_card(model) -> ModelCard:
    """A backbone's card, from ``model_cards/backbone.md``."""
    data = backbone_card_data(model)
    eval_results = None
    if data.probe_top1 is not None:
        eval_results = [_accuracy(data.dataset, "linear-probe top-1", data.probe_top1)]
    tags = ["dataset-distillation", "sc-dd", "batchnorm", data.method]
    return _model_card(
        "backbone.md", data, tags=[t for t in tags if t], datasets=[d for d in [hub_id(data.dataset)] if d] or None,
        base_model=hub_id(data.base_model), model_name=f"{data.arch}-{data.method}", eval_results=eval_results,
    )


@dataclass
class StudentCardData:
    """What the student card says: how it was post-trained on a distilled set and how well it does."""

    arch: str
    stem: str
    width: int
    num_classes: int
    dataset: str
    distilled: str | None
    teacher: str | None
    label_mode: str
    steps: int | None
    epochs: int
    temperature: float
    batch_size: int
    mix: str
    seeds: list[int]
    lr: float
    weight_decay: float
    final_top1_mean: float
    final_top1_std: float
    best_top1_mean: float
    best_top1_std: float
    test_size: int
    metrics: dict[str, float] = field(default_factory=dict)
    results_markdown: str = ""


def render_student_card(data: StudentCardData) -> ModelCard:
    """A post-trained student's card, from ``model_cards/student.md``, with model-index results."""
    metric = f"top-1, final epoch, mean of {len(data.seeds)} seed(s)"
    datasets = [d for d in (hub_id(data.distilled), hub_id(data.dataset)) if d]
    return _model_card(
        "student.md", data,
        tags=["dataset-distillation", "sc-dd", "knowledge-distillation", f"labels-{data.label_mode}"],
        datasets=datasets or None, base_model=hub_id(data.teacher), model_name=f"{data.arch}-student-{data.label_mode}",
        eval_results=[_accuracy(data.dataset, metric, data.final_top1_mean)],
    )


# --------------------------------------------------------------------------------------------------------
# Dataset card of a distilled set
# --------------------------------------------------------------------------------------------------------


def source_hub_id(dataset: str | None) -> str | None:
    """The Hub id of a source dataset (the built-in Fashion-MNIST is the Hub's ``zalando-datasets`` copy)."""
    from ..data.builtin import FASHION_MNIST_HUB_ID, is_builtin

    return FASHION_MNIST_HUB_ID if dataset and is_builtin(dataset) else hub_id(dataset)


def source_dataset_terms(dataset: str, revision: str | None = None) -> tuple[str, str | None]:
    """``(licence, BibTeX citation or None)`` of a source dataset, for the cards of sets distilled from it.

    The built-in Fashion-MNIST: MIT and Xiao et al. 2017. Otherwise the source's own dataset card (a Hub
    repo's, or a folder's ``README.md``): its ``license`` and the first BibTeX entry in its text; ``other``
    and None when there is no card or it says nothing.
    """
    from ..data.builtin import FASHION_MNIST_CITATION, FASHION_MNIST_LICENSE, is_builtin

    if is_builtin(dataset):
        return FASHION_MNIST_LICENSE, FASHION_MNIST_CITATION
    card = _read_dataset_card(dataset, revision)
    if card is None:
        return "other", None
    license_ = card.data.to_dict().get("license") or "other"
    if isinstance(license_, list):
        license_ = license_[0] if len(license_) == 1 else "other"
    match = re.search(r"```[a-zA-Z]*\s*\n(@\w+\s*\{.*?)\n?```", card.text, flags=re.DOTALL)
    return str(license_), (match.group(1).strip() if match else None)


def _read_dataset_card(dataset: str, revision: str | None):
    from huggingface_hub import DatasetCard

    path = Path(dataset) / "README.md"
    try:
        if Path(dataset).is_dir():
            return DatasetCard.load(path) if path.exists() else None
        if hub_id(dataset) is None:
            return None
        return DatasetCard.load(dataset, repo_type="dataset", **({"revision": revision} if revision else {}))
    except Exception:  # noqa: BLE001 - no readable card: the terms are unknown ("other")
        return None


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
    license: str = "other"
    citation: str | None = None


def render_dataset_card(data: DistilledSetCardData, num_bytes: int):
    """A ``huggingface_hub.DatasetCard`` with ``configs``, ``dataset_info`` and an ``hf_scdd`` provenance key."""
    from datasets.info import DatasetInfo, DatasetInfosDict
    from huggingface_hub import DatasetCard, DatasetCardData

    from ..formats.distilled_set import DATA_DIR, distilled_features

    size = data.num_images
    size_category = "n<1K" if size < 1_000 else "1K<n<10K" if size < 10_000 else "10K<n<100K" if size < 100_000 else "100K<n<1M"
    card_data = DatasetCardData(
        license=data.license,
        task_categories=["image-classification"],
        tags=["dataset-distillation", "sc-dd", "synthetic", "hf_scdd"],
        size_categories=[size_category],
        source_datasets=[d for d in [source_hub_id(data.source_dataset)] if d] or None,
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
        source_hub_id=source_hub_id(data.source_dataset),
    )


def write_dataset_card(folder: str | os.PathLike, data: DistilledSetCardData) -> Path:
    """Render the card into ``folder/README.md`` (atomically); ``dataset_info`` sizes come from the shards."""
    from ..formats.distilled_set import DATA_DIR

    num_bytes = sum(p.stat().st_size for p in (Path(folder) / DATA_DIR).glob("*.parquet"))
    card = render_dataset_card(data, num_bytes)
    path = Path(folder) / "README.md"
    atomic_write_text(path, str(card))
    return path
